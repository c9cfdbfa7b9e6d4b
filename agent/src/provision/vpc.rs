//! VPC instances from an encrypted image (ibm-vpc's `create_instance` with an
//! `InstancePrototypeInstanceByImage...ByNetworkInterface`): names resolved with `list_images(name=)`
//! (then `get_image`), `list_vpcs`, `list_subnets`, `list_keys` and `list_instance_profiles`; the
//! instance looked up with `list_instances(name=)`; polled with `get_instance`; the boot volume read
//! with `get_volume`.
//!
//! The boot volume of an instance made from an encrypted image is always encrypted with a root key
//! of the customer (VPC `Image.encryption_key`: "the key that will be used to encrypt volumes created
//! from this image (unless an alternate `encryption_key` is specified at volume creation)"):
//! `--boot-volume-key` names another root key, sent as `boot_volume_attachment.volume.encryption_key`
//! (a volume prototype needs a `profile`: `general-purpose`). Block Storage must be authorised in IAM
//! to read that key, else the order is refused.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{Order, Prepared, Provisioned, Settings, bad, query_value, redacted_user_data, refuse};
use crate::cloud::Client;
use crate::error::{Error, Result};
use crate::http::RetryPolicy;
use crate::import::VPC_API_VERSION;
use crate::s3::uri_encode;
use crate::wire;

/// The boot volume profile sent with `--boot-volume-key`.
pub const BOOT_VOLUME_PROFILE: &str = "general-purpose";
/// Page size of the list calls.
const LIMIT: u32 = 100;
/// At most this many pages are read from a list.
const MAX_PAGES: usize = 50;

fn q() -> String {
    format!("version={VPC_API_VERSION}&generation=2")
}

/// Every item of a VPC collection (`GET /v1/{path}?limit=100[&extra]`, following `next.href`'s
/// `start`), `items` naming the array (`vpcs`, `subnets`, ...).
fn list(c: &Client, path: &str, extra: &str, items: &str) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    let mut start: Option<String> = None;
    for _ in 0..MAX_PAGES {
        let mut url = format!("{}/v1/{path}?{}&limit={LIMIT}{extra}", c.endpoint, q());
        if let Some(s) = &start {
            url.push_str(&format!("&start={s}"));
        }
        let v = c.get_json(&format!("GET /v1/{path}"), &url)?;
        out.extend(v[items].as_array().cloned().unwrap_or_default());
        start = v["next"]["href"]
            .as_str()
            .and_then(|h| query_value(h, "start"));
        if start.is_none() {
            break;
        }
    }
    Ok(out)
}

/// The one item of `all` whose id or name is `want`; `what` names the kind in errors.
fn pick<'a>(all: &'a [Value], want: &str, what: &str, flag: &str) -> Result<&'a Value> {
    let by_id: Vec<&Value> = all.iter().filter(|v| v["id"] == want).collect();
    if let [one] = by_id[..] {
        return Ok(one);
    }
    let by_name: Vec<&Value> = all.iter().filter(|v| v["name"] == want).collect();
    match by_name[..] {
        [one] => Ok(one),
        [] => {
            let names: Vec<&str> = all.iter().filter_map(|v| v["name"].as_str()).collect();
            Err(refuse(format!(
                "no {what} with id or name {want:?} ({flag}); there are: {}",
                if names.is_empty() {
                    "none".to_owned()
                } else {
                    names.join(", ")
                }
            )))
        }
        _ => Err(refuse(format!(
            "{} {what}s are named {want:?} ({flag}): give its id",
            by_name.len()
        ))),
    }
}

fn s(v: &Value) -> String {
    v.as_str().unwrap_or("").to_owned()
}

/// The image `want` (id or name): `list_images(name=)`, then `get_image(id)`.
fn image(c: &Client, want: &str) -> Result<Value> {
    let by_name = list(
        c,
        "images",
        &format!("&name={}", uri_encode(want, true)),
        "images",
    )?;
    if let Some(i) = by_name.iter().find(|i| i["name"] == want) {
        return Ok(i.clone());
    }
    let url = format!(
        "{}/v1/images/{}?{}",
        c.endpoint,
        uri_encode(want, true),
        q()
    );
    let r = c.call("GET", &url, None)?;
    match r.status {
        200 => serde_json::from_str(&r.body).map_err(|e| bad(format!("image {want}: {e}"))),
        404 => Err(refuse(format!(
            "no image with id or name {want:?} in {} (--image): list them with `ibmcloud is images --visibility private`",
            c.endpoint
        ))),
        _ => Err(Error::Remote(c.error("GET /v1/images/{id}", &r))),
    }
}

