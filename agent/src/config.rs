//! Settings, layered: command-line flags > environment > a TOML config file. Secrets (the IBM Cloud
//! API key) come from the environment or a file, never from argv, and print as `<redacted>`.
//!
//! Endpoints follow IBM's tables (`ibm-cloud.md` §2, §3) unless overridden, so tests can point every
//! one of them at 127.0.0.1:
//! - Key Protect: `https://<region>.kms.cloud.ibm.com` (`https://private.<region>...` with `private`);
//! - Hyper Protect Crypto Services: `https://<instance id>.api.<region>.hs-crypto.appdomain.cloud`
//!   (the instance's own host, all new instances have one); older instances with `hpcs_port`:
//!   `https://api.<region>.hs-crypto.cloud.ibm.com:<port>`;
//! - IAM: `https://iam.cloud.ibm.com`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::http::RetryPolicy;
use crate::kms::keyprotect::{KmsSettings, Service};
use crate::secret::SecretString;

/// Key Protect regions (`ibm-cloud.md` §2).
pub const KP_REGIONS: &[&str] = &[
    "us-south", "us-east", "eu-gb", "eu-de", "au-syd", "jp-tok", "jp-osa", "ca-tor", "br-sao",
    "eu-es", "ca-mon", "in-che", "in-mum",
];

/// The default IAM endpoint.
pub const IAM_ENDPOINT: &str = "https://iam.cloud.ibm.com";

/// The config file, as written by hand. Unknown fields are refused by name.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// "key-protect" (default) or "hpcs".
    pub service: Option<String>,
    /// IBM Cloud region, e.g. "us-south".
    pub region: Option<String>,
    /// Use the private endpoint (Key Protect).
    pub private: Option<bool>,
    /// HPCS instance port.
    pub hpcs_port: Option<u16>,
    /// KMS instance GUID (`bluemix-instance`).
    pub instance_id: Option<String>,
    /// Root key id or alias.
    pub key_id: Option<String>,
    /// Key ring (`x-kms-key-ring`).
    pub key_ring: Option<String>,
    /// KMS endpoint override (`kms_endpoint`, as the flag; `endpoint`, the old name, is still read).
    #[serde(rename = "kms_endpoint", alias = "endpoint")]
    pub endpoint: Option<String>,
    /// IAM endpoint override.
    pub iam_endpoint: Option<String>,
    /// File holding the IBM Cloud API key.
    pub api_key_file: Option<PathBuf>,
    /// The agent's age identity file.
    pub identity: Option<PathBuf>,
    /// The audit log.
    pub audit_log: Option<PathBuf>,
    /// Attempts per request, first included (default 4).
    pub max_attempts: Option<u32>,
    /// Longest single wait between attempts in milliseconds, `Retry-After` included (default 30000).
    pub max_retry_wait_ms: Option<u64>,
    /// First back-off step in milliseconds (default 500).
    pub retry_base_ms: Option<u64>,
    /// Per-request timeout in seconds (default 30).
    pub timeout_secs: Option<u64>,
    /// PKCS#11 module path (service "pkcs11").
    pub pkcs11_module: Option<PathBuf>,
    /// PKCS#11 token label.
    pub token_label: Option<String>,
    /// Label of the wrapping key on the token.
    pub key_label: Option<String>,
    /// File holding the token's user PIN.
    pub pin_file: Option<PathBuf>,
    /// PKCS#11 mechanism: aes-kwp (default), rsa-oaep (SHA-1), rsa-oaep-sha256.
    pub mechanism: Option<String>,
    /// AWS region (service "aws-kms").
    pub aws_region: Option<String>,
}

impl FileConfig {
    /// Reads and parses a config file; an unknown field is named in the error.
    pub fn load(path: &Path) -> Result<FileConfig> {
        let text =
            std::fs::read_to_string(path).map_err(|e| Error::io("read config file", path, e))?;
        toml::from_str(&text)
            .map_err(|e| Error::Config(format!("{}: {}", path.display(), e.message())))
    }

