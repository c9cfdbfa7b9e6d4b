//! Image import into IBM Cloud (`ibm-cloud.md` §5), as IBM's official clients send it (the contract tests
//! hold the requests against ibm-vpc and softlayer-python): VPC `POST /v1/images` then polling
//! `GET /v1/images/{id}` until `available` or `failed` (with `status_reasons` explained), with an IAM
//! bearer token; classic SoftLayer REST `createFromIcos` then polling `getObject` until the template
//! and its children have no transaction (what `slcli image detail` shows), signed in with HTTP Basic
//! `apikey:<API key>` as softlayer-python does. A create is never repeated blindly: after a timeout or
//! a 5xx the image is looked up by name first and adopted when it exists. [`preflight`] catches the
//! documented pitfalls (names, container, sizes) before anything is sent.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::cloud::Client;
use crate::error::{Error, Result};
use crate::http::RetryPolicy;
use crate::http::{RemoteErrorKind, Reply};
use crate::secret::SecretString;
use crate::wire;

/// The VPC API version date sent as `version=`.
pub const VPC_API_VERSION: &str = "2024-04-30";
/// The VPC regions (ibm-vpc's service URL table, `VpcV1.get_service_url_for_region`).
pub const VPC_REGIONS: &[&str] = &[
    "au-syd", "br-sao", "ca-mon", "ca-tor", "eu-de", "eu-es", "eu-gb", "in-che", "in-mum",
    "jp-osa", "jp-tok", "us-east", "us-south",
];

/// The VPC API endpoint for an image in a bucket at `bucket_location`: that region's when it is a VPC
/// region, else `region`'s (a cross-region bucket such as `us`, or a single-site one such as `ams03`,
/// has no VPC of its own).
pub fn vpc_endpoint(bucket_location: &str, region: Option<&str>) -> Result<String> {
    let r = if VPC_REGIONS.contains(&bucket_location) {
        bucket_location
    } else {
        match region {
            Some(r) if VPC_REGIONS.contains(&r) => r,
            _ => {
                return Err(Error::Config(format!(
                    "the bucket's location {bucket_location:?} is not a VPC region (a cross-region or single-site bucket): give --region (or IBMCLOUD_REGION) with the VPC region to import into, one of {}",
                    VPC_REGIONS.join(", ")
                )));
            }
        }
    };
    Ok(format!("https://{r}.iaas.cloud.ibm.com"))
}

/// IBM's sizes are GiB: its own VPC example makes the 100 GB image with `qemu-img resize ... 100G`.
const GIB: u64 = 1 << 30;
/// softlayer-python's `slcli image detail` mask (`SoftLayer/CLI/image/__init__.py` DETAIL_MASK), less
/// the block devices, plus the template's own transaction.
const SL_MASK: &str = "mask[id,createDate,note,accountId,name,globalIdentifier,parentId,publicFlag,flexImageFlag,imageType,firstChild,children[id,blockDevicesDiskSpaceTotal,datacenter,transaction[transactionGroup,transactionStatus]],status,transaction[transactionGroup,transactionStatus]]";
/// softlayer-python's image list mask (`SoftLayer/managers/image.py` IMAGE_MASK) and the note.
const SL_LIST_MASK: &str =
    "mask[id,accountId,name,globalIdentifier,blockDevices,parentId,createDate,transaction,note]";

/// Checks a VPC image name: `^([a-z]|[a-z][-a-z0-9]*[a-z0-9])$`, at most 63 characters, not beginning
/// with `ibm-` (the VPC API's rule; names are also unique per region).
pub fn check_vpc_name(name: &str) -> Result<()> {
    let b = name.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[b.len() - 1] != b'-'
        && !name.starts_with("ibm-");
    if ok {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "image name {name:?}: VPC names must match ^([a-z]|[a-z][-a-z0-9]*[a-z0-9])$ (lowercase letters, digits and hyphens, starting with a letter), be at most 63 characters and not begin with ibm-; give --name"
        )))
    }
}

