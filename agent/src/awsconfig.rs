//! AWS shared configuration, read the way the AWS CLI reads it, for S3 credentials and region:
//!
//! - the profile: `--profile`, else `AWS_PROFILE`, else `AWS_DEFAULT_PROFILE`, else `default`;
//! - credentials: `AWS_ACCESS_KEY_ID` + `AWS_SECRET_ACCESS_KEY` (+ `AWS_SESSION_TOKEN`) first, unless
//!   `--profile` names a profile (botocore drops the environment provider for an explicit profile; a
//!   profile from `AWS_PROFILE` still comes after the environment's keys); then the profile's
//!   `aws_access_key_id` / `aws_secret_access_key` / `aws_session_token` in the credentials file
//!   (`AWS_SHARED_CREDENTIALS_FILE`, else `~/.aws/credentials`, sections `[NAME]`), then in the config
//!   file (`AWS_CONFIG_FILE`, else `~/.aws/config`, sections `[profile NAME]` and `[default]`);
//! - region: the flag, else `AWS_REGION`, else `AWS_DEFAULT_REGION`, else the profile's `region` in the
//!   config file.
//!
//! Profiles that get credentials another way (`role_arn`, `sso_*`, `credential_process`,
//! `web_identity_token_file`) are named in the error, not followed. Secret values are held in
//! [`SecretString`]s and the files' text in zeroizing buffers.

use std::collections::BTreeMap;
use std::path::PathBuf;

use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::http::sigv4::Credentials;
use crate::secret::SecretString;

/// What the AWS settings resolved to.
#[derive(Debug, Clone)]
pub struct AwsProfile {
    /// The profile name in use.
    pub name: String,
    /// HMAC credentials, when any source had them.
    pub credentials: Option<Credentials>,
    /// Where the credentials came from: "environment" or the file path with the section.
    pub source: Option<String>,
    /// The region, when any source had one.
    pub region: Option<String>,
}

type Sections = BTreeMap<String, BTreeMap<String, SecretString>>;

/// Parses an AWS INI file: `[section]` headers, `key = value` lines, `#`/`;` comment lines; indented
/// lines (nested settings such as `s3 =` blocks) are skipped.
fn parse_ini(text: &str) -> Sections {
    let mut out = Sections::new();
    let mut current: Option<String> = None;
    for raw in text.lines() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let name = name.split_whitespace().collect::<Vec<_>>().join(" ");
            out.entry(name.clone()).or_default();
            current = Some(name);
            continue;
        }
        if raw.starts_with([' ', '\t']) {
            continue;
        }
        if let (Some(sec), Some((k, v))) = (&current, line.split_once('=')) {
            out.entry(sec.clone())
                .or_default()
                .insert(k.trim().to_owned(), SecretString::new(v.trim().to_owned()));
        }
    }
    out
}

fn read_ini(path: &PathBuf) -> Result<Option<Sections>> {
    match std::fs::read(path) {
        Ok(b) => {
            let b = Zeroizing::new(b);
            let text = std::str::from_utf8(&b)
                .map_err(|_| Error::Config(format!("{}: not UTF-8 text", path.display())))?;
            Ok(Some(parse_ini(text)))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("read AWS file", path, e)),
    }
}

fn keys_of(section: &BTreeMap<String, SecretString>) -> Option<Credentials> {
    let get = |k: &str| section.get(k).filter(|v| !v.expose().is_empty());
    let (ak, sk) = (get("aws_access_key_id")?, get("aws_secret_access_key")?);
    Some(Credentials {
        access_key_id: ak.expose().to_owned(),
        secret_access_key: sk.clone(),
        session_token: get("aws_session_token").cloned(),
    })
}