    /// Fills every unset field of `self` from `lower`.
    fn or(self, lower: FileConfig) -> FileConfig {
        FileConfig {
            service: self.service.or(lower.service),
            region: self.region.or(lower.region),
            private: self.private.or(lower.private),
            hpcs_port: self.hpcs_port.or(lower.hpcs_port),
            instance_id: self.instance_id.or(lower.instance_id),
            key_id: self.key_id.or(lower.key_id),
            key_ring: self.key_ring.or(lower.key_ring),
            endpoint: self.endpoint.or(lower.endpoint),
            iam_endpoint: self.iam_endpoint.or(lower.iam_endpoint),
            api_key_file: self.api_key_file.or(lower.api_key_file),
            identity: self.identity.or(lower.identity),
            audit_log: self.audit_log.or(lower.audit_log),
            max_attempts: self.max_attempts.or(lower.max_attempts),
            max_retry_wait_ms: self.max_retry_wait_ms.or(lower.max_retry_wait_ms),
            retry_base_ms: self.retry_base_ms.or(lower.retry_base_ms),
            timeout_secs: self.timeout_secs.or(lower.timeout_secs),
            pkcs11_module: self.pkcs11_module.or(lower.pkcs11_module),
            token_label: self.token_label.or(lower.token_label),
            key_label: self.key_label.or(lower.key_label),
            pin_file: self.pin_file.or(lower.pin_file),
            mechanism: self.mechanism.or(lower.mechanism),
            aws_region: self.aws_region.or(lower.aws_region),
        }
    }
}

/// Environment variables read (besides `IBMCLOUD_API_KEY`, which is secret).
pub const ENV_VARS: &[(&str, &str)] = &[
    ("IBMCLOUD_REGION", "region"),
    ("DISKSEAL_KMS_SERVICE", "service"),
    ("DISKSEAL_KMS_INSTANCE_ID", "instance_id"),
    ("DISKSEAL_KMS_KEY_ID", "key_id"),
    ("DISKSEAL_KMS_KEY_RING", "key_ring"),
    ("DISKSEAL_KMS_ENDPOINT", "kms_endpoint"),
    ("DISKSEAL_IAM_ENDPOINT", "iam_endpoint"),
    ("DISKSEAL_AGENT_IDENTITY", "identity"),
    ("DISKSEAL_AGENT_AUDIT_LOG", "audit_log"),
    ("DISKSEAL_PKCS11_MODULE", "pkcs11_module"),
    ("DISKSEAL_PKCS11_TOKEN", "token_label"),
    ("AWS_REGION", "aws_region"),
    ("AWS_DEFAULT_REGION", "aws_region"),
];

fn from_env(env: &dyn Fn(&str) -> Option<String>) -> FileConfig {
    let get = |k: &str| env(k).filter(|v| !v.is_empty());
    FileConfig {
        region: get("IBMCLOUD_REGION"),
        service: get("DISKSEAL_KMS_SERVICE"),
        instance_id: get("DISKSEAL_KMS_INSTANCE_ID"),
        key_id: get("DISKSEAL_KMS_KEY_ID"),
        key_ring: get("DISKSEAL_KMS_KEY_RING"),
        endpoint: get("DISKSEAL_KMS_ENDPOINT"),
        iam_endpoint: get("DISKSEAL_IAM_ENDPOINT"),
        identity: get("DISKSEAL_AGENT_IDENTITY").map(PathBuf::from),
        audit_log: get("DISKSEAL_AGENT_AUDIT_LOG").map(PathBuf::from),
        pkcs11_module: get("DISKSEAL_PKCS11_MODULE").map(PathBuf::from),
        token_label: get("DISKSEAL_PKCS11_TOKEN"),
        aws_region: get("AWS_REGION").or_else(|| get("AWS_DEFAULT_REGION")),
        ..FileConfig::default()
    }
}