/// The default image name for an object key: its file name without extensions, made a valid VPC
/// name (lowercase, `_`/`.`/spaces to `-`, other characters dropped, leading digits and hyphens
/// dropped, at most 63 characters, `ibm-` avoided); classic takes the stem as it is.
pub fn default_name(cloud: Option<Cloud>, object_key: &str) -> String {
    let f = object_key.rsplit('/').next().unwrap_or(object_key);
    let stem = f.split('.').next().unwrap_or(f);
    if cloud != Some(Cloud::Vpc) {
        return stem.to_owned();
    }
    let mut n: String = stem
        .chars()
        .filter_map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '-') => Some(c),
            '_' | '.' | ' ' => Some('-'),
            _ => None,
        })
        .collect();
    n = n
        .trim_start_matches(|c: char| !c.is_ascii_lowercase())
        .to_owned();
    n.truncate(63);
    let mut n = n.trim_end_matches('-').to_owned();
    if n.starts_with("ibm-") {
        n.replace_range(..3, "img");
    }
    if n.is_empty() { "image".into() } else { n }
}

/// Where the image goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cloud {
    /// IBM Cloud VPC.
    Vpc,
    /// IBM Cloud classic infrastructure (SoftLayer).
    Classic,
}

impl Cloud {
    /// From `ibm-vpc` / `ibm-classic`.
    pub fn parse(s: &str) -> Result<Cloud> {
        match s {
            "ibm-vpc" => Ok(Cloud::Vpc),
            "ibm-classic" => Ok(Cloud::Classic),
            other => Err(Error::Config(format!(
                "unknown import target {other:?}: use ibm-vpc or ibm-classic"
            ))),
        }
    }
}

/// Checks the object name and, when given, the image file against the target's documented rules:
/// VPC takes lowercase `.qcow2`/`.vhd` names and qcow2 images with LUKS encryption of 10–250 GiB
/// (100 GiB recommended for encrypted images); classic takes `NAME.vhd-0.vhd` VHDs of at most 100 GiB.
/// Returns warnings that do not stop the import.
/// `check_size` false skips the size rules (small trial images); `legacy_luks` lets a classic import
/// send a raw LUKS image (the 2018 flow), with a warning.
pub fn preflight(
    cloud: Cloud,
    object_key: &str,
    image: Option<&Path>,
    check_size: bool,
    legacy_luks: bool,
) -> Result<Vec<String>> {
    let name = object_key.rsplit('/').next().unwrap_or(object_key);
    let bad = |m: String| Err(Error::Refused(format!("import: pre-flight: {m}")));
    let mut warnings = Vec::new();
    match cloud {
        Cloud::Vpc => {
            if !(name.ends_with(".qcow2") || name.ends_with(".vhd")) {
                return bad(format!(
                    "{name}: VPC takes the format from the extension, which must be lowercase .qcow2 or .vhd"
                ));
            }
        }
        Cloud::Classic => {
            let ok = name
                .strip_suffix(".vhd-0.vhd")
                .is_some_and(|stem| !stem.is_empty());
            if !ok {
                return bad(format!(
                    "{name}: classic imports need the name NAME.vhd-0.vhd (lowercase)"
                ));
            }
        }
    }
    let Some(path) = image else {
        return Ok(warnings);
    };
    let size = match cloud {
        Cloud::Vpc => vpc_image_size(path)?,
        Cloud::Classic if legacy_luks && sniff(path) == "a raw LUKS file" => {
            warnings.push(format!("{}: --legacy-luks: sending a raw LUKS image to IBM classic (the 2018 createFromIcos flow); IBM classic has wanted vhd-util-encrypted VHDs since 2019 and may refuse it", path.display()));
            std::fs::metadata(path)
                .map_err(|e| Error::io("stat", path, e))?
                .len()
        }
        Cloud::Classic => classic_image_size(path)?,
    };
    match cloud {
        Cloud::Vpc => {
            if check_size && !(10 * GIB..=250 * GIB).contains(&size) {
                return bad(format!(
                    "{}: virtual size {size} bytes; VPC images must be 10-250 GiB",
                    path.display()
                ));
            }
            if check_size && size != 100 * GIB {
                warnings.push(format!("virtual size {size} bytes: IBM recommends exactly 100 GiB for encrypted images (`diskseal encrypt --resize 100G`)"));
            }
        }
        Cloud::Classic => {
            if check_size && size > 100 * GIB {
                return bad(format!(
                    "{}: disk size {size} bytes; classic imports take at most 100 GiB",
                    path.display()
                ));
            }
        }
    }
    Ok(warnings)
}

