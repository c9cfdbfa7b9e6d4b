//! `provision`: order a server from the imported encrypted image, the seed procedure's last step, as
//! IBM's official clients order it (the contract tests hold the requests against ibm-vpc and
//! softlayer-python):
//!
//! - [`vpc`]: names resolved to ids with the VPC list calls, `POST /v1/instances` with the image as
//!   the boot source, polling `GET /v1/instances/{id}` to `running`, then the boot volume's root key
//!   from `GET /v1/volumes/{id}`;
//! - [`classic`]: `SoftLayer_Virtual_Guest::createObject` with the template's global identifier, a
//!   quote from `generateOrderTemplate` + `SoftLayer_Product_Order::verifyOrder`, polling `getObject`
//!   until the guest is provisioned, runs and has no active transaction.
//!
//! Ordering costs money, so a server is never ordered twice: [`Provisioner::find`] looks the server up
//! by name (VPC instance name, classic hostname and domain) before every order and adopts one made
//! from the same image; an order whose answer was lost is looked up before it is sent again. The
//! caller asks for confirmation between [`Provisioner::prepare`] (which sends nothing that costs) and
//! [`Provisioner::create`]. [`plan`] is the dry run. Nothing here prints.

pub mod classic;
pub mod vpc;

use std::time::Duration;

use serde_json::Value;

use crate::cloud::Client;
use crate::error::{Error, Result};
use crate::http::RetryPolicy;
use crate::import::Cloud;
use crate::secret::SecretString;

/// What to order. VPC uses `profile`, `zone`, `vpc`, `subnet`, `boot_volume_key`; classic uses
/// `domain`, `datacenter`, `cpus`, `memory_mb`, `monthly`, `network_speed`, `post_install`, `san`.
#[derive(Debug, Clone, Default)]
pub struct Order {
    /// VPC: the image's id or name; classic: the image template's global identifier.
    pub image: String,
    /// VPC instance name (default: the image's name) / classic hostname (required).
    pub name: Option<String>,
    /// SSH keys: VPC key ids or names; classic key ids or labels.
    pub keys: Vec<String>,
    /// User data (cloud-init), from a file. It may hold secrets: never logged or printed.
    pub user_data: Option<SecretString>,
    /// VPC instance profile, e.g. `bx2-2x8`.
    pub profile: Option<String>,
    /// VPC zone, e.g. `us-south-1` (default: the subnet's).
    pub zone: Option<String>,
    /// VPC id or name (default: the subnet's).
    pub vpc: Option<String>,
    /// VPC subnet id or name.
    pub subnet: Option<String>,
    /// VPC: the root key CRN for the boot volume (default: the image's own root key).
    pub boot_volume_key: Option<String>,
    /// Classic domain.
    pub domain: Option<String>,
    /// Classic datacenter, e.g. `dal13`.
    pub datacenter: Option<String>,
    /// Classic CPUs.
    pub cpus: Option<u32>,
    /// Classic memory in MB.
    pub memory_mb: Option<u64>,
    /// Classic: monthly billing instead of hourly.
    pub monthly: bool,
    /// Classic network port speed (Mbps).
    pub network_speed: Option<u32>,
    /// Classic post-install script URI.
    pub post_install: Option<String>,
    /// Classic: SAN instead of local disk.
    pub san: bool,
}

/// Where and how to order.
#[derive(Debug, Clone)]
pub struct Settings {
    /// VPC or classic.
    pub cloud: Cloud,
    /// VPC or SoftLayer base URL.
    pub endpoint: String,
    /// IAM base URL (VPC).
    pub iam_endpoint: String,
    /// The IBM Cloud API key.
    pub api_key: SecretString,
    /// What to order.
    pub order: Order,
    /// Time between status polls.
    pub poll: Duration,
    /// Give up waiting for the server after this long.
    pub timeout: Duration,
    /// Retries for each request.
    pub retry: RetryPolicy,
}

