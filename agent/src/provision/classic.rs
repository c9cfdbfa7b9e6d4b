//! Classic virtual servers from an encrypted image template, as softlayer-python orders them
//! (`SoftLayer/managers/vs.py`): the `createObject` template of `_generate_create_dict` with
//! `blockDeviceTemplateGroup.globalIdentifier`; the quote of `order_guest(test=True)`
//! (`SoftLayer_Virtual_Guest::generateOrderTemplate`, then `SoftLayer_Product_Order::verifyOrder`);
//! the lookup of `list_instances(hostname=, domain=)`; SSH key labels resolved with `SshKeyManager`'s
//! `getSshKeys` filter; readiness as `wait_for_ready` reads it (a `provisionDate`, no active
//! transaction), and the guest powered on.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{Order, Prepared, Provisioned, Settings, bad, redacted_user_data, refuse};
use crate::cloud::Client;
use crate::error::{Error, Result};
use crate::http::RetryPolicy;
use crate::s3::uri_encode;
use crate::wire;

/// The guest mask of the lookup and the polls.
const GUEST_MASK: &str = "mask[id,globalIdentifier,hostname,domain,fullyQualifiedDomainName,primaryIpAddress,primaryBackendIpAddress,provisionDate,powerState,status,activeTransaction[id,transactionStatus[name,friendlyName]],lastOperatingSystemReload.id,blockDeviceTemplateGroup[id,name,globalIdentifier]]";

fn rest(c: &Client, path: &str) -> String {
    format!("{}/rest/v3.1/{path}", c.endpoint)
}

fn post(c: &Client, retry: &RetryPolicy, what: &str, path: &str, param: &Value) -> Result<Value> {
    let body = json!({ "parameters": [param] });
    let r = c.call_with(retry, "POST", &rest(c, path), Some(&body))?;
    if r.status != 200 && r.status != 201 {
        let mut e = c.error(what, &r);
        if let Some(x) = explain_error(&e.message) {
            e.message.push_str(&format!(" ({x})"));
        }
        return Err(Error::Remote(e));
    }
    serde_json::from_str(&r.body).map_err(|e| bad(format!("{}: {what} answer: {e}", c.label())))
}

/// `objectFilter` of softlayer-python's `query_filter(value)`: `_= value`.
fn eq(v: &str) -> Value {
    json!({ "operation": format!("_= {v}") })
}

/// Explains a SoftLayer order error by its message (SoftLayer answers every refusal with an HTTP 500
/// and `SoftLayer_Exception_*`).
pub fn explain_error(message: &str) -> Option<&'static str> {
    let m = message.to_ascii_lowercase();
    Some(
        if m.contains("not available in") || m.contains("datacenter") || m.contains("location") {
            "the image template is not in that datacenter: copy it there first (`slcli image datacenter IDENTIFIER --add DC`) or give the --datacenter it is in"
        } else if m.contains("limit") || m.contains("quota") {
            "the account's virtual server limit is reached: cancel unused servers or ask IBM for a higher limit"
        } else if m.contains("template") || m.contains("image") {
            "the image template cannot be ordered: check --image (the template's global identifier) and that its import finished"
        } else if m.contains("crk") || m.contains("key protect") || m.contains("unwrap") {
            "the template's root key cannot be used: the key must exist, be enabled and the account be authorised to use it"
        } else {
            return None;
        },
    )
}

/// SSH key ids from ids or labels (`SoftLayer_Account::getSshKeys` with a label filter).
fn key_ids(c: &Client, keys: &[String]) -> Result<Vec<u64>> {
    let mut out = Vec::new();
    for k in keys {
        if let Ok(id) = k.parse::<u64>() {
            out.push(id);
            continue;
        }
        let filter = json!({"sshKeys": {"label": eq(k)}}).to_string();
        let url = format!(
            "{}?objectFilter={}",
            rest(c, "SoftLayer_Account/getSshKeys.json"),
            uri_encode(&filter, true)
        );
        let v = c.get_json("getSshKeys", &url)?;
        let hits: Vec<u64> = v
            .as_array()
            .into_iter()
            .flatten()
            .filter(|x| x["label"] == k.as_str())
            .filter_map(|x| x["id"].as_u64())
            .collect();
        match hits[..] {
            [id] => out.push(id),
            [] => {
                return Err(refuse(format!(
                    "no SSH key labelled {k:?} on the account (--keys): `slcli sshkey list` shows them"
                )));
            }
            _ => {
                return Err(refuse(format!(
                    "{} SSH keys are labelled {k:?} (--keys): give its id",
                    hits.len()
                )));
            }
        }
    }
    Ok(out)
}

