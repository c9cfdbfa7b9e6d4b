//! What servers send back, parsed: small pure functions over a response body, with no I/O.
//!
//! - S3 XML: `InitiateMultipartUpload`, `ListParts`, `CompleteMultipartUpload` (which may be an error in
//!   a 200), and the `<Error>` body;
//! - IBM IAM token and error JSON; Key Protect / Hyper Protect Crypto Services key-action and error JSON;
//! - AWS KMS JSON (and the XML errors some proxies send);
//! - IBM VPC image JSON and SoftLayer image template JSON;
//! - IBM VPC instance and volume JSON and SoftLayer virtual guest JSON (`provision`).
//!
//! The clients ([`crate::s3`], [`crate::kms`], [`crate::import`], [`crate::provision`]) decide what a missing field means; these
//! functions only say what is there. They never panic, whatever the input: the fuzz targets in `fuzz/`
//! run them on arbitrary bytes. To keep those builds small, the targets include this file by path, so it
//! uses nothing but `std`, `serde` (derive), `serde_json`, `quick-xml` (serde), `base64` and `zeroize`.

use std::collections::BTreeMap;

use base64::Engine;
use serde_json::Value;
use zeroize::Zeroizing;

/// A service's error body, as far as it says anything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceError {
    /// The service's reason code (`NoSuchUpload`, `KEY_NOT_FOUND_ERR`, `BXNIM0415E`, ...).
    pub reason: Option<String>,
    /// Its message.
    pub message: Option<String>,
    /// Its request / trace id.
    pub request_id: Option<String>,
}

// ---------------------------------------------------------------------------------------------------
// S3 (XML)

/// The fields of the S3 XML bodies the agent reads, whichever document they come in (quick-xml's serde
/// reader ignores the root's name, its attributes such as `xmlns`, and unknown elements, and decodes
/// entities). An AWS `<ErrorResponse>` nests its `<Error>`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default, rename_all = "PascalCase")]
struct S3Doc {
    code: Option<String>,
    message: Option<String>,
    request_id: Option<String>,
    error: Option<Box<S3Doc>>,
    upload_id: Option<String>,
    #[serde(rename = "ETag")]
    etag: Option<String>,
    #[serde(rename = "ChecksumSHA256")]
    checksum_sha256: Option<String>,
    is_truncated: Option<String>,
    next_part_number_marker: Option<String>,
    part: Vec<S3Part>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(default, rename_all = "PascalCase")]
struct S3Part {
    part_number: Option<String>,
    #[serde(rename = "ETag")]
    etag: Option<String>,
}

/// `body` read as S3 XML; anything unreadable reads as an empty document.
fn s3_doc(body: &str) -> S3Doc {
    quick_xml::de::from_str(body).unwrap_or_default()
}

fn text(v: Option<String>) -> Option<String> {
    v.map(|t| t.trim().to_owned()).filter(|t| !t.is_empty())
}

/// An ETag without its quotes (`"..."`, also when a server double-escaped them).
pub fn unquote(etag: &str) -> String {
    etag.replace("&quot;", "")
        .replace("&#34;", "")
        .trim()
        .trim_matches('"')
        .to_owned()
}

fn doc_error(d: S3Doc) -> ServiceError {
    let request_id = text(d.request_id);
    let inner = d.error.map(|e| *e);
    let (code, message, inner_id) = match inner {
        Some(e) => (e.code, e.message, e.request_id),
        None => (d.code, d.message, None),
    };
    ServiceError {
        reason: text(code),
        message: text(message),
        request_id: request_id.or_else(|| text(inner_id)),
    }
}

/// An S3 `<Error>` body: `Code`, `Message`, `RequestId`.
pub fn s3_error(body: &str) -> ServiceError {
    doc_error(s3_doc(body))
}

/// The `UploadId` of an `InitiateMultipartUploadResult`.
pub fn s3_initiate(body: &str) -> Option<String> {
    text(s3_doc(body).upload_id)
}

/// One page of a `ListPartsResult`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListPartsPage {
    /// Part number → ETag without quotes (empty when the server leaves it out).
    pub parts: BTreeMap<u32, String>,
    /// `NextPartNumberMarker` when `IsTruncated` is true: there is another page after it.
    pub next_marker: Option<u32>,
}