/// An order ready to send: ids resolved, checked, priced where the cloud says.
#[derive(Clone)]
pub struct Prepared {
    /// The VPC instance name / classic hostname.
    pub name: String,
    /// Classic domain (empty for VPC).
    pub domain: String,
    /// The image id (VPC) or template global identifier (classic).
    pub image_id: String,
    /// What will be ordered, for the confirmation and the audit log: (what, value) rows.
    pub summary: Vec<(String, String)>,
    /// Remarks that do not stop the order.
    pub warnings: Vec<String>,
    /// The create request's body.
    body: Value,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the body: it holds the user data.
        f.debug_struct("Prepared")
            .field("name", &self.name)
            .field("image_id", &self.image_id)
            .field("summary", &self.summary)
            .finish_non_exhaustive()
    }
}

impl Prepared {
    /// The summary as `what: value` lines.
    pub fn summary_lines(&self) -> Vec<String> {
        self.summary
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect()
    }

    /// The summary as a JSON object (for `--json` and the audit log).
    pub fn summary_json(&self) -> Value {
        Value::Object(
            self.summary
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect(),
        )
    }
}

/// A server that runs.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Provisioned {
    /// The VPC instance id or classic guest id.
    pub id: String,
    /// Its name (VPC) or fully qualified domain name (classic).
    pub name: String,
    /// Final status (`running`, classic `RUNNING`).
    pub status: String,
    /// The primary IP address (classic: the public one, else the private one).
    pub primary_ip: Option<String>,
    /// VPC: the CRN of the root key that protects the boot volume.
    pub boot_volume_key: Option<String>,
    /// True when the server existed already (found by name) and was adopted, not ordered.
    pub adopted: bool,
    /// Status polls made.
    pub polls: u32,
}

/// A signed-in orderer.
pub struct Provisioner {
    s: Settings,
    c: Client,
}

impl std::fmt::Debug for Provisioner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provisioner")
            .field("endpoint", &self.c.label())
            .finish_non_exhaustive()
    }
}

impl Provisioner {
    /// Signs in (VPC: fetches the first IAM token).
    pub fn connect(s: Settings) -> Result<Provisioner> {
        let c = Client::new(
            s.cloud,
            &s.endpoint,
            &s.iam_endpoint,
            s.api_key.clone(),
            s.retry,
        )?;
        Ok(Provisioner { s, c })
    }

    /// Resolves names to ids and checks the order (classic: `verifyOrder`, which also prices it).
    /// Nothing that costs money is sent.
    pub fn prepare(&self) -> Result<Prepared> {
        match self.s.cloud {
            Cloud::Vpc => vpc::prepare(&self.c, &self.s.order),
            Cloud::Classic => classic::prepare(&self.c, &self.s.order),
        }
    }

    /// The server named as `p` names it, made from `p`'s image, if one exists (to adopt instead of
    /// ordering again); an error when the name is taken by a server from another image.
    pub fn find(&self, p: &Prepared) -> Result<Option<String>> {
        match self.s.cloud {
            Cloud::Vpc => vpc::find(&self.c, p),
            Cloud::Classic => classic::find(&self.c, p),
        }
    }

    /// Places the order and returns the new server's id. After a failure that leaves it unknown
    /// whether the order went through, the server is looked up by name and adopted if it exists,
    /// else the order is sent again, up to the retry policy's attempts.
    pub fn create(&self, p: &Prepared) -> Result<String> {
        let once = RetryPolicy {
            max_attempts: 1,
            ..self.s.retry
        };
        let mut attempt = 1;
        loop {
            let r = match self.s.cloud {
                Cloud::Vpc => vpc::create(&self.c, &once, p),
                Cloud::Classic => classic::create(&self.c, &once, p),
            };
            match r {
                Err(e)
                    if crate::import::uncertain(self.s.cloud, &e)
                        && attempt < self.s.retry.max_attempts =>
                {
                    std::thread::sleep(crate::http::backoff(&self.s.retry, attempt + 1));
                    if let Some(id) = self.find(p)? {
                        return Ok(id);
                    }
                    attempt += 1;
                }
                r => return r,
            }
        }
    }