/// All layers merged (flags over environment over file), before KMS-specific checks.
#[derive(Debug, Clone, Default)]
pub struct Layers {
    merged: FileConfig,
    api_key_env: Option<SecretString>,
    api_key_flag_file: Option<PathBuf>,
    pin_env: Option<SecretString>,
    aws_env: (Option<String>, Option<SecretString>, Option<SecretString>),
    /// The non-secret variables that locate AWS profiles (HOME, AWS_PROFILE, AWS_CONFIG_FILE, ...).
    aws_files_env: Vec<(&'static str, String)>,
    home: PathBuf,
}

impl Layers {
    /// Merges `flags` (same fields as the file; `api_key_file` from `--api-key-file`), the environment
    /// read through `env`, and the config file (`--config`, else `$DISKSEAL_AGENT_HOME/config.toml` if it exists).
    pub fn new(
        flags: FileConfig,
        config: Option<&Path>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Layers> {
        let home = env("DISKSEAL_AGENT_HOME")
            .filter(|h| !h.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                let base = env("HOME")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| PathBuf::from("."));
                base.join(".config/diskseal-agent")
            });
        let file = match config {
            Some(p) => FileConfig::load(p)?,
            None => {
                let p = home.join("config.toml");
                if p.exists() {
                    FileConfig::load(&p)?
                } else {
                    FileConfig::default()
                }
            }
        };
        let api_key_flag_file = flags.api_key_file.clone();
        let merged = flags.or(from_env(env)).or(file);
        let api_key_env = env("IBMCLOUD_API_KEY")
            .filter(|k| !k.is_empty())
            .map(SecretString::new);
        let pin_env = env("DISKSEAL_PKCS11_PIN")
            .filter(|k| !k.is_empty())
            .map(SecretString::new);
        let aws_env = (
            env("AWS_ACCESS_KEY_ID").filter(|k| !k.is_empty()),
            env("AWS_SECRET_ACCESS_KEY")
                .filter(|k| !k.is_empty())
                .map(SecretString::new),
            env("AWS_SESSION_TOKEN")
                .filter(|k| !k.is_empty())
                .map(SecretString::new),
        );
        let aws_files_env = [
            "HOME",
            "AWS_PROFILE",
            "AWS_DEFAULT_PROFILE",
            "AWS_SHARED_CREDENTIALS_FILE",
            "AWS_CONFIG_FILE",
        ]
        .into_iter()
        .filter_map(|k| env(k).map(|v| (k, v)))
        .collect();
        Ok(Layers {
            merged,
            api_key_env,
            api_key_flag_file,
            pin_env,
            aws_env,
            aws_files_env,
            home,
        })
    }

    /// The agent's age identity file.
    pub fn identity(&self) -> PathBuf {
        self.merged
            .identity
            .clone()
            .unwrap_or_else(|| self.home.join("identity.txt"))
    }

    /// The audit log.
    pub fn audit_log(&self) -> PathBuf {
        self.merged
            .audit_log
            .clone()
            .unwrap_or_else(|| self.home.join("audit.jsonl"))
    }

    /// The IBM Cloud API key: --api-key-file, else IBMCLOUD_API_KEY, else the config file's api_key_file.
    pub fn api_key(&self) -> Result<SecretString> {
        let from_file = |p: &Path| -> Result<SecretString> {
            let text =
                std::fs::read_to_string(p).map_err(|e| Error::io("read API key file", p, e))?;
            let key = text.trim();
            if key.is_empty() {
                return Err(Error::Config(format!(
                    "API key file {} is empty",
                    p.display()
                )));
            }
            Ok(SecretString::new(key.to_owned()))
        };
        if let Some(p) = &self.api_key_flag_file {
            return from_file(p);
        }
        if let Some(k) = &self.api_key_env {
            return Ok(k.clone());
        }
        if let Some(p) = &self.merged.api_key_file {
            return from_file(p);
        }
        Err(Error::Config(
            "no IBM Cloud API key: set IBMCLOUD_API_KEY, or pass --api-key-file FILE, or set api_key_file in the config file".into(),
        ))
    }

    /// The IAM base URL (--iam-endpoint, DISKSEAL_IAM_ENDPOINT, the config file, else IBM's).
    pub fn iam_endpoint(&self) -> String {
        self.merged
            .iam_endpoint
            .clone()
            .unwrap_or_else(|| IAM_ENDPOINT.into())
            .trim_end_matches('/')
            .to_owned()
    }