/// A `ListPartsResult` page (moto's `ListPartsResponse` too: the root's name is not read).
pub fn s3_list_parts(body: &str) -> ListPartsPage {
    let d = s3_doc(body);
    let mut page = ListPartsPage::default();
    for p in d.part {
        if let Some(n) = text(p.part_number).and_then(|n| n.parse().ok()) {
            page.parts
                .insert(n, p.etag.as_deref().map(unquote).unwrap_or_default());
        }
    }
    if text(d.is_truncated).as_deref() == Some("true") {
        page.next_marker = text(d.next_part_number_marker).and_then(|m| m.parse().ok());
    }
    page
}

/// A `CompleteMultipartUploadResult`: its ETag (empty when absent) and `ChecksumSHA256` (the composite
/// checksum, when the server gives it), or the `<Error>` S3 may send with status 200.
pub fn s3_complete(body: &str) -> Result<(String, Option<String>), ServiceError> {
    let d = s3_doc(body);
    if d.code.is_some() || d.error.is_some() || body.contains("<Error>") {
        return Err(doc_error(d));
    }
    Ok((
        d.etag.as_deref().map(unquote).unwrap_or_default(),
        text(d.checksum_sha256),
    ))
}

// ---------------------------------------------------------------------------------------------------
// IBM IAM, Key Protect, HPCS (JSON)

/// An IAM access token.
#[derive(Clone, PartialEq, Eq)]
pub struct IamToken {
    /// The bearer token.
    pub access_token: Zeroizing<String>,
    /// Lifetime in seconds (3600 when the response does not say).
    pub expires_in: u64,
    /// `expiration`: when it expires, in Unix seconds, if the response says.
    pub expiration: Option<u64>,
}

impl std::fmt::Debug for IamToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IamToken")
            .field("access_token", &"<redacted>")
            .field("expires_in", &self.expires_in)
            .field("expiration", &self.expiration)
            .finish()
    }
}

/// A `POST /identity/token` success body; `Err` says what is wrong with it.
pub fn iam_token(body: &str) -> Result<IamToken, String> {
    let v: Value =
        serde_json::from_str(body).map_err(|e| format!("token response is not JSON: {e}"))?;
    let token = v["access_token"]
        .as_str()
        .ok_or("no access_token in the token response")?;
    Ok(IamToken {
        access_token: Zeroizing::new(token.to_owned()),
        expires_in: v["expires_in"].as_u64().unwrap_or(3600),
        expiration: v["expiration"].as_u64(),
    })
}

/// An IAM error body: `errorCode`, `errorMessage`, `context.requestId`.
pub fn iam_error(body: &str) -> ServiceError {
    let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    ServiceError {
        reason: v["errorCode"].as_str().map(str::to_owned),
        message: v["errorMessage"].as_str().map(str::to_owned),
        request_id: v["context"]["requestId"].as_str().map(str::to_owned),
    }
}

/// A Key Protect / HPCS key-action response (wrap, unwrap, rewrap).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct KeyAction {
    /// `ciphertext`: the WDEK (wrap, rewrap; unwrap when it rewrapped with a newer key version).
    pub ciphertext: Option<String>,
    /// `plaintext`, base64-decoded (unwrap; wrap when the KMS generated the key); `Err` when not base64.
    pub plaintext: Option<Result<Zeroizing<Vec<u8>>, ()>>,
    /// `keyVersion.id`: the root key version used.
    pub key_version: Option<String>,
    /// `rewrappedKeyVersion.id`: the version a rewrap used.
    pub rewrapped_key_version: Option<String>,
}

impl std::fmt::Debug for KeyAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyAction")
            .field("ciphertext", &self.ciphertext)
            .field("plaintext", &self.plaintext.as_ref().map(|_| "<redacted>"))
            .field("key_version", &self.key_version)
            .field("rewrapped_key_version", &self.rewrapped_key_version)
            .finish()
    }
}

fn base64_secret(text: &str) -> Result<Zeroizing<Vec<u8>>, ()> {
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .map(Zeroizing::new)
        .map_err(|_| ())
}

/// A key-action success body; `Err` when it is not JSON.
pub fn kp_key_action(body: &str) -> Result<KeyAction, String> {
    let v: Value = serde_json::from_str(body).map_err(|e| format!("not JSON: {e}"))?;
    Ok(KeyAction {
        ciphertext: v["ciphertext"].as_str().map(str::to_owned),
        plaintext: v["plaintext"].as_str().map(base64_secret),
        key_version: v["keyVersion"]["id"].as_str().map(str::to_owned),
        rewrapped_key_version: v["rewrappedKeyVersion"]["id"].as_str().map(str::to_owned),
    })
}