const VPC_HINT: &str =
    "encrypt with `diskseal encrypt --profile ibm-vpc` (qcow2 with QEMU-native LUKS)";
const CLASSIC_HINT: &str = "encrypt with `diskseal encrypt --profile ibm-classic-vhd` (a dynamic VHD encrypted like vhd-util)";

/// What the first bytes of `path` say it is, for the pre-flight errors.
fn sniff(path: &Path) -> &'static str {
    use std::os::unix::fs::FileExt;
    let Ok(f) = std::fs::File::open(path) else {
        return "unreadable";
    };
    let mut head = [0u8; 8];
    let n = f.read_at(&mut head, 0).unwrap_or(0);
    let len = f.metadata().map_or(0, |m| m.len());
    let mut tail = [0u8; 8];
    let fixed_vhd =
        len >= 512 && f.read_exact_at(&mut tail, len - 512).is_ok() && &tail == b"conectix";
    match &head[..n] {
        [b'L', b'U', b'K', b'S', 0xba, 0xbe, ..] => "a raw LUKS file",
        [b'Q', b'F', b'I', 0xfb, ..] => "a qcow2 image",
        b"conectix" => "a VHD",
        _ if fixed_vhd => "a VHD",
        _ => "neither qcow2 nor VHD",
    }
}

/// The virtual size of a VPC encrypted image: `path` must be a qcow2 whose header names QEMU-native LUKS
/// encryption (crypt_method 2) with a readable LUKS1 header, checked with diskseal's qcow2 reader.
fn vpc_image_size(path: &Path) -> Result<u64> {
    use diskseal::image::DiskImage;
    use diskseal::image::qcow2::Qcow2Image;
    let bad = |m: String| {
        Error::Refused(format!(
            "import: pre-flight: {}: {m}; {VPC_HINT}",
            path.display()
        ))
    };
    let what = sniff(path);
    if what != "a qcow2 image" {
        return Err(bad(format!(
            "VPC encrypted images must be qcow2 with LUKS encryption, this is {what}"
        )));
    }
    let f = std::fs::File::open(path).map_err(|e| Error::io("open", path, e))?;
    let q = Qcow2Image::open(f, path, &mut diskseal::image::Chain::default())
        .map_err(|e| bad(format!("not a valid qcow2 image: {}", e.message())))?;
    match q.luks_header() {
        Ok(Some(_)) => Ok(q.virtual_size()),
        Ok(None) => Err(bad(format!(
            "the qcow2 image is not LUKS-encrypted (crypt_method {}, VPC needs 2: QEMU-native LUKS)",
            q.header().raw.crypt_method
        ))),
        Err(e) => Err(bad(format!(
            "unreadable qcow2 LUKS header: {}",
            e.message()
        ))),
    }
}

/// The disk size of a classic encrypted image: `path` must be a dynamic VHD written by tapdisk/vhd-util
/// whose batmap carries a key hash (cookie 1), checked with diskseal's vhd-util reader.
fn classic_image_size(path: &Path) -> Result<u64> {
    let bad = |m: String| {
        Error::Refused(format!(
            "import: pre-flight: {}: {m}; {CLASSIC_HINT}",
            path.display()
        ))
    };
    let what = sniff(path);
    if what == "a raw LUKS file" {
        return Err(bad(
            "this is a raw LUKS file (the 2018 flow): IBM classic has wanted vhd-util-encrypted VHDs since 2019; pass --legacy-luks to send it anyway".into(),
        ));
    }
    if what != "a VHD" {
        return Err(bad(format!(
            "classic encrypted images must be VHDs encrypted with the vhd-util scheme, this is {what}"
        )));
    }
    let (img, batmap) = diskseal::image::vhd::classic::read_batmap(path)
        .map_err(|e| bad(format!("not a vhd-util encrypted VHD: {}", e.message())))?;
    if batmap.header.keyhash.cookie != 1 {
        return Err(bad(
            "the VHD's batmap carries no key hash: it is not encrypted".into(),
        ));
    }
    Ok(img.footer().virtual_size)
}