/// Resolves the order's names and checks it before anything is ordered.
pub(super) fn prepare(c: &Client, o: &Order) -> Result<Prepared> {
    let profile = o
        .profile
        .as_deref()
        .ok_or_else(|| refuse("give --profile (e.g. bx2-2x8) for --target ibm-vpc".into()))?;
    let subnet_want = o
        .subnet
        .as_deref()
        .ok_or_else(|| refuse("give --subnet (id or name) for --target ibm-vpc".into()))?;
    let mut warnings = Vec::new();
    let img = image(c, &o.image)?;
    let image_id = s(&img["id"]);
    let image_name = s(&img["name"]);
    let status = s(&img["status"]);
    if status != "available" {
        let reasons: Vec<String> = img["status_reasons"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                let code = r["code"].as_str().unwrap_or("?");
                format!("{code} ({})", crate::import::explain(code))
            })
            .collect();
        return Err(refuse(format!(
            "image {image_name} ({image_id}) is {status}, not available{}: an instance can only boot from an available image{}",
            if reasons.is_empty() {
                String::new()
            } else {
                format!(": {}", reasons.join("; "))
            },
            if status == "pending" {
                " (the import is still running: wait for it, e.g. `diskseal-agent import` polls it)"
            } else {
                ""
            }
        )));
    }
    let image_key = img["encryption_key"]["crn"].as_str().map(str::to_owned);
    let encrypted = img["encryption"] == "user_managed" || image_key.is_some();
    if !encrypted {
        warnings.push(format!(
            "image {image_name} ({image_id}) is not encrypted (encryption {:?}): its boot volume will be encrypted by IBM's own keys only",
            img["encryption"].as_str().unwrap_or("none")
        ));
    }
    let vpc = match &o.vpc {
        Some(want) => Some(pick(&list(c, "vpcs", "", "vpcs")?, want, "VPC", "--vpc")?.clone()),
        None => None,
    };
    let extra = vpc
        .as_ref()
        .map(|v| format!("&vpc.id={}", uri_encode(&s(&v["id"]), true)))
        .unwrap_or_default();
    let subnets = list(c, "subnets", &extra, "subnets")?;
    let subnet = pick(&subnets, subnet_want, "subnet", "--subnet")?;
    let subnet_zone = s(&subnet["zone"]["name"]);
    let zone = o.zone.clone().unwrap_or_else(|| subnet_zone.clone());
    if zone != subnet_zone {
        return Err(refuse(format!(
            "subnet {} is in zone {subnet_zone}, not {zone}: an instance's subnet must be in its zone (give --zone {subnet_zone}, or a subnet of {zone})",
            s(&subnet["name"])
        )));
    }
    let vpc_id = vpc
        .as_ref()
        .map_or_else(|| s(&subnet["vpc"]["id"]), |v| s(&v["id"]));
    let profiles = list(c, "instance/profiles", "", "profiles")?;
    if !profiles.iter().any(|p| p["name"] == profile) {
        return Err(refuse(format!(
            "no instance profile {profile:?} in {} (--profile); there are: {}",
            c.endpoint,
            profiles
                .iter()
                .filter_map(|p| p["name"].as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let mut key_ids = Vec::new();
    if !o.keys.is_empty() {
        let all = list(c, "keys", "", "keys")?;
        for k in &o.keys {
            key_ids.push(s(&pick(&all, k, "SSH key", "--keys")?["id"]));
        }
    } else {
        warnings.push("no --keys: the instance will have no SSH key (reachable only by what the image itself allows)".into());
    }
    let name = o.name.clone().unwrap_or_else(|| image_name.clone());
    crate::import::check_vpc_name(&name)
        .map_err(|_| refuse(format!("instance name {name:?}: VPC names must match ^([a-z]|[a-z][-a-z0-9]*[a-z0-9])$, be at most 63 characters and not begin with ibm-; give --name")))?;
    let mut body = json!({
        "name": name,
        "image": {"id": image_id},
        "zone": {"name": zone},
        "profile": {"name": profile},
        "vpc": {"id": vpc_id},
        "primary_network_interface": {"subnet": {"id": s(&subnet["id"])}},
    });
    if !key_ids.is_empty() {
        body["keys"] = key_ids.iter().map(|k| json!({"id": k})).collect();
    }
    if let Some(u) = &o.user_data {
        body["user_data"] = json!(u.expose());
    }
    if let Some(crn) = &o.boot_volume_key {
        body["boot_volume_attachment"] = json!({"volume": {
            "profile": {"name": BOOT_VOLUME_PROFILE},
            "encryption_key": {"crn": crn},
        }});
    }
    let boot_key = match (&o.boot_volume_key, &image_key) {
        (Some(k), _) => k.clone(),
        (None, Some(k)) => format!("{k} (the image's root key)"),
        (None, None) => "none: provider-managed encryption".into(),
    };
    let summary = vec![
        ("target".into(), "ibm-vpc".into()),
        ("instance".into(), name.clone()),
        ("profile".into(), profile.to_owned()),
        ("zone".into(), zone),
        ("image".into(), format!("{image_name} ({image_id})")),
        ("boot volume key".into(), boot_key),
        ("vpc".into(), vpc_id),
        (
            "subnet".into(),
            format!("{} ({})", s(&subnet["name"]), s(&subnet["id"])),
        ),
        ("keys".into(), key_ids.join(", ")),
        (
            "billing".into(),
            format!(
                "hourly, while the instance exists (VPC has no monthly billing; the {profile} price per hour: https://cloud.ibm.com/vpc-ext/provision/vs)"
            ),
        ),
    ];
    Ok(Prepared {
        name,
        domain: String::new(),
        image_id,
        summary,
        warnings,
        body,
    })
}

/// The instance named `p.name`, if one exists: adopted when it boots `p`'s image, else an error
/// (instance names are unique per region).
pub(super) fn find(c: &Client, p: &Prepared) -> Result<Option<String>> {
    let all = list(
        c,
        "instances",
        &format!("&name={}", uri_encode(&p.name, true)),
        "instances",
    )?;
    let Some(i) = all
        .iter()
        .map(|i| wire::vpc_instance(&i.to_string()).unwrap_or_default())
        .find(|i| i.name == p.name)
    else {
        return Ok(None);
    };
    if i.image_id.as_deref() != Some(p.image_id.as_str()) {
        return Err(refuse(format!(
            "an instance named {:?} exists already ({}) and boots another image ({}): VPC instance names are unique per region; give another --name",
            p.name,
            i.id,
            i.image_id.as_deref().unwrap_or("unknown")
        )));
    }
    Ok(Some(i.id))
}

/// Explains a VPC error code of `POST /v1/instances` (what the agent knows of the ones that matter
/// for an encrypted image; the codes vary, so by the words in them).
pub fn explain_error(code: &str, status: u16) -> Option<&'static str> {
    let c = code.to_ascii_lowercase();
    Some(if c.contains("quota") || c.contains("limit_exceeded") {
        "the account's quota (instances, vCPUs or memory in the region) is used up: delete unused instances or ask IBM for a higher quota"
    } else if c.contains("profile") {
        "the profile is not available in this zone or to this account: list them with `ibmcloud is instance-profiles`; try another --zone or --profile"
    } else if c.contains("crn") || c.contains("encryption") || c.contains("kms") {
        "the boot volume's root key cannot be used: Block Storage must be authorised to read it (IAM authorization from Cloud Block Storage to the Key Protect / HPCS instance, role Reader), and the key must exist and be enabled"
    } else if c.contains("image") {
        "the image is not available (still importing, failed, deprecated, or in another region)"
    } else if status == 409 || c.contains("duplicate") || c.contains("conflict") {
        "VPC instance names are unique per region: give another --name"
    } else {
        return None;
    })
}

/// Sends the order once (`retry` without retries: a retry is the caller's, after a lookup).
pub(super) fn create(c: &Client, retry: &RetryPolicy, p: &Prepared) -> Result<String> {
    let url = format!("{}/v1/instances?{}", c.endpoint, q());
    let r = c.call_with(retry, "POST", &url, Some(&p.body))?;
    if r.status != 201 && r.status != 200 {
        let mut e = c.error("POST /v1/instances", &r);
        if let Some(x) = explain_error(e.code.as_deref().unwrap_or(""), r.status) {
            e.message.push_str(&format!(" ({x})"));
        }
        return Err(Error::Remote(e));
    }
    match wire::vpc_instance(&r.body) {
        Ok(i) if !i.id.is_empty() => Ok(i.id),
        _ => Err(bad(format!(
            "{}: no id in the instance response",
            c.label()
        ))),
    }
}

/// Explains a VPC instance `status_reasons` code.
pub fn explain_status(code: &str) -> &'static str {
    match code {
        "cannot_start_storage" => {
            "the boot volume could not be attached: often Block Storage is not authorised to read the root key, or the key is disabled"
        }
        "encryption_key_deleted" => "the boot volume's root key was deleted",
        "cannot_start_capacity" | "cannot_start_compute" => {
            "no capacity for this profile in this zone now: try another --zone or --profile, or later"
        }
        "cannot_start_ip_address" => "the subnet has no free address",
        "cannot_start_network" => "the network interface could not be set up",
        "cannot_start" => "the instance could not start",
        _ => "see the message",
    }
}

/// Polls the instance until `running`; then reads its boot volume's root key.
pub(super) fn wait(c: &Client, id: &str, poll: Duration, timeout: Duration) -> Result<Provisioned> {
    let t0 = Instant::now();
    let mut polls = 0;
    let url = format!(
        "{}/v1/instances/{}?{}",
        c.endpoint,
        uri_encode(id, true),
        q()
    );
    loop {
        polls += 1;
        let body = c.get_body("GET /v1/instances/{id}", &url)?;
        let i = wire::vpc_instance(&body)
            .map_err(|e| bad(format!("{}: instance {id}: {e}", c.label())))?;
        match i.status.as_str() {
            "running" => {
                let boot_volume_key = match &i.boot_volume_id {
                    Some(vol) => {
                        let url = format!(
                            "{}/v1/volumes/{}?{}",
                            c.endpoint,
                            uri_encode(vol, true),
                            q()
                        );
                        wire::vpc_volume_key(&c.get_body("GET /v1/volumes/{id}", &url)?)
                    }
                    None => None,
                };
                return Ok(Provisioned {
                    id: id.to_owned(),
                    name: i.name,
                    status: i.status,
                    primary_ip: i.primary_ip,
                    boot_volume_key,
                    adopted: false,
                    polls,
                });
            }
            "failed" | "deleting" | "stopped" => {
                let reasons: Vec<String> = i
                    .reasons
                    .iter()
                    .map(|(code, message)| format!("{code}: {message} ({})", explain_status(code)))
                    .collect();
                return Err(bad(format!(
                    "VPC instance {id} is {}{}",
                    i.status,
                    if reasons.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", reasons.join("; "))
                    }
                )));
            }
            _ => {}
        }
        if t0.elapsed() > timeout {
            return Err(bad(format!(
                "VPC instance {id} still {:?} after {timeout:?}; poll it with GET /v1/instances/{id}",
                i.status
            )));
        }
        std::thread::sleep(poll);
    }
}

/// The dry run of a VPC order.
pub(super) fn plan(st: &Settings, iam_endpoint: &str) -> Result<Vec<String>> {
    let o = &st.order;
    let e = st.endpoint.trim_end_matches('/');
    let qs = q();
    let profile = o
        .profile
        .clone()
        .unwrap_or_else(|| "<--profile missing>".into());
    let subnet = o
        .subnet
        .clone()
        .unwrap_or_else(|| "<--subnet missing>".into());
    let mut lines = vec![format!(
        "POST {iam_endpoint}/identity/token (apikey: <redacted>)"
    )];
    lines.push(format!(
        "GET  {e}/v1/images?{qs}&limit={LIMIT}&name={} (then GET {e}/v1/images/{} if no image has that name): must be available",
        o.image, o.image
    ));
    if let Some(v) = &o.vpc {
        lines.push(format!(
            "GET  {e}/v1/vpcs?{qs}&limit={LIMIT}: the VPC {v:?}"
        ));
    }
    lines.push(format!(
        "GET  {e}/v1/subnets?{qs}&limit={LIMIT}{}: the subnet {subnet:?}",
        if o.vpc.is_some() {
            "&vpc.id=<VPC id>"
        } else {
            ""
        }
    ));
    lines.push(format!(
        "GET  {e}/v1/instance/profiles?{qs}&limit={LIMIT}: the profile {profile:?}"
    ));
    if !o.keys.is_empty() {
        lines.push(format!(
            "GET  {e}/v1/keys?{qs}&limit={LIMIT}: the keys {:?}",
            o.keys
        ));
    }
    let name = o
        .name
        .clone()
        .unwrap_or_else(|| "<the image's name>".into());
    lines.push(format!(
        "GET  {e}/v1/instances?{qs}&limit={LIMIT}&name={name}: an instance of that name from this image is adopted, not ordered again"
    ));
    let mut body = json!({
        "name": name,
        "image": {"id": format!("<id of image {}>", o.image)},
        "zone": {"name": o.zone.clone().unwrap_or_else(|| "<the subnet's zone>".into())},
        "profile": {"name": profile},
        "vpc": {"id": format!("<id of VPC {}>", o.vpc.as_deref().unwrap_or("of the subnet"))},
        "primary_network_interface": {"subnet": {"id": format!("<id of subnet {subnet}>")}},
    });
    if !o.keys.is_empty() {
        body["keys"] = o
            .keys
            .iter()
            .map(|k| json!({"id": format!("<id of key {k}>")}))
            .collect();
    }
    if let Some(u) = &o.user_data {
        body["user_data"] = json!(redacted_user_data(u.expose()));
    }
    if let Some(crn) = &o.boot_volume_key {
        body["boot_volume_attachment"] = json!({"volume": {"profile": {"name": BOOT_VOLUME_PROFILE}, "encryption_key": {"crn": crn}}});
    }
    lines.push(format!(
        "POST {e}/v1/instances?{qs} {body} (after confirmation: --yes or a terminal)"
    ));
    lines.push(format!(
        "GET  {e}/v1/instances/<id>?{qs} every {} ms until running, then GET {e}/v1/volumes/<boot volume id>?{qs}",
        st.poll.as_millis()
    ));
    Ok(lines)
}