/// The documented Key Protect error body: `resources[0].reasons[0].{code,message,moreInfo}`, else
/// The `crn` of the key in a Key Protect `GET /api/v2/keys/{id}` answer (`resources[0].crn`).
pub fn kp_key_crn(body: &str) -> Option<String> {
    let v: Value = serde_json::from_str(body).ok()?;
    v["resources"][0]["crn"].as_str().map(str::to_owned)
}

/// `resources[0].errorMsg`; the message ends with "; see MOREINFO" when there is one.
pub fn kp_error(body: &str) -> ServiceError {
    let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let res = &v["resources"][0];
    let reason = &res["reasons"][0];
    let message = reason["message"]
        .as_str()
        .or_else(|| res["errorMsg"].as_str())
        .map(|m| match reason["moreInfo"].as_str() {
            Some(more) => format!("{m}; see {more}"),
            None => m.to_owned(),
        });
    ServiceError {
        reason: reason["code"].as_str().map(str::to_owned),
        message,
        request_id: None,
    }
}

// ---------------------------------------------------------------------------------------------------
// AWS KMS (JSON 1.1)

/// An AWS KMS success body (Encrypt, Decrypt, ReEncrypt, GenerateDataKey).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct AwsKmsReply {
    /// `CiphertextBlob` (base64).
    pub ciphertext_blob: Option<String>,
    /// `Plaintext`, base64-decoded; `Err` when not base64.
    pub plaintext: Option<Result<Zeroizing<Vec<u8>>, ()>>,
    /// `KeyId` (the key ARN).
    pub key_id: Option<String>,
}

impl std::fmt::Debug for AwsKmsReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsKmsReply")
            .field("ciphertext_blob", &self.ciphertext_blob)
            .field("plaintext", &self.plaintext.as_ref().map(|_| "<redacted>"))
            .field("key_id", &self.key_id)
            .finish()
    }
}

/// An AWS KMS success body; `Err` when it is not JSON.
pub fn aws_kms_reply(body: &str) -> Result<AwsKmsReply, String> {
    let v: Value = serde_json::from_str(body).map_err(|e| format!("not JSON: {e}"))?;
    Ok(AwsKmsReply {
        ciphertext_blob: v["CiphertextBlob"].as_str().map(str::to_owned),
        plaintext: v["Plaintext"].as_str().map(base64_secret),
        key_id: v["KeyId"].as_str().map(str::to_owned),
    })
}

/// An AWS KMS error: JSON `__type` (without its namespace) and `message`/`Message`, or an XML
/// `Code`/`Message`/`RequestId` (gateways and proxies).
pub fn aws_kms_error(body: &str) -> ServiceError {
    let Ok(v) = serde_json::from_str::<Value>(body) else {
        return s3_error(body);
    };
    ServiceError {
        reason: v["__type"]
            .as_str()
            .map(|t| t.rsplit('#').next().unwrap_or(t).to_owned()),
        message: v["message"]
            .as_str()
            .or_else(|| v["Message"].as_str())
            .map(str::to_owned),
        request_id: None,
    }
}

// ---------------------------------------------------------------------------------------------------
// IBM VPC and SoftLayer image import (JSON)

/// An image id and, for classic, its global identifier.
pub type ImageRef = (String, Option<String>);

/// A VPC error body: `errors[0].{code,message}`, `trace`.
pub fn vpc_error(body: &str) -> ServiceError {
    let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    ServiceError {
        reason: v["errors"][0]["code"].as_str().map(str::to_owned),
        message: v["errors"][0]["message"].as_str().map(str::to_owned),
        request_id: v["trace"].as_str().map(str::to_owned),
    }
}

/// A SoftLayer error body: `code`, `error`.
pub fn softlayer_error(body: &str) -> ServiceError {
    let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    ServiceError {
        reason: v["code"].as_str().map(str::to_owned),
        message: v["error"].as_str().map(str::to_owned),
        request_id: None,
    }
}

/// A VPC image: `status` and `status_reasons[].{code,message}`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VpcImage {
    /// `id` (empty when absent).
    pub id: String,
    /// `status` (empty when absent).
    pub status: String,
    /// `status_reasons` as (code, message).
    pub reasons: Vec<(String, String)>,
}