/// What an import needs.
#[derive(Debug, Clone)]
pub struct ImportSettings {
    /// VPC or classic.
    pub cloud: Cloud,
    /// `https://<region>.iaas.cloud.ibm.com` or `https://api.softlayer.com` (or a test server).
    pub endpoint: String,
    /// IAM base URL.
    pub iam_endpoint: String,
    /// The API key (redacted).
    pub api_key: SecretString,
    /// Image name.
    pub name: String,
    /// `cos://REGION/BUCKET/KEY`.
    pub cos_uri: String,
    /// VPC `operating_system.name` or classic `operatingSystemReferenceCode`.
    pub os: String,
    /// The WDEK (base64).
    pub wdek: String,
    /// The root key's CRN.
    pub key_crn: String,
    /// Classic: bring your own license.
    pub byol: bool,
    /// Classic: appended to the template's note (`imported by diskseal-agent (TAG)`), so a rerun can
    /// find the template an interrupted run created; empty for none.
    pub tag: String,
    /// Time between polls.
    pub poll: Duration,
    /// Give up polling after this long.
    pub timeout: Duration,
    /// Retries for each request.
    pub retry: RetryPolicy,
}

/// A finished import.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Imported {
    /// Image id (VPC `r006-…`, classic numeric id).
    pub id: String,
    /// Classic global identifier.
    pub global_identifier: Option<String>,
    /// Final status.
    pub status: String,
    /// Polls made.
    pub polls: u32,
}

/// Explains a VPC `status_reasons` code.
pub fn explain(code: &str) -> &'static str {
    match code {
        "encrypted_data_key_invalid" => {
            "the WDEK does not unwrap to the image's passphrase under encryption_key; a classic cause is a passphrase wrapped with a trailing newline (echo without -n), or a WDEK from another root key"
        }
        "encryption_key_deleted" => "the root key was deleted",
        "encryption_key_disabled" => {
            "the root key is disabled (or its instance is not authorized for the image service)"
        }
        "image_data_corrupted" => {
            "the object in COS is not a valid image of the type its extension names"
        }
        "image_provisioned_size_unsupported" => "the image's virtual size is outside 10-250 GB",
        "image_request_in_progress" | "image_request_queued" => "still being processed",
        _ => "see the message",
    }
}

struct Api {
    s: ImportSettings,
    c: Client,
}

impl Api {
    fn label(&self) -> String {
        self.c.label()
    }

    fn http_error(&self, what: &str, r: &Reply) -> Error {
        let mut e = self.c.error(what, r);
        if self.s.cloud == Cloud::Vpc && r.status == 409 {
            e.message.push_str(&format!("; VPC image names are unique per region: an image named {:?} exists already (delete it, or give another --name)", self.s.name));
        }
        Error::Remote(e)
    }

    fn call_with(
        &self,
        retry: &RetryPolicy,
        method: &str,
        url: &str,
        body: Option<&Value>,
    ) -> Result<Reply> {
        self.c.call_with(retry, method, url, body)
    }

    fn call(&self, method: &str, url: &str, body: Option<&Value>) -> Result<Reply> {
        self.c.call(method, url, body)
    }
}

/// Sends the import request and polls until the image is ready or failed.
pub fn import(s: ImportSettings) -> Result<Imported> {
    import_resuming(s, Resume::Fresh, |_| Ok(()))
}

pub use crate::wire::ImageRef;

/// What an earlier, interrupted run did (see [`import_resuming`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resume {
    /// Nothing: create the image.
    Fresh,
    /// The create request was sent, but its answer was not recorded (the run was killed in between):
    /// look the image up by name (VPC: and root key CRN; classic: and the note's tag) before creating it.
    MaybeSent,
    /// The image was created: only poll it.
    Created(ImageRef),
}