/// The `createObject` template (softlayer-python `_generate_create_dict`'s keys).
fn template(o: &Order, hostname: &str, domain: &str, dc: &str, keys: &[u64]) -> Result<Value> {
    let cpus = o
        .cpus
        .ok_or_else(|| refuse("give --cpus for --target ibm-classic".into()))?;
    let mem = o
        .memory_mb
        .ok_or_else(|| refuse("give --memory (MB, e.g. 4096) for --target ibm-classic".into()))?;
    let mut t = json!({
        "startCpus": cpus,
        "maxMemory": mem,
        "hostname": hostname,
        "domain": domain,
        "localDiskFlag": !o.san,
        "hourlyBillingFlag": !o.monthly,
        "supplementalCreateObjectOptions": {"bootMode": null},
        "blockDeviceTemplateGroup": {"globalIdentifier": o.image},
        "datacenter": {"name": dc},
    });
    if let Some(u) = &o.user_data {
        t["userData"] = json!([{ "value": u.expose() }]);
    }
    if let Some(n) = o.network_speed {
        t["networkComponents"] = json!([{ "maxSpeed": n }]);
    }
    if let Some(p) = &o.post_install {
        t["postInstallScriptUri"] = json!(p);
    }
    if !keys.is_empty() {
        t["sshKeys"] = keys.iter().map(|k| json!({ "id": k })).collect();
    }
    Ok(t)
}

fn need<'a>(v: &'a Option<String>, flag: &str) -> Result<&'a str> {
    v.as_deref()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| refuse(format!("give {flag} for --target ibm-classic")))
}

/// Resolves the keys, checks and prices the order with `generateOrderTemplate` + `verifyOrder`
/// (neither orders anything).
pub(super) fn prepare(c: &Client, o: &Order) -> Result<Prepared> {
    let hostname = need(&o.name, "--name (the hostname)")?;
    let domain = need(&o.domain, "--domain")?;
    let dc = need(&o.datacenter, "--datacenter")?;
    if o.image.is_empty() {
        return Err(refuse(
            "give --image (the template's global identifier)".into(),
        ));
    }
    let keys = key_ids(c, &o.keys)?;
    let t = template(o, hostname, domain, dc, &keys)?;
    let once = c.retry;
    let container = post(
        c,
        &once,
        "generateOrderTemplate",
        "SoftLayer_Virtual_Guest/generateOrderTemplate.json",
        &t,
    )?;
    // generateOrderTemplate drops userData: softlayer-python's order_guest puts it back.
    let mut container = container;
    if let Some(u) = &o.user_data
        && let Some(g) = container["virtualGuests"].get_mut(0)
    {
        g["userData"] = json!([{ "value": u.expose() }]);
    }
    let verified = post(
        c,
        &once,
        "verifyOrder",
        "SoftLayer_Product_Order/verifyOrder.json",
        &container,
    )?;
    let fee = if o.monthly {
        "recurringFee"
    } else {
        "hourlyRecurringFee"
    };
    let mut total = 0.0;
    let mut items = Vec::new();
    for p in verified["prices"].as_array().into_iter().flatten() {
        let v = match &p[fee] {
            Value::String(s) => s.parse::<f64>().unwrap_or(0.0),
            Value::Number(n) => n.as_f64().unwrap_or(0.0),
            _ => 0.0,
        };
        total += v;
        if let Some(d) = p["item"]["description"].as_str() {
            items.push(d.to_owned());
        }
    }
    let billing = if o.monthly { "monthly" } else { "hourly" };
    let mut warnings = Vec::new();
    if keys.is_empty() {
        warnings.push("no --keys: the guest will have no SSH key (root password only)".into());
    }
    let summary = vec![
        ("target".into(), "ibm-classic".into()),
        ("hostname".into(), format!("{hostname}.{domain}")),
        ("datacenter".into(), dc.to_owned()),
        ("image".into(), o.image.clone()),
        (
            "size".into(),
            format!(
                "{} CPUs, {} MB, {} disk{}",
                o.cpus.unwrap_or(0),
                o.memory_mb.unwrap_or(0),
                if o.san { "SAN" } else { "local" },
                o.network_speed
                    .map(|n| format!(", {n} Mbps network"))
                    .unwrap_or_default()
            ),
        ),
        ("items".into(), items.join("; ")),
        (
            "billing".into(),
            format!(
                "{billing}: {total:.3} USD per {} (verifyOrder's {fee} total)",
                if o.monthly { "month" } else { "hour" }
            ),
        ),
    ];
    Ok(Prepared {
        name: hostname.to_owned(),
        domain: domain.to_owned(),
        image_id: o.image.clone(),
        summary,
        warnings,
        body: t,
    })
}

/// The guest `hostname.domain` if one exists: adopted when made from `p`'s template, else an error.
pub(super) fn find(c: &Client, p: &Prepared) -> Result<Option<String>> {
    let filter = json!({"virtualGuests": {
        "id": {"operation": "orderBy", "options": [{"name": "sort", "value": ["ASC"]}]},
        "hostname": eq(&p.name),
        "domain": eq(&p.domain),
    }})
    .to_string();
    let url = format!(
        "{}?objectMask={}&objectFilter={}&resultLimit=0%2C100",
        rest(c, "SoftLayer_Account/getVirtualGuests.json"),
        uri_encode(GUEST_MASK, true),
        uri_encode(&filter, true)
    );
    let guests = wire::softlayer_guests(&c.get_body("getVirtualGuests", &url)?);
    let Some(g) = guests
        .into_iter()
        .find(|g| g.hostname == p.name && g.domain == p.domain)
    else {
        return Ok(None);
    };
    if g.template.as_deref() != Some(p.image_id.as_str()) {
        return Err(refuse(format!(
            "a virtual server {}.{} exists already ({}) from another image: give another --name or --domain",
            p.name, p.domain, g.id
        )));
    }
    Ok(Some(g.id.to_string()))
}