    /// Polls the server `id` until it runs (or failed, or the timeout passed).
    pub fn wait(&self, id: &str) -> Result<Provisioned> {
        match self.s.cloud {
            Cloud::Vpc => vpc::wait(&self.c, id, self.s.poll, self.s.timeout),
            Cloud::Classic => classic::wait(&self.c, id, self.s.poll, self.s.timeout),
        }
    }
}

/// What [`run`] tells its caller as it goes, to be shown or recorded before it goes on.
#[derive(Debug, Clone, Copy)]
pub enum Step<'a> {
    /// The order is resolved and checked (its warnings are the caller's to show).
    Prepared(&'a Prepared),
    /// The order is about to be sent.
    Sending,
    /// The server exists (ordered now, or found by name and adopted); polling starts next.
    Created(&'a str, bool),
}

/// What the operator said to an order (see [`run`]'s `confirm`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Order it.
    Yes,
    /// Do not: the reason goes to the error and the audit log.
    Refused(String),
}

/// The audit target type of a server.
fn target_type(cloud: Cloud) -> &'static str {
    match cloud {
        Cloud::Vpc => "is/instance",
        Cloud::Classic => "softlayer/virtual-guest",
    }
}

fn target_name(cloud: Cloud) -> &'static str {
    match cloud {
        Cloud::Vpc => "ibm-vpc",
        Cloud::Classic => "ibm-classic",
    }
}

fn reason_code(r: &std::result::Result<impl Sized, &Error>) -> u16 {
    match r {
        Ok(_) => 200,
        Err(Error::Remote(k)) => k.reason_code(),
        Err(_) => 0,
    }
}