    /// The IBM Cloud region (`--region`, IBMCLOUD_REGION, the config file), if any.
    pub fn region(&self) -> Option<&str> {
        self.merged.region.as_deref()
    }

    /// The configured service name.
    pub fn service(&self) -> &str {
        self.merged.service.as_deref().unwrap_or("key-protect")
    }

    /// Resolves the AWS KMS settings; credentials from `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`,
    /// else the AWS profile ([`crate::awsconfig`]: `AWS_PROFILE`, `~/.aws/credentials`, `~/.aws/config`),
    /// which may also give the region.
    pub fn aws(&self) -> Result<crate::kms::aws::AwsSettings> {
        let m = &self.merged;
        let (ak, sk, token) = self.aws_env.clone();
        let files = || {
            crate::awsconfig::resolve(None, m.aws_region.as_deref(), &|k| {
                self.aws_files_env
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.clone())
            })
        };
        let (access_key_id, secret_access_key, token, region) = match (ak, sk) {
            (Some(ak), Some(sk)) => (
                ak,
                sk,
                token,
                m.aws_region.clone().or_else(|| files().ok()?.region),
            ),
            _ => {
                let p = files()?;
                let Some(c) = p.credentials else {
                    return Err(Error::Config(format!(
                        "no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or put them in the AWS profile {:?} (~/.aws/credentials, AWS_PROFILE)",
                        p.name
                    )));
                };
                (
                    c.access_key_id,
                    c.secret_access_key,
                    c.session_token,
                    p.region,
                )
            }
        };
        let region = region.ok_or_else(|| {
            Error::Config(
                "no AWS region: pass --aws-region, set AWS_REGION, or set region in the AWS profile"
                    .into(),
            )
        })?;
        let retry = self.retry();
        Ok(crate::kms::aws::AwsSettings {
            endpoint: m
                .endpoint
                .clone()
                .unwrap_or_else(|| format!("https://kms.{region}.amazonaws.com"))
                .trim_end_matches('/')
                .to_owned(),
            region,
            key_id: m.key_id.clone().ok_or_else(|| {
                Error::Config("no key id: pass --key-id (id, ARN or alias/NAME)".into())
            })?,
            access_key_id,
            secret_access_key,
            session_token: token,
            retry,
        })
    }

    /// True when the configured service is a PKCS#11 token.
    pub fn is_pkcs11(&self) -> bool {
        self.merged.service.as_deref() == Some("pkcs11")
    }

    /// Resolves the PKCS#11 settings; the PIN comes from `pin_file`, `DISKSEAL_PKCS11_PIN`, or a prompt
    /// on the terminal (never argv).
    pub fn pkcs11(&self) -> Result<crate::kms::pkcs11::Pkcs11Settings> {
        use crate::kms::pkcs11::{Pkcs11Mechanism, Pkcs11Settings};
        let m = &self.merged;
        let mech = m.mechanism.as_deref().unwrap_or("aes-kwp");
        let mechanism = Pkcs11Mechanism::parse(mech).ok_or_else(|| {
            Error::Config(format!(
                "unknown PKCS#11 mechanism {mech:?}: use aes-kwp, rsa-oaep or rsa-oaep-sha256"
            ))
        })?;
        let pin = match (&m.pin_file, &self.pin_env) {
            (Some(p), _) => {
                let t = std::fs::read_to_string(p).map_err(|e| Error::io("read PIN file", p, e))?;
                SecretString::new(t.trim_end_matches(['\r', '\n']).to_owned())
            }
            (None, Some(pin)) => pin.clone(),
            (None, None) if std::io::IsTerminal::is_terminal(&std::io::stdin()) => {
                let label = m.token_label.as_deref().unwrap_or("the token");
                let pin = rpassword::prompt_password(format!("PIN for {label}: "))
                    .map_err(|e| Error::io("read PIN from", "/dev/tty", e))?;
                SecretString::new(pin)
            }
            (None, None) => {
                return Err(Error::Config("no PKCS#11 PIN: pass --pin-file FILE, set DISKSEAL_PKCS11_PIN, or run on a terminal to be asked".into()));
            }
        };
        let need = |v: Option<String>, what: &str, flag: &str| {
            v.ok_or_else(|| {
                Error::Config(format!(
                    "no {what}: pass {flag} or set it in the config file"
                ))
            })
        };
        Ok(Pkcs11Settings {
            module: m.pkcs11_module.clone().ok_or_else(|| {
                Error::Config(
                    "no PKCS#11 module: pass --pkcs11-module or set DISKSEAL_PKCS11_MODULE".into(),
                )
            })?,
            token_label: need(m.token_label.clone(), "token label", "--token-label")?,
            key_label: need(m.key_label.clone(), "wrapping key label", "--key-label")?,
            pin,
            mechanism,
        })
    }

    /// Resolves the IBM KMS settings: endpoint tables, required fields, the API key.
    pub fn kms(&self) -> Result<KmsSettings> {
        let m = &self.merged;
        let service = match m.service.as_deref().unwrap_or("key-protect") {
            "key-protect" | "kp" => Service::KeyProtect,
            "hpcs" | "hs-crypto" => Service::Hpcs,
            "pkcs11" | "aws-kms" => {
                return Err(Error::Config(format!(
                    "service {} has no IBM endpoint",
                    m.service.as_deref().unwrap_or("")
                )));
            }
            other => {
                return Err(Error::Config(format!(
                    "unknown service {other:?}: use key-protect or hpcs"
                )));
            }
        };
        if let Some(r) = &m.region
            && !KP_REGIONS.contains(&r.as_str())
        {
            return Err(Error::Config(format!(
                "unknown region {r:?}; regions: {}",
                KP_REGIONS.join(", ")
            )));
        }
        let endpoint = match (&m.endpoint, &m.region, service) {
            (Some(e), _, _) => e.clone(),
            (None, Some(r), Service::KeyProtect) if m.private == Some(true) => {
                format!("https://private.{r}.kms.cloud.ibm.com")
            }
            (None, Some(r), Service::KeyProtect) => format!("https://{r}.kms.cloud.ibm.com"),
            (None, Some(r), Service::Hpcs) => match (m.hpcs_port, &m.instance_id) {
                (Some(p), _) => format!("https://api.{r}.hs-crypto.cloud.ibm.com:{p}"),
                (None, Some(i)) => format!("https://{i}.api.{r}.hs-crypto.appdomain.cloud"),
                (None, None) => {
                    return Err(Error::Config(
                        "HPCS needs the instance id (--instance-id: its host is INSTANCE.api.REGION.hs-crypto.appdomain.cloud) or --kms-endpoint".into(),
                    ));
                }
            },
            (None, None, _) => {
                return Err(Error::Config(
                    "no KMS endpoint: give --region (or IBMCLOUD_REGION) or --kms-endpoint".into(),
                ));
            }
        };
        let need = |v: &Option<String>, what: &str, flag: &str, env: &str| {
            v.clone().ok_or_else(|| {
                Error::Config(format!(
                    "no {what}: pass {flag}, set {env}, or set it in the config file"
                ))
            })
        };
        Ok(KmsSettings {
            service,
            region: m.region.clone(),
            endpoint: endpoint.trim_end_matches('/').to_owned(),
            iam_endpoint: m
                .iam_endpoint
                .clone()
                .unwrap_or_else(|| IAM_ENDPOINT.into())
                .trim_end_matches('/')
                .to_owned(),
            instance_id: need(
                &m.instance_id,
                "KMS instance id",
                "--instance-id",
                "DISKSEAL_KMS_INSTANCE_ID",
            )?,
            key_id: need(&m.key_id, "root key id", "--key-id", "DISKSEAL_KMS_KEY_ID")?,
            key_ring: m.key_ring.clone(),
            api_key: self.api_key()?,
            retry: self.retry(),
        })
    }

    /// The configured key wrapper: a PKCS#11 token, AWS KMS, or IBM Key Protect / HPCS.
    pub fn wrapper(&self) -> Result<Box<dyn crate::kms::KeyWrapper>> {
        if self.is_pkcs11() {
            return Ok(Box::new(crate::kms::pkcs11::Pkcs11::new(self.pkcs11()?)?));
        }
        if self.service() == "aws-kms" {
            return Ok(Box::new(crate::kms::aws::AwsKms::new(self.aws()?)));
        }
        Ok(Box::new(crate::kms::keyprotect::KeyProtect::new(
            self.kms()?,
        )))
    }

    /// The root key the KMS commands act on, for the audit log, resolved without contacting anything
    /// (a CRN, an ARN or id, a PKCS#11 URI; empty when not configured).
    pub fn kms_target(&self) -> String {
        let m = &self.merged;
        let or_empty = |v: &Option<String>| v.clone().unwrap_or_default();
        if self.is_pkcs11() {
            return format!(
                "pkcs11:token={};object={}",
                or_empty(&m.token_label),
                or_empty(&m.key_label)
            );
        }
        if self.service() != "aws-kms"
            && let Ok(k) = self.kms()
        {
            return k.key_crn();
        }
        or_empty(&m.key_id)
    }

    /// The kind of credential the KMS calls use, for the audit log: `apikey` (IBM Cloud API key, IAM
    /// tokens), `aws-access-key` (AWS, `+session-token` with one) or `pkcs11-pin`.
    pub fn kms_credential(&self) -> String {
        if self.is_pkcs11() {
            return "pkcs11-pin".into();
        }
        if self.service() == "aws-kms" {
            return if self.aws_env.2.is_some() {
                "aws-access-key+session-token".into()
            } else {
                "aws-access-key".into()
            };
        }
        "apikey".into()
    }

    /// The dry run of one KMS operation (`wrap`, `unwrap`, `rewrap` or `generate`): what it would send,
    /// secrets redacted, one request per line. Nothing is contacted, no PIN is asked.
    pub fn kms_plan(&self, op: &str) -> Result<Vec<String>> {
        let body = match op {
            "wrap" => "{\"plaintext\": <redacted>}",
            "generate" => "{}",
            _ => "{\"ciphertext\": <the WDEK>}",
        };
        if self.is_pkcs11() {
            let m = &self.merged;
            let call = match (op, m.mechanism.as_deref().unwrap_or("aes-kwp")) {
                ("wrap" | "generate", "aes-kwp") => "C_WrapKey (CKM_AES_KEY_WRAP_PAD)",
                (_, "aes-kwp") => "C_UnwrapKey (CKM_AES_KEY_WRAP_PAD)",
                ("wrap" | "generate", _) => "C_Encrypt (RSA-OAEP)",
                _ => "C_Decrypt (RSA-OAEP)",
            };
            let or_none = |v: &Option<String>| v.clone().unwrap_or_else(|| "<not set>".into());
            return Ok(vec![format!(
                "PKCS#11 {}: C_Login on token {} (PIN: <redacted>), {call} with the key labelled {}",
                m.pkcs11_module
                    .as_ref()
                    .map_or_else(|| "<no module>".into(), |p| p.display().to_string()),
                or_none(&m.token_label),
                or_none(&m.key_label),
            )]);
        }
        if self.service() == "aws-kms" {
            let a = self.aws()?;
            let target = match op {
                "wrap" => "Encrypt",
                "unwrap" => "Decrypt",
                "rewrap" => "ReEncrypt",
                _ => "GenerateDataKey",
            };
            return Ok(vec![format!(
                "POST {}/ (X-Amz-Target: TrentService.{target}; KeyId {}; Authorization: AWS4-HMAC-SHA256 <redacted>) {body}",
                a.endpoint, a.key_id
            )]);
        }
        let k = self.kms()?;
        let action = if op == "generate" { "wrap" } else { op };
        let ring = k
            .key_ring
            .as_ref()
            .map(|r| format!("; x-kms-key-ring: {r}"))
            .unwrap_or_default();
        Ok(vec![
            format!(
                "POST {}/identity/token (apikey: <redacted>)",
                k.iam_endpoint
            ),
            format!(
                "POST {}/api/v2/keys/{}/actions/{action} (bluemix-instance: {}{ring}; Authorization: Bearer <redacted>) {body}",
                k.endpoint, k.key_id, k.instance_id
            ),
        ])
    }

    /// The S3 client's authorisation for `url` per `mode` (auto, hmac, iam), and the region the AWS
    /// settings give: HMAC keys as the AWS CLI finds them ([`crate::awsconfig`]); IAM bearer tokens from
    /// the IBM Cloud API key ([`Layers::api_key`]) for `--auth iam`, or for cos:// without HMAC keys.
    pub fn s3_auth(
        &self,
        url: &str,
        mode: &str,
        profile: Option<&str>,
        region: Option<&str>,
        retry: RetryPolicy,
    ) -> Result<(crate::s3::Auth, Option<String>)> {
        use crate::s3::Auth;
        let iam = || -> Result<Auth> {
            Ok(Auth::Iam(std::sync::Arc::new(
                crate::http::iam::IamTokens::new(&self.iam_endpoint(), self.api_key()?, retry),
            )))
        };
        if mode == "iam" {
            let region = region.map(str::to_owned);
            return Ok((iam()?, region));
        }
        if mode != "auto" && mode != "hmac" {
            return Err(Error::Config(format!(
                "--auth {mode}: use auto, hmac or iam"
            )));
        }
        let aws = crate::awsconfig::resolve(profile, region, &|k| std::env::var(k).ok())?;
        match aws.credentials {
            Some(c) => Ok((Auth::Hmac(c), aws.region)),
            None if mode == "auto" && url.starts_with("cos://") && self.api_key().is_ok() => {
                Ok((iam()?, aws.region))
            }
            None => Err(Error::Config(format!(
                "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (IBM COS: its HMAC keys), or put them in the AWS profile {:?} (~/.aws/credentials; --profile, AWS_PROFILE){}",
                aws.name,
                if url.starts_with("cos://") {
                    "; or give an IBM Cloud API key (IBMCLOUD_API_KEY, --api-key-file) for IAM tokens"
                } else {
                    ""
                }
            ))),
        }
    }

    /// The retry policy from the merged settings.
    pub fn retry(&self) -> RetryPolicy {
        let m = &self.merged;
        let mut retry = RetryPolicy::default();
        if let Some(n) = m.max_attempts {
            retry.max_attempts = n.clamp(1, 10);
        }
        if let Some(ms) = m.max_retry_wait_ms {
            retry.max_wait = Duration::from_millis(ms);
        }
        if let Some(ms) = m.retry_base_ms {
            retry.base = Duration::from_millis(ms);
        }
        if let Some(s) = m.timeout_secs {
            retry.timeout = Duration::from_secs(s.max(1));
        }
        retry
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    /// The config file names the KMS endpoint as the flag does (`kms_endpoint`); the old `endpoint`
    /// still reads.
    #[test]
    fn kms_endpoint_key_and_its_old_name() {
        for key in ["kms_endpoint", "endpoint"] {
            let c: FileConfig = toml::from_str(&format!("{key} = \"http://k\"")).unwrap();
            assert_eq!(c.endpoint.as_deref(), Some("http://k"), "{key}");
        }
        assert!(toml::from_str::<FileConfig>("vpc_endpoint = \"x\"").is_err());
    }

    #[test]
    fn flags_beat_env_beat_file() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("c.toml");
        std::fs::write(&cfg, "region = \"eu-de\"\ninstance_id = \"file-inst\"\nkey_id = \"file-key\"\nkey_ring = \"ring\"\n").unwrap();
        let env = env_of(&[
            ("IBMCLOUD_API_KEY", "k3y"),
            ("DISKSEAL_KMS_KEY_ID", "env-key"),
            ("DISKSEAL_KMS_INSTANCE_ID", "env-inst"),
        ]);
        let flags = FileConfig {
            instance_id: Some("flag-inst".into()),
            ..FileConfig::default()
        };
        let s = Layers::new(flags, Some(&cfg), &env).unwrap().kms().unwrap();
        assert_eq!(s.instance_id, "flag-inst");
        assert_eq!(s.key_id, "env-key");
        assert_eq!(s.key_ring.as_deref(), Some("ring"));
        assert_eq!(s.endpoint, "https://eu-de.kms.cloud.ibm.com");
        assert_eq!(s.iam_endpoint, "https://iam.cloud.ibm.com");
        assert_eq!(s.api_key.expose(), "k3y");
        let shown = format!("{s:?}");
        assert!(
            !shown.contains("k3y") && shown.contains("<redacted>"),
            "{shown}"
        );
    }

    #[test]
    fn endpoint_tables() {
        let env = env_of(&[("IBMCLOUD_API_KEY", "k")]);
        let base = || FileConfig {
            instance_id: Some("i".into()),
            key_id: Some("k".into()),
            region: Some("us-south".into()),
            ..FileConfig::default()
        };
        let s = Layers::new(
            FileConfig {
                private: Some(true),
                ..base()
            },
            None,
            &env,
        )
        .unwrap()
        .kms()
        .unwrap();
        assert_eq!(s.endpoint, "https://private.us-south.kms.cloud.ibm.com");
        let hp = FileConfig {
            service: Some("hpcs".into()),
            hpcs_port: Some(8765),
            ..base()
        };
        assert_eq!(
            Layers::new(hp, None, &env).unwrap().kms().unwrap().endpoint,
            "https://api.us-south.hs-crypto.cloud.ibm.com:8765"
        );
        let hp = FileConfig {
            service: Some("hpcs".into()),
            ..base()
        };
        assert_eq!(
            Layers::new(hp, None, &env).unwrap().kms().unwrap().endpoint,
            "https://i.api.us-south.hs-crypto.appdomain.cloud"
        );
        let bad = FileConfig {
            region: Some("mars-1".into()),
            ..base()
        };
        assert!(
            Layers::new(bad, None, &env)
                .unwrap()
                .kms()
                .unwrap_err()
                .to_string()
                .contains("unknown region")
        );
        let local = FileConfig {
            endpoint: Some("http://127.0.0.1:9/".into()),
            iam_endpoint: Some("http://127.0.0.1:8".into()),
            ..base()
        };
        let s = Layers::new(local, None, &env).unwrap().kms().unwrap();
        assert_eq!(
            (s.endpoint.as_str(), s.iam_endpoint.as_str()),
            ("http://127.0.0.1:9", "http://127.0.0.1:8")
        );
    }

    #[test]
    fn aws_kms_credentials_and_region_from_a_profile() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(".aws")).unwrap();
        std::fs::write(
            dir.path().join(".aws/credentials"),
            "[kms]\naws_access_key_id = AKFILE\naws_secret_access_key = sfile\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join(".aws/config"),
            "[profile kms]\nregion = eu-north-1\n",
        )
        .unwrap();
        let home = dir.path().display().to_string();
        let env = move |k: &str| match k {
            "HOME" => Some(home.clone()),
            "AWS_PROFILE" => Some("kms".to_owned()),
            _ => None,
        };
        let flags = FileConfig {
            key_id: Some("alias/k".into()),
            ..FileConfig::default()
        };
        let s = Layers::new(flags, None, &env).unwrap().aws().unwrap();
        assert_eq!(
            (s.access_key_id.as_str(), s.region.as_str()),
            ("AKFILE", "eu-north-1")
        );
        assert_eq!(s.endpoint, "https://kms.eu-north-1.amazonaws.com");
        assert!(!format!("{s:?}").contains("sfile"));
    }

    #[test]
    fn unknown_config_field_is_named_and_missing_key_is_explained() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("c.toml");
        std::fs::write(&cfg, "region = \"us-south\"\nkey_idd = \"typo\"\n").unwrap();
        let e = Layers::new(FileConfig::default(), Some(&cfg), &env_of(&[]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("key_idd") && e.contains("c.toml"), "{e}");
        let flags = FileConfig {
            instance_id: Some("i".into()),
            key_id: Some("k".into()),
            region: Some("us-south".into()),
            ..FileConfig::default()
        };
        let e = Layers::new(flags, None, &env_of(&[]))
            .unwrap()
            .kms()
            .unwrap_err()
            .to_string();
        assert!(e.contains("IBMCLOUD_API_KEY"), "{e}");
    }
}