/// A VPC image body (`POST /v1/images`, `GET /v1/images/{id}`); `Err` when it is not JSON.
pub fn vpc_image(body: &str) -> Result<VpcImage, String> {
    let v: Value = serde_json::from_str(body).map_err(|e| format!("not JSON: {e}"))?;
    let reasons = reasons(&v);
    Ok(VpcImage {
        id: v["id"].as_str().unwrap_or("").to_owned(),
        status: v["status"].as_str().unwrap_or("").to_owned(),
        reasons,
    })
}

/// From a VPC `GET /v1/images` body, the id of the image named `name` encrypted under `key_crn`.
pub fn vpc_image_named(body: &str, name: &str, key_crn: &str) -> Option<ImageRef> {
    let v: Value = serde_json::from_str(body).ok()?;
    v["images"].as_array()?.iter().find_map(|i| {
        let hit = i["name"].as_str() == Some(name)
            && i["encryption_key"]["crn"].as_str() == Some(key_crn);
        hit.then(|| i["id"].as_str().map(|id| (id.to_owned(), None)))
            .flatten()
    })
}

/// A SoftLayer `createFromIcos` answer: the template id and global identifier; `Err` says what is
/// missing.
pub fn softlayer_created(body: &str) -> Result<ImageRef, String> {
    let v: Value = serde_json::from_str(body).map_err(|e| format!("not JSON: {e}"))?;
    let id = v["id"].as_u64().ok_or("no id")?;
    Ok((
        id.to_string(),
        v["globalIdentifier"].as_str().map(str::to_owned),
    ))
}

/// A SoftLayer image template as `getObject` with the import mask shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SoftLayerTemplate {
    /// A transaction runs on the template or one of its children.
    pub busy: bool,
    /// `status.keyName`.
    pub status: Option<String>,
    /// `status.description`.
    pub description: Option<String>,
    /// `transaction.transactionStatus.friendlyName`.
    pub transaction: Option<String>,
}

impl SoftLayerTemplate {
    /// The status key when it names a failure (`...FAIL...` or `ERROR`).
    pub fn failed(&self) -> Option<&str> {
        self.status
            .as_deref()
            .filter(|k| k.contains("FAIL") || *k == "ERROR")
    }
}

/// A `getObject` body (anything that is not a JSON object reads as an empty template).
pub fn softlayer_template(body: &str) -> SoftLayerTemplate {
    let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let children = v["children"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    let running = |t: &Value| t.get("transaction").is_some_and(|t| !t.is_null());
    SoftLayerTemplate {
        busy: running(&v) || children.iter().any(running),
        status: v["status"]["keyName"].as_str().map(str::to_owned),
        description: v["status"]["description"].as_str().map(str::to_owned),
        transaction: v["transaction"]["transactionStatus"]["friendlyName"]
            .as_str()
            .map(str::to_owned),
    }
}

/// From a SoftLayer template list (`getBlockDeviceTemplateGroups`), the one named `name` with `note`.
pub fn softlayer_template_named(body: &str, name: &str, note: &str) -> Option<ImageRef> {
    let v: Value = serde_json::from_str(body).ok()?;
    v.as_array()?.iter().find_map(|t| {
        let hit = t["name"].as_str() == Some(name) && t["note"].as_str() == Some(note);
        hit.then(|| {
            t["id"].as_u64().map(|id| {
                (
                    id.to_string(),
                    t["globalIdentifier"].as_str().map(str::to_owned),
                )
            })
        })
        .flatten()
    })
}

// ---------------------------------------------------------------------------------------------------
// IBM VPC instances and SoftLayer virtual guests (JSON)

/// A VPC instance (`POST /v1/instances`, `GET /v1/instances/{id}`), as far as the agent reads it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VpcInstance {
    /// `id` (empty when absent).
    pub id: String,
    /// `name`.
    pub name: String,
    /// `status` (`pending`, `starting`, `running`, `failed`, ...; empty when absent).
    pub status: String,
    /// `status_reasons` as (code, message).
    pub reasons: Vec<(String, String)>,
    /// `image.id`.
    pub image_id: Option<String>,
    /// The primary IP: `primary_network_interface.primary_ip.address`, else the network attachment's,
    /// else the older `primary_ipv4_address`.
    pub primary_ip: Option<String>,
    /// `boot_volume_attachment.volume.id`.
    pub boot_volume_id: Option<String>,
}