/// A whole provision: connect, resolve and check ([`Provisioner::prepare`]), then (unless
/// `verify_only`) adopt the server `known` names (an id recorded by an earlier run) or the one
/// [`Provisioner::find`] finds, else ask `confirm` and order it, and wait until it runs. `record` is
/// told each [`Step`] before the next request, so a caller that saves them never orders twice. Every
/// step is audited to `l`'s log, failures and refusals included. Returns the prepared order and, unless
/// `verify_only`, the running server.
pub fn run(
    l: &crate::config::Layers,
    s: Settings,
    verify_only: bool,
    known: Option<String>,
    confirm: &mut dyn FnMut(&Prepared) -> Answer,
    record: &mut dyn FnMut(Step<'_>) -> Result<()>,
    image_sha256: Option<String>,
) -> Result<(Prepared, Option<Provisioned>)> {
    use crate::audit::{Event, log};
    use serde_json::json;
    let cloud = s.cloud;
    let t = target_name(cloud);
    let ev =
        |action: &str, r: std::result::Result<(), &Error>, target: &str, details: Value| Event {
            action: format!("diskseal.instance.{action}.{t}"),
            outcome: match r {
                Ok(()) => crate::audit::Outcome::Success,
                Err(Error::Refused(_)) => crate::audit::Outcome::Refused,
                Err(_) => crate::audit::Outcome::Failure,
            },
            credential: "apikey".into(),
            reason_code: reason_code(&r),
            failure: r.err().map(ToString::to_string),
            target_id: target.to_owned(),
            target_type: target_type(cloud).into(),
            image_sha256: image_sha256.clone(),
            details,
            ..Event::default()
        };
    let image = s.order.image.clone();
    let endpoint = s.endpoint.clone();
    let prepared = Provisioner::connect(s).and_then(|pv| pv.prepare().map(|p| (pv, p)));
    let (pv, p) = match prepared {
        Ok(x) => x,
        Err(e) => {
            log(
                l,
                ev(
                    "verify",
                    Err(&e),
                    &image,
                    json!({"endpoint": endpoint, "image": image}),
                ),
            )?;
            return Err(e);
        }
    };
    record(Step::Prepared(&p))?;
    let summary = p.summary_json();
    log(
        l,
        ev(
            "verify",
            Ok(()),
            &p.name,
            json!({"endpoint": endpoint, "order": summary}),
        ),
    )?;
    if verify_only {
        return Ok((p, None));
    }
    let found = match known {
        Some(id) => Ok(Some(id)),
        None => pv.find(&p),
    };
    let found = match found {
        Ok(f) => f,
        Err(e) => {
            log(
                l,
                ev(
                    "order",
                    Err(&e),
                    &p.name,
                    json!({"endpoint": endpoint, "order": summary}),
                ),
            )?;
            return Err(e);
        }
    };
    let adopted = found.is_some();
    let id = match found {
        Some(id) => id,
        None => {
            if let Answer::Refused(why) = confirm(&p) {
                let e = Error::Refused(format!("provision: refused: {why}; nothing was ordered"));
                log(
                    l,
                    ev(
                        "order",
                        Err(&e),
                        &p.name,
                        json!({"endpoint": endpoint, "order": summary, "refused": true}),
                    ),
                )?;
                return Err(e);
            }
            record(Step::Sending)?;
            let r = pv.create(&p);
            log(
                l,
                ev(
                    "order",
                    r.as_ref().map(|_| ()),
                    &p.name,
                    json!({"endpoint": endpoint, "order": summary, "id": r.as_ref().ok()}),
                ),
            )?;
            r?
        }
    };
    record(Step::Created(&id, adopted))?;
    let r = pv.wait(&id).map(|mut d| {
        d.adopted = adopted;
        d
    });
    log(
        l,
        ev(
            "provision",
            r.as_ref().map(|_| ()),
            &p.name,
            json!({"endpoint": endpoint, "id": id, "adopted": adopted, "primary_ip": r.as_ref().ok().and_then(|d| d.primary_ip.clone()), "boot_volume_key": r.as_ref().ok().and_then(|d| d.boot_volume_key.clone())}),
        ),
    )?;
    Ok((p, Some(r?)))
}

/// The dry run: every request a provision would send, one per line, secrets redacted (the API key,
/// the user data). Nothing is sent: names that would be resolved are shown as such.
pub fn plan(s: &Settings, iam_endpoint: &str) -> Result<Vec<String>> {
    match s.cloud {
        Cloud::Vpc => vpc::plan(s, iam_endpoint),
        Cloud::Classic => classic::plan(s),
    }
}

/// What the user data looks like in a dry run or the audit log.
pub(crate) fn redacted_user_data(u: &str) -> String {
    format!("<user data: {} bytes, redacted>", u.len())
}

/// A failure of the order in the cloud (not the service's own error).
pub(crate) fn bad(m: String) -> Error {
    Error::Provision(m)
}

/// An order stopped by a check before anything was ordered (a missing flag, a name that resolves to
/// nothing, an image not available, a name taken by another server).
pub(crate) fn refuse(m: String) -> Error {
    Error::Refused(format!("provision: {m}"))
}

/// The value of `key` in a URL's query (`next.href` of a VPC page).
pub(crate) fn query_value(url: &str, key: &str) -> Option<String> {
    let q = url.split_once('?')?.1;
    q.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| v.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_data_stays_out_of_debug() {
        let o = Order {
            user_data: Some(SecretString::new("password: hunter2".into())),
            ..Order::default()
        };
        assert!(!format!("{o:?}").contains("hunter2"));
        let p = Prepared {
            name: "vm".into(),
            domain: String::new(),
            image_id: "i".into(),
            summary: Vec::new(),
            warnings: Vec::new(),
            body: serde_json::json!({"user_data": "password: hunter2"}),
        };
        assert!(!format!("{p:?}").contains("hunter2"));
    }

    #[test]
    fn next_page_start_is_read_from_the_href() {
        assert_eq!(
            query_value(
                "https://us-south.iaas.cloud.ibm.com/v1/vpcs?limit=100&start=abc",
                "start"
            )
            .as_deref(),
            Some("abc")
        );
        assert_eq!(query_value("https://x/v1/vpcs", "start"), None);
    }
}