/// `createObject` once.
pub(super) fn create(c: &Client, retry: &RetryPolicy, p: &Prepared) -> Result<String> {
    let v = post(
        c,
        retry,
        "createObject",
        "SoftLayer_Virtual_Guest/createObject.json",
        &p.body,
    )?;
    v["id"]
        .as_u64()
        .map(|i| i.to_string())
        .ok_or_else(|| bad(format!("{}: no id in the createObject answer", c.label())))
}

/// Polls the guest until it is provisioned, has no active transaction and runs.
pub(super) fn wait(c: &Client, id: &str, poll: Duration, timeout: Duration) -> Result<Provisioned> {
    let t0 = Instant::now();
    let mut polls = 0;
    let url = format!(
        "{}?objectMask={}",
        rest(c, &format!("SoftLayer_Virtual_Guest/{id}/getObject.json")),
        uri_encode(GUEST_MASK, true)
    );
    loop {
        polls += 1;
        let g = wire::softlayer_guest(&c.get_body(&format!("getObject {id}"), &url)?);
        if matches!(
            g.status.as_str(),
            "DISCONNECTED" | "RECLAIM" | "DEACTIVATED"
        ) {
            return Err(bad(format!(
                "classic virtual server {id} is {}: see it in the console",
                g.status
            )));
        }
        if g.ready() {
            return Ok(Provisioned {
                id: id.to_owned(),
                name: g.fqdn,
                status: g.power,
                primary_ip: g.primary_ip,
                boot_volume_key: None,
                adopted: false,
                polls,
            });
        }
        if t0.elapsed() > timeout {
            return Err(bad(format!(
                "classic virtual server {id} not ready after {timeout:?}: power state {}, transaction {}",
                if g.power.is_empty() {
                    "(none)"
                } else {
                    &g.power
                },
                g.transaction.as_deref().unwrap_or("(none)")
            )));
        }
        std::thread::sleep(poll);
    }
}

/// The dry run of a classic order.
pub(super) fn plan(st: &Settings) -> Result<Vec<String>> {
    let o = &st.order;
    let e = st.endpoint.trim_end_matches('/');
    let base = format!("{e}/rest/v3.1");
    let hostname = o.name.clone().unwrap_or_else(|| "<--name missing>".into());
    let domain = o
        .domain
        .clone()
        .unwrap_or_else(|| "<--domain missing>".into());
    let dc = o
        .datacenter
        .clone()
        .unwrap_or_else(|| "<--datacenter missing>".into());
    let mut lines = Vec::new();
    let labels: Vec<&String> = o
        .keys
        .iter()
        .filter(|k| k.parse::<u64>().is_err())
        .collect();
    for l in &labels {
        lines.push(format!(
            "GET  {base}/SoftLayer_Account/getSshKeys.json?objectFilter={{\"sshKeys\":{{\"label\":{{\"operation\":\"_= {l}\"}}}}}} (Authorization: Basic <redacted>)"
        ));
    }
    let keys: Vec<u64> = o.keys.iter().filter_map(|k| k.parse().ok()).collect();
    let mut o2 = o.clone();
    o2.cpus = o.cpus.or(Some(0));
    o2.memory_mb = o.memory_mb.or(Some(0));
    if let Some(u) = &o.user_data {
        o2.user_data = Some(crate::secret::SecretString::new(redacted_user_data(
            u.expose(),
        )));
    }
    let mut t = template(&o2, &hostname, &domain, &dc, &keys)?;
    if !labels.is_empty() {
        t["sshKeys"] = o
            .keys
            .iter()
            .map(|k| match k.parse::<u64>() {
                Ok(id) => json!({ "id": id }),
                Err(_) => json!({ "id": format!("<id of key {k}>") }),
            })
            .collect();
    }
    lines.push(format!(
        "POST {base}/SoftLayer_Virtual_Guest/generateOrderTemplate.json {} (Authorization: Basic <redacted>)",
        json!({ "parameters": [t] })
    ));
    lines.push(format!(
        "POST {base}/SoftLayer_Product_Order/verifyOrder.json {{\"parameters\":[<the order template>]}}: the price"
    ));
    lines.push(format!(
        "GET  {base}/SoftLayer_Account/getVirtualGuests.json?objectMask=...&objectFilter=<hostname {hostname}, domain {domain}>: a guest of that name from this image is adopted, not ordered again"
    ));
    lines.push(format!(
        "POST {base}/SoftLayer_Virtual_Guest/createObject.json {} (after confirmation: --yes or a terminal)",
        json!({ "parameters": [t] })
    ));
    lines.push(format!(
        "GET  {base}/SoftLayer_Virtual_Guest/<id>/getObject.json?objectMask=... every {} ms until provisioned, running and without a transaction",
        st.poll.as_millis()
    ));
    Ok(lines)
}