/// `status_reasons[].{code,message}` of a VPC image or instance, as (code, message).
fn reasons(v: &Value) -> Vec<(String, String)> {
    v["status_reasons"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|r| {
                    (
                        r["code"].as_str().unwrap_or("?").to_owned(),
                        r["message"].as_str().unwrap_or("").to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn string(v: &Value) -> Option<String> {
    v.as_str().map(str::to_owned)
}

fn vpc_instance_of(v: &Value) -> VpcInstance {
    VpcInstance {
        id: v["id"].as_str().unwrap_or("").to_owned(),
        name: v["name"].as_str().unwrap_or("").to_owned(),
        status: v["status"].as_str().unwrap_or("").to_owned(),
        reasons: reasons(v),
        image_id: string(&v["image"]["id"]),
        primary_ip: string(&v["primary_network_interface"]["primary_ip"]["address"])
            .or_else(|| string(&v["primary_network_attachment"]["primary_ip"]["address"]))
            .or_else(|| string(&v["primary_network_interface"]["primary_ipv4_address"])),
        boot_volume_id: string(&v["boot_volume_attachment"]["volume"]["id"]),
    }
}

/// A VPC instance body; `Err` when it is not JSON.
pub fn vpc_instance(body: &str) -> Result<VpcInstance, String> {
    let v: Value = serde_json::from_str(body).map_err(|e| format!("not JSON: {e}"))?;
    Ok(vpc_instance_of(&v))
}

/// The instances of a `GET /v1/instances` page (`instances[]`); nothing when it is not one.
pub fn vpc_instances(body: &str) -> Vec<VpcInstance> {
    let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    v["instances"]
        .as_array()
        .map(|a| a.iter().map(vpc_instance_of).collect())
        .unwrap_or_default()
}

/// The root key CRN of a VPC volume (`GET /v1/volumes/{id}`: `encryption_key.crn`).
pub fn vpc_volume_key(body: &str) -> Option<String> {
    let v: Value = serde_json::from_str(body).ok()?;
    string(&v["encryption_key"]["crn"])
}

/// A SoftLayer virtual guest as `getObject` / `getVirtualGuests` show it with the agent's mask.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SoftLayerGuest {
    /// `id` (0 when absent).
    pub id: u64,
    /// `hostname`, `domain`, `fullyQualifiedDomainName`.
    pub hostname: String,
    /// The domain.
    pub domain: String,
    /// The fully qualified domain name.
    pub fqdn: String,
    /// `blockDeviceTemplateGroup.globalIdentifier`: the image template it was made from.
    pub template: Option<String>,
    /// `provisionDate` is set.
    pub provisioned: bool,
    /// An `activeTransaction` runs; its `transactionStatus` friendly name or name.
    pub transaction: Option<String>,
    /// `powerState.keyName` (`RUNNING`, `HALTED`).
    pub power: String,
    /// `status.keyName` (`ACTIVE`, `DISCONNECTED`, ...).
    pub status: String,
    /// `primaryIpAddress`, else `primaryBackendIpAddress`.
    pub primary_ip: Option<String>,
}

impl SoftLayerGuest {
    /// What `wait_for_ready` reads as ready (a provision date, no transaction), and powered on.
    pub fn ready(&self) -> bool {
        self.provisioned && self.transaction.is_none() && self.power == "RUNNING"
    }
}

fn softlayer_guest_of(g: &Value) -> SoftLayerGuest {
    let tx = &g["activeTransaction"];
    SoftLayerGuest {
        id: g["id"].as_u64().unwrap_or(0),
        hostname: g["hostname"].as_str().unwrap_or("").to_owned(),
        domain: g["domain"].as_str().unwrap_or("").to_owned(),
        fqdn: g["fullyQualifiedDomainName"]
            .as_str()
            .unwrap_or("")
            .to_owned(),
        template: string(&g["blockDeviceTemplateGroup"]["globalIdentifier"]),
        provisioned: g["provisionDate"].is_string(),
        transaction: tx.is_object().then(|| {
            string(&tx["transactionStatus"]["friendlyName"])
                .or_else(|| string(&tx["transactionStatus"]["name"]))
                .unwrap_or_else(|| "a transaction".into())
        }),
        power: g["powerState"]["keyName"].as_str().unwrap_or("").to_owned(),
        status: g["status"]["keyName"].as_str().unwrap_or("").to_owned(),
        primary_ip: string(&g["primaryIpAddress"])
            .or_else(|| string(&g["primaryBackendIpAddress"])),
    }
}

/// A `getObject` body of a virtual guest (anything else reads as an empty guest).
pub fn softlayer_guest(body: &str) -> SoftLayerGuest {
    softlayer_guest_of(&serde_json::from_str(body).unwrap_or(Value::Null))
}

/// The guests of a `getVirtualGuests` answer; nothing when it is not a list.
pub fn softlayer_guests(body: &str) -> Vec<SoftLayerGuest> {
    let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    v.as_array()
        .map(|a| a.iter().map(softlayer_guest_of).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_bodies() {
        let page = s3_list_parts(
            "<ListPartsResult><IsTruncated>true</IsTruncated><NextPartNumberMarker>2</NextPartNumberMarker>\
             <Part><PartNumber>1</PartNumber><ETag>&quot;aa&quot;</ETag></Part><Part><PartNumber>2</PartNumber></Part></ListPartsResult>",
        );
        assert_eq!(page.parts[&1], "aa");
        assert_eq!(page.parts[&2], "");
        assert_eq!(page.next_marker, Some(2));
        let e = s3_complete("<Error><Code>InternalError</Code><Message>m</Message></Error>");
        assert_eq!(e.unwrap_err().reason.as_deref(), Some("InternalError"));
        assert_eq!(
            s3_initiate("<InitiateMultipartUploadResult><UploadId> u1 </UploadId></InitiateMultipartUploadResult>").as_deref(),
            Some("u1")
        );
        // A namespace, an attribute, entities and a CDATA section, which a search for tags misreads.
        let ok = s3_complete(
            "<?xml version=\"1.0\"?><CompleteMultipartUploadResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">\
             <Location>http://h/b/k?a=1&amp;b=2</Location><ETag>&quot;abc-2&quot;</ETag>\
             <ChecksumSHA256><![CDATA[c2hh-2]]></ChecksumSHA256></CompleteMultipartUploadResult>",
        )
        .unwrap();
        assert_eq!(ok, ("abc-2".to_owned(), Some("c2hh-2".to_owned())));
        let nested = s3_error(
            "<ErrorResponse><Error><Code>SignatureDoesNotMatch</Code><Message>m</Message></Error><RequestId>r-1</RequestId></ErrorResponse>",
        );
        assert_eq!(
            (nested.reason.as_deref(), nested.request_id.as_deref()),
            (Some("SignatureDoesNotMatch"), Some("r-1"))
        );
    }

    #[test]
    fn servers() {
        let i = vpc_instance(
            r#"{"id":"0717_1","name":"vm","status":"running","image":{"id":"r006-i"},
                "primary_network_attachment":{"primary_ip":{"address":"10.0.0.5"}},
                "boot_volume_attachment":{"volume":{"id":"r006-v"}}}"#,
        )
        .unwrap();
        assert_eq!(
            (
                i.primary_ip.as_deref(),
                i.boot_volume_id.as_deref(),
                i.image_id.as_deref()
            ),
            (Some("10.0.0.5"), Some("r006-v"), Some("r006-i"))
        );
        assert!(vpc_instance("[").is_err());
        assert_eq!(
            vpc_instances(r#"{"instances":[{"id":"a"},{"id":"b"}]}"#).len(),
            2
        );
        assert_eq!(
            vpc_volume_key(r#"{"encryption_key":{"crn":"crn:k"}}"#).as_deref(),
            Some("crn:k")
        );
        let busy = softlayer_guest(
            r#"{"id":7,"provisionDate":"d","powerState":{"keyName":"RUNNING"},"activeTransaction":{"id":1}}"#,
        );
        assert_eq!(
            (busy.transaction.as_deref(), busy.ready()),
            (Some("a transaction"), false)
        );
        let ready = softlayer_guest(
            r#"{"id":7,"provisionDate":"d","powerState":{"keyName":"RUNNING"},"primaryBackendIpAddress":"10.1.1.1"}"#,
        );
        assert!(ready.ready() && ready.primary_ip.as_deref() == Some("10.1.1.1"));
        assert!(!softlayer_guest("null").ready());
    }

    #[test]
    fn secrets_stay_out_of_debug() {
        let t = iam_token(r#"{"access_token":"tok-secret","expires_in":60}"#).unwrap();
        assert!(!format!("{t:?}").contains("tok-secret"));
        let k = kp_key_action(r#"{"plaintext":"c2VjcmV0"}"#).unwrap();
        assert_eq!(
            k.plaintext.as_ref().unwrap().as_ref().unwrap().as_slice(),
            b"secret"
        );
        assert!(!format!("{k:?}").contains("c2VjcmV0"));
    }
}