/// Resolves the profile, credentials and region; `profile_flag` is `--profile`, `region_flag`
/// `--region`, `env` reads the environment.
pub fn resolve(
    profile_flag: Option<&str>,
    region_flag: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<AwsProfile> {
    let get = |k: &str| env(k).filter(|v| !v.is_empty());
    let name = profile_flag
        .map(str::to_owned)
        .or_else(|| get("AWS_PROFILE"))
        .or_else(|| get("AWS_DEFAULT_PROFILE"))
        .unwrap_or_else(|| "default".into());
    let home = get("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    let cred_path = get("AWS_SHARED_CREDENTIALS_FILE")
        .map_or_else(|| home.join(".aws/credentials"), PathBuf::from);
    let conf_path = get("AWS_CONFIG_FILE").map_or_else(|| home.join(".aws/config"), PathBuf::from);
    let creds_file = read_ini(&cred_path)?;
    let conf_file = read_ini(&conf_path)?;
    let cred_section = creds_file.as_ref().and_then(|f| f.get(&name));
    let conf_key = if name == "default" {
        "default".to_owned()
    } else {
        format!("profile {name}")
    };
    let conf_section = conf_file.as_ref().and_then(|f| {
        f.get(&conf_key).or_else(|| {
            (name == "default")
                .then(|| f.get("profile default"))
                .flatten()
        })
    });
    let env_creds = match (get("AWS_ACCESS_KEY_ID"), get("AWS_SECRET_ACCESS_KEY")) {
        (Some(ak), Some(sk)) if profile_flag.is_none() => Some(Credentials {
            access_key_id: ak,
            secret_access_key: SecretString::new(sk),
            session_token: get("AWS_SESSION_TOKEN").map(SecretString::new),
        }),
        _ => None,
    };
    let (credentials, source) = if let Some(c) = env_creds {
        (Some(c), Some("environment".to_owned()))
    } else if let Some(c) = cred_section.and_then(keys_of) {
        (Some(c), Some(format!("{} [{name}]", cred_path.display())))
    } else if let Some(c) = conf_section.and_then(keys_of) {
        (
            Some(c),
            Some(format!("{} [{conf_key}]", conf_path.display())),
        )
    } else {
        (None, None)
    };
    let named = profile_flag.is_some() || get("AWS_PROFILE").is_some();
    if credentials.is_none() && named {
        if cred_section.is_none() && conf_section.is_none() {
            return Err(Error::Config(format!(
                "AWS profile {name:?} is in neither {} nor {}",
                cred_path.display(),
                conf_path.display()
            )));
        }
        let other = [
            "role_arn",
            "credential_process",
            "sso_session",
            "sso_start_url",
            "web_identity_token_file",
        ]
        .into_iter()
        .find(|k| {
            conf_section.is_some_and(|s| s.contains_key(*k))
                || cred_section.is_some_and(|s| s.contains_key(*k))
        });
        return Err(Error::Config(match other {
            Some(k) => format!(
                "AWS profile {name:?} gets its credentials through {k}, which diskseal-agent does not follow: export keys for it (`aws configure export-credentials --profile {name} --format env`)"
            ),
            None => {
                format!("AWS profile {name:?} has no aws_access_key_id and aws_secret_access_key")
            }
        }));
    }
    let region = region_flag
        .map(str::to_owned)
        .or_else(|| get("AWS_REGION"))
        .or_else(|| get("AWS_DEFAULT_REGION"))
        .or_else(|| {
            conf_section
                .and_then(|s| s.get("region"))
                .map(|r| r.expose().to_owned())
                .filter(|r| !r.is_empty())
        });
    Ok(AwsProfile {
        name,
        credentials,
        source,
        region,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: Vec<(&'static str, String)>) -> impl Fn(&str) -> Option<String> {
        move |k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone())
    }

    fn files() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join(".aws")).unwrap();
        std::fs::write(
            d.path().join(".aws/credentials"),
            "# keys\n[default]\naws_access_key_id = AKDEFAULT\naws_secret_access_key = sdefault\n\n[prod]\naws_access_key_id=AKPROD\naws_secret_access_key=sprod\naws_session_token = tprod\n",
        )
        .unwrap();
        std::fs::write(
            d.path().join(".aws/config"),
            "[default]\nregion = eu-west-1\ns3 =\n  max_concurrent_requests = 20\n  region = nested-ignored\n[profile prod]\nregion = ap-south-1\n[profile cfgonly]\naws_access_key_id = AKCFG\naws_secret_access_key = scfg\nregion = us-west-2\n[profile sso]\nsso_session = corp\n",
        )
        .unwrap();
        d
    }

    fn home(d: &tempfile::TempDir) -> (&'static str, String) {
        ("HOME", d.path().display().to_string())
    }

    #[test]
    fn default_profile_and_its_region() {
        let d = files();
        let p = resolve(None, None, &env_of(vec![home(&d)])).unwrap();
        let c = p.credentials.unwrap_or_else(|| panic!("no credentials"));
        assert_eq!(c.access_key_id, "AKDEFAULT");
        assert_eq!(c.secret_access_key.expose(), "sdefault");
        assert_eq!(p.region.as_deref(), Some("eu-west-1"));
        assert!(
            p.source
                .unwrap_or_default()
                .ends_with("credentials [default]")
        );
    }

    #[test]
    fn aws_profile_comes_after_env_keys_but_the_flag_beats_them() {
        let d = files();
        let env = vec![
            home(&d),
            ("AWS_PROFILE", "prod".into()),
            ("AWS_ACCESS_KEY_ID", "AKENV".into()),
            ("AWS_SECRET_ACCESS_KEY", "senv".into()),
        ];
        let p = resolve(None, None, &env_of(env.clone())).unwrap();
        assert_eq!(
            p.credentials.map(|c| c.access_key_id).as_deref(),
            Some("AKENV")
        );
        assert_eq!(p.region.as_deref(), Some("ap-south-1"));
        let p = resolve(Some("prod"), None, &env_of(env)).unwrap();
        let c = p.credentials.unwrap_or_else(|| panic!("no credentials"));
        assert_eq!(c.access_key_id, "AKPROD");
        assert_eq!(
            c.session_token.map(|t| t.expose().to_owned()).as_deref(),
            Some("tprod")
        );
        // Without env keys, AWS_PROFILE picks the profile.
        let p = resolve(
            None,
            None,
            &env_of(vec![home(&d), ("AWS_PROFILE", "prod".into())]),
        )
        .unwrap();
        assert_eq!(
            p.credentials.map(|c| c.access_key_id).as_deref(),
            Some("AKPROD")
        );
    }

    #[test]
    fn region_flag_then_env_then_profile() {
        let d = files();
        let env = vec![home(&d), ("AWS_DEFAULT_REGION", "ca-central-1".into())];
        let p = resolve(Some("prod"), None, &env_of(env.clone())).unwrap();
        assert_eq!(p.region.as_deref(), Some("ca-central-1"));
        let p = resolve(Some("prod"), Some("sa-east-1"), &env_of(env)).unwrap();
        assert_eq!(p.region.as_deref(), Some("sa-east-1"));
    }

    #[test]
    fn file_locations_from_env_and_keys_in_the_config_file() {
        let d = files();
        let other = d.path().join("elsewhere.ini");
        std::fs::write(&other, "[cfgonly]\n").unwrap();
        let env = vec![
            ("HOME", "/nonexistent".into()),
            ("AWS_SHARED_CREDENTIALS_FILE", other.display().to_string()),
            (
                "AWS_CONFIG_FILE",
                d.path().join(".aws/config").display().to_string(),
            ),
        ];
        let p = resolve(Some("cfgonly"), None, &env_of(env)).unwrap();
        assert_eq!(
            p.credentials.map(|c| c.access_key_id).as_deref(),
            Some("AKCFG")
        );
        assert_eq!(p.region.as_deref(), Some("us-west-2"));
    }

    #[test]
    fn missing_and_unsupported_profiles_are_explained_without_secrets() {
        let d = files();
        let e = resolve(Some("nope"), None, &env_of(vec![home(&d)]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("\"nope\"") && e.contains(".aws/credentials"),
            "{e}"
        );
        let e = resolve(Some("sso"), None, &env_of(vec![home(&d)]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("sso_session"), "{e}");
        let p = resolve(Some("prod"), None, &env_of(vec![home(&d)])).unwrap();
        let shown = format!("{p:?}");
        assert!(
            !shown.contains("sprod") && !shown.contains("tprod"),
            "{shown}"
        );
        // No files, no env: no credentials, no error (the caller decides).
        let p = resolve(None, None, &env_of(vec![("HOME", "/nonexistent".into())])).unwrap();
        assert!(p.credentials.is_none() && p.region.is_none());
    }
}