/// What [`import_resuming`] tells its caller as it goes, to be recorded before it goes on.
#[derive(Debug, Clone, Copy)]
pub enum Step<'a> {
    /// The create request is about to be sent.
    Sending,
    /// The image exists (created now, or found after [`Resume::MaybeSent`]); polling starts next.
    Created(&'a ImageRef),
}

/// Like [`import`], resuming what an earlier run did (`resume`); `record` is told each [`Step`] before
/// the next request, so a caller that saves them never creates the image twice.
pub fn import_resuming(
    s: ImportSettings,
    resume: Resume,
    mut record: impl FnMut(Step<'_>) -> Result<()>,
) -> Result<Imported> {
    let c = Client::new(
        s.cloud,
        &s.endpoint,
        &s.iam_endpoint,
        s.api_key.clone(),
        s.retry,
    )?;
    let api = Api { s, c };
    let found = match resume {
        Resume::Created(id) => Some(id),
        Resume::MaybeSent => match api.s.cloud {
            Cloud::Vpc => vpc_find(&api)?,
            Cloud::Classic => classic_find(&api)?,
        },
        Resume::Fresh => None,
    };
    let id = match found {
        Some(id) => id,
        None => {
            record(Step::Sending)?;
            create_once(&api)?
        }
    };
    record(Step::Created(&id))?;
    match api.s.cloud {
        Cloud::Vpc => vpc_poll(&api, id.0),
        Cloud::Classic => classic_poll(&api, id.0, id.1),
    }
}

/// True for a failure after which the create may have gone through (what a blind retry would
/// repeat): no answer or a timeout; a VPC 429 or 5xx; a SoftLayer 5xx that is not one of its own
/// errors (SoftLayer answers every refusal with a 500 and a `code`, a definite answer) or its rate limit.
pub(crate) fn uncertain(cloud: Cloud, e: &Error) -> bool {
    let Error::Remote(r) = e else { return false };
    if r.kind == RemoteErrorKind::Unreachable {
        return true;
    }
    let server = r.status.is_some_and(|s| s >= 500 || s == 429);
    match cloud {
        Cloud::Vpc => server,
        Cloud::Classic => {
            server
                && r.code
                    .as_deref()
                    .is_none_or(|c| !c.starts_with("SoftLayer_") || c.contains("RateLimit"))
        }
    }
}

/// Creates the image; after a failure that leaves it unknown whether the create went through, looks
/// the image up by name (and key / note tag) and adopts it, else sends the create again, up to the
/// retry policy's attempts.
fn create_once(api: &Api) -> Result<ImageRef> {
    let mut attempt = 1;
    loop {
        let r = match api.s.cloud {
            Cloud::Vpc => vpc_create(api),
            Cloud::Classic => classic_create(api),
        };
        match r {
            Err(e) if uncertain(api.s.cloud, &e) && attempt < api.s.retry.max_attempts => {
                std::thread::sleep(crate::http::backoff(&api.s.retry, attempt + 1));
                let found = match api.s.cloud {
                    Cloud::Vpc => vpc_find(api)?,
                    Cloud::Classic => classic_find(api)?,
                };
                if let Some(id) = found {
                    return Ok(id);
                }
                attempt += 1;
            }
            r => return r,
        }
    }
}

/// The create request's retry policy: one attempt (a retry is [`create_once`]'s, after a lookup).
fn once(p: &RetryPolicy) -> RetryPolicy {
    RetryPolicy {
        max_attempts: 1,
        ..*p
    }
}

fn vpc_create(api: &Api) -> Result<(String, Option<String>)> {
    let s = &api.s;
    let q = format!("version={VPC_API_VERSION}&generation=2");
    let body = json!({
        "name": s.name,
        "file": {"href": s.cos_uri},
        "operating_system": {"name": s.os},
        "encrypted_data_key": s.wdek,
        "encryption_key": {"crn": s.key_crn},
    });
    let r = api.call_with(
        &once(&s.retry),
        "POST",
        &format!("{}/v1/images?{q}", s.endpoint),
        Some(&body),
    )?;
    if r.status != 201 && r.status != 200 {
        return Err(api.http_error("POST /v1/images", &r));
    }
    let v = wire::vpc_image(&r.body)
        .map_err(|e| Error::Import(format!("{}: image response is {e}", api.label())))?;
    if v.id.is_empty() {
        return Err(Error::Import(format!(
            "{}: no id in the image response",
            api.label()
        )));
    }
    Ok((v.id, None))
}

/// The image named `s.name` under `s.key_crn`, if the VPC has one (`GET /v1/images?name=`).
fn vpc_find(api: &Api) -> Result<Option<ImageRef>> {
    let s = &api.s;
    let url = format!(
        "{}/v1/images?version={VPC_API_VERSION}&generation=2&name={}",
        s.endpoint,
        crate::s3::uri_encode(&s.name, true)
    );
    let r = api.call("GET", &url, None)?;
    if r.status != 200 {
        return Err(api.http_error("GET /v1/images?name=", &r));
    }
    Ok(wire::vpc_image_named(&r.body, &s.name, &s.key_crn))
}

/// The classic note of an image template made with `tag`.
fn classic_note(tag: &str) -> String {
    if tag.is_empty() {
        "imported by diskseal-agent".into()
    } else {
        format!("imported by diskseal-agent ({tag})")
    }
}

/// The account's image template named `s.name` whose note carries `s.tag`, if any: softlayer-python's
/// `list_private_images(name=)` (`SoftLayer_Account/getPrivateBlockDeviceTemplateGroups`, objectFilter
/// `_= NAME` sorted by id, the first 100).
fn classic_find(api: &Api) -> Result<Option<ImageRef>> {
    let s = &api.s;
    let filter = json!({"privateBlockDeviceTemplateGroups": {
        "id": {"operation": "orderBy", "options": [{"name": "sort", "value": ["ASC"]}]},
        "name": {"operation": format!("_= {}", s.name)}}})
    .to_string();
    let url = format!(
        "{}/rest/v3.1/SoftLayer_Account/getPrivateBlockDeviceTemplateGroups.json?objectMask={}&objectFilter={}&resultLimit=0%2C100",
        s.endpoint,
        crate::s3::uri_encode(SL_LIST_MASK, true),
        crate::s3::uri_encode(&filter, true)
    );
    let r = api.call("GET", &url, None)?;
    if r.status != 200 {
        return Err(api.http_error("getPrivateBlockDeviceTemplateGroups", &r));
    }
    Ok(wire::softlayer_template_named(
        &r.body,
        &s.name,
        &classic_note(&s.tag),
    ))
}

fn vpc_poll(api: &Api, id: String) -> Result<Imported> {
    let s = &api.s;
    let q = format!("version={VPC_API_VERSION}&generation=2");
    let t0 = Instant::now();
    let mut polls = 0;
    loop {
        std::thread::sleep(s.poll);
        polls += 1;
        let r = api.call("GET", &format!("{}/v1/images/{id}?{q}", s.endpoint), None)?;
        if r.status != 200 {
            return Err(api.http_error(&format!("GET /v1/images/{id}"), &r));
        }
        let v = wire::vpc_image(&r.body).unwrap_or_default();
        match v.status.as_str() {
            "available" => {
                return Ok(Imported {
                    id,
                    global_identifier: None,
                    status: "available".into(),
                    polls,
                });
            }
            "failed" | "unusable" | "deleting" => {
                let reasons: Vec<String> = v
                    .reasons
                    .iter()
                    .map(|(code, message)| format!("{code}: {message} ({})", explain(code)))
                    .collect();
                return Err(Error::Import(format!(
                    "VPC image {id} is {}: {}",
                    v.status,
                    reasons.join("; ")
                )));
            }
            _ => {}
        }
        if t0.elapsed() > s.timeout {
            return Err(Error::Import(format!(
                "VPC image {id} still {:?} after {:?}; poll it with GET /v1/images/{id}",
                v.status, s.timeout
            )));
        }
    }
}

/// The dry run of an import: the requests it would send, one per line, the API key redacted and the
/// WDEK shown as `wdek_shown`.
pub fn plan(s: &ImportSettings, wdek_shown: &str) -> Vec<String> {
    let every = s.poll.as_millis();
    match s.cloud {
        Cloud::Vpc => {
            let token = format!(
                "POST {}/identity/token (apikey: <redacted>)",
                s.iam_endpoint
            );
            let body = json!({"name": s.name, "file": {"href": s.cos_uri}, "operating_system": {"name": s.os}, "encrypted_data_key": wdek_shown, "encryption_key": {"crn": s.key_crn}});
            vec![
                token,
                format!(
                    "POST {}/v1/images?version={VPC_API_VERSION}&generation=2 (Authorization: Bearer <redacted>) {body}",
                    s.endpoint
                ),
                format!(
                    "GET  {}/v1/images/<id>?version={VPC_API_VERSION}&generation=2 every {every} ms until available or failed",
                    s.endpoint
                ),
            ]
        }
        Cloud::Classic => {
            let body = json!({"parameters": [{"name": s.name, "note": classic_note(&s.tag), "operatingSystemReferenceCode": s.os, "uri": s.cos_uri, "ibmApiKey": "<redacted>", "crkCrn": s.key_crn, "wrappedDek": wdek_shown, "cloudInit": true, "isEncrypted": true, "byol": s.byol}]});
            let base = sl_base(s);
            vec![
                format!(
                    "POST {base}/createFromIcos.json (Authorization: Basic <redacted apikey:API key>) {body}"
                ),
                format!(
                    "GET  {base}/<id>/getObject.json?objectMask=... every {every} ms until the transaction is gone"
                ),
            ]
        }
    }
}

fn sl_base(s: &ImportSettings) -> String {
    format!(
        "{}/rest/v3.1/SoftLayer_Virtual_Guest_Block_Device_Template_Group",
        s.endpoint
    )
}

fn classic_create(api: &Api) -> Result<(String, Option<String>)> {
    let s = &api.s;
    let base = sl_base(s);
    let body = json!({"parameters": [{
        "name": s.name,
        "note": classic_note(&s.tag),
        "operatingSystemReferenceCode": s.os,
        "uri": s.cos_uri,
        "ibmApiKey": s.api_key.expose(),
        "crkCrn": s.key_crn,
        "wrappedDek": s.wdek,
        "cloudInit": true,
        "isEncrypted": true,
        "byol": s.byol,
    }]});
    let r = api.call_with(
        &once(&s.retry),
        "POST",
        &format!("{base}/createFromIcos.json"),
        Some(&body),
    )?;
    if r.status != 200 && r.status != 201 {
        return Err(api.http_error("createFromIcos", &r));
    }
    wire::softlayer_created(&r.body)
        .map_err(|e| Error::Import(format!("{}: createFromIcos response: {e}", api.label())))
}

fn classic_poll(api: &Api, id: String, guid: Option<String>) -> Result<Imported> {
    let s = &api.s;
    let base = sl_base(s);
    let t0 = Instant::now();
    let mut polls = 0;
    loop {
        std::thread::sleep(s.poll);
        polls += 1;
        let url = format!(
            "{base}/{id}/getObject.json?objectMask={}",
            crate::s3::uri_encode(SL_MASK, true)
        );
        let r = api.call("GET", &url, None)?;
        if r.status != 200 {
            return Err(api.http_error(&format!("getObject {id}"), &r));
        }
        let v = wire::softlayer_template(&r.body);
        if let Some(k) = v.failed() {
            return Err(Error::Import(format!(
                "classic image template {id} is {k}: {}",
                v.description.as_deref().unwrap_or("")
            )));
        }
        if !v.busy && v.status.as_deref().is_none_or(|k| k == "ACTIVE") {
            return Ok(Imported {
                id,
                global_identifier: guid,
                status: v.status.unwrap_or_else(|| "ACTIVE".into()),
                polls,
            });
        }
        if t0.elapsed() > s.timeout {
            return Err(Error::Import(format!(
                "classic image template {id} still importing after {:?}: last seen status {}, transaction {}",
                s.timeout,
                v.status.as_deref().unwrap_or("(none)"),
                v.transaction.as_deref().unwrap_or("(none)")
            )));
        }
    }
}
