//! The compute half of the fake IBM (`fake_ibm.rs` signs the requests in and routes here): VPC
//! instances (`/v1/vpcs`, `/v1/subnets`, `/v1/keys`, `/v1/instance/profiles`, `/v1/instances`,
//! `/v1/volumes`) and SoftLayer virtual guests (`SoftLayer_Virtual_Guest` createObject,
//! generateOrderTemplate, getObject; `SoftLayer_Product_Order::verifyOrder`; the account's guests and
//! SSH keys), in the shapes of ibm-vpc's models and softlayer-python's calls. It enforces what the
//! services do: required fields, unique instance names per region, profiles per zone, the subnet in
//! the instance's zone, an available image, the quota; the encrypted-image boot rule (the boot volume
//! of an encrypted image is encrypted with the customer's root key, the image's or the one given,
//! whose KMS instance Block Storage must be authorised to read, else "The CRN specified in the
//! request is not valid."); classic templates only orderable once imported and in their datacenters.
//! (The quota and profile error codes are this fake's: the VPC documents no list of them.)

use serde_json::{Value, json};

use crate::fake_ibm::{State, crn_ok, query_param, sl_error, vpc_error, vpc_name_ok};

type Reply = (u16, String);

/// One page of a collection: `limit` items (at most `State::page_size` when set) from `start`, with
/// `next.href` carrying the next page's `start` when there is one.
fn list(s: &State, query: &str, name: &str, items: Vec<Value>) -> Reply {
    let start: usize = query_param(query, "start")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut limit: usize = query_param(query, "limit")
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    if s.page_size > 0 {
        limit = limit.min(s.page_size);
    }
    let page: Vec<Value> = items.iter().skip(start).take(limit).cloned().collect();
    let mut out = json!({ name: page, "limit": limit, "first": {"href": format!("https://fake/v1/{name}?limit={limit}")} });
    if start + limit < items.len() {
        out["next"] = json!({"href": format!("https://fake/v1/{name}?limit={limit}&start={}", start + limit)});
    }
    (200, out.to_string())
}

/// The VPC compute routes (`method`, `path` without the query).
pub fn vpc(s: &mut State, method: &str, path: &str, query: &str, v: &Value) -> Reply {
    match (method, path) {
        ("GET", "/v1/vpcs") => list(s, query, "vpcs", s.vpcs.clone()),
        ("GET", "/v1/subnets") => {
            let vpc = query_param(query, "vpc.id");
            let items = s
                .subnets
                .iter()
                .filter(|n| vpc.as_ref().is_none_or(|id| n["vpc"]["id"] == id.as_str()))
                .cloned()
                .collect();
            list(s, query, "subnets", items)
        }
        ("GET", "/v1/keys") => list(s, query, "keys", s.ssh_keys.clone()),
        ("GET", "/v1/instance/profiles") => list(
            s,
            query,
            "profiles",
            s.profiles.iter().map(|(n, _)| json!({"name": n})).collect(),
        ),
        ("GET", "/v1/instances") => {
            let name = query_param(query, "name");
            let items = s
                .instances
                .iter()
                .filter(|i| name.as_ref().is_none_or(|n| i["name"] == n.as_str()))
                .map(|i| shown(s, i))
                .collect();
            list(s, query, "instances", items)
        }
        ("POST", "/v1/instances") => create_instance(s, v),
        ("GET", p) if p.starts_with("/v1/instances/") => {
            let id = &p["/v1/instances/".len()..];
            let Some(i) = s.instances.iter().find(|i| i["id"] == id).cloned() else {
                return vpc_error(404, "not_found", "Instance not found");
            };
            if let Some(left) = s.instance_polls.get_mut(id)
                && *left > 0
            {
                *left -= 1;
            }
            (200, shown(s, &i).to_string())
        }
        ("GET", p) if p.starts_with("/v1/volumes/") => {
            match s.volumes.get(&p["/v1/volumes/".len()..]) {
                Some(vol) => (200, vol.to_string()),
                None => vpc_error(404, "not_found", "Volume not found"),
            }
        }
        _ => vpc_error(404, "not_found", "no such route"),
    }
}

/// An instance as the API shows it now: pending while it has polls left, then running (or failed).
fn shown(s: &State, i: &Value) -> Value {
    let id = i["id"].as_str().unwrap_or("");
    let mut i = i.clone();
    if s.instance_polls.get(id).is_some_and(|l| *l > 0) {
        i["status"] = json!("pending");
        i["status_reasons"] = json!([]);
    } else if let Some(code) = s.instance_fails {
        i["status"] = json!("failed");
        i["status_reasons"] = json!([{"code": code, "message": "The instance could not start."}]);
    }
    i
}

fn missing(what: &str) -> Reply {
    vpc_error(
        400,
        "validation_required_field_missing",
        &format!("{what} is required"),
    )
}

fn create_instance(s: &mut State, v: &Value) -> Reply {
    let Some(image_id) = v["image"]["id"].as_str() else {
        return missing("image");
    };
    let Some(zone) = v["zone"]["name"].as_str() else {
        return missing("zone");
    };
    let Some(subnet_id) = v["primary_network_interface"]["subnet"]["id"].as_str() else {
        return missing("primary_network_interface.subnet");
    };
    let name = v["name"].as_str().unwrap_or("");
    if !vpc_name_ok(name) {
        return vpc_error(
            400,
            "validation_invalid_name",
            "The instance name is not valid",
        );
    }
    if s.instances.iter().any(|i| i["name"] == name) {
        return vpc_error(
            409,
            "instance_name_duplicate",
            "The instance name is already in use in this region",
        );
    }
    if s.instances.len() >= s.quota {
        return vpc_error(
            403,
            "instance_quota_exceeded",
            "The account's instance quota for the region is reached",
        );
    }
    let profile = v["profile"]["name"].as_str().unwrap_or("bxf-2x8");
    match s.profiles.iter().find(|(n, _)| n == profile) {
        None => {
            return vpc_error(
                404,
                "instance_profile_not_found",
                "The instance profile was not found",
            );
        }
        Some((_, zones)) if !zones.is_empty() && !zones.iter().any(|z| z == zone) => {
            return vpc_error(
                400,
                "instance_profile_not_available_in_zone",
                "The instance profile is not available in the zone",
            );
        }
        Some(_) => {}
    }
    let Some(subnet) = s.subnets.iter().find(|n| n["id"] == subnet_id).cloned() else {
        return vpc_error(404, "subnet_not_found", "Subnet not found");
    };
    if subnet["zone"]["name"] != zone {
        return vpc_error(
            400,
            "subnet_zone_mismatch",
            "The subnet is not in the instance's zone",
        );
    }
    if let Some(vpc) = v["vpc"]["id"].as_str()
        && subnet["vpc"]["id"] != vpc
    {
        return vpc_error(400, "subnet_vpc_mismatch", "The subnet is not in the VPC");
    }
    for k in v["keys"].as_array().into_iter().flatten() {
        if !s.ssh_keys.iter().any(|x| x["id"] == k["id"]) {
            return vpc_error(404, "key_not_found", "Key not found");
        }
    }
    let Some(img) = s.images.get(image_id) else {
        return vpc_error(404, "image_not_found", "Image not found");
    };
    if img.0 > 0 || img.1 != "available" {
        return vpc_error(400, "image_not_available", "The image is not available");
    }
    let (image_name, image_crn) = s
        .created
        .iter()
        .find(|c| c.0 == image_id)
        .map(|c| (c.1.clone(), c.2.clone()))
        .unwrap_or_default();
    // The boot volume: its prototype needs a profile; its key is the one given, else the image's.
    let vol = &v["boot_volume_attachment"]["volume"];
    if !vol.is_null() && vol["profile"]["name"].as_str().is_none() {
        return missing("boot_volume_attachment.volume.profile");
    }
    let key = vol["encryption_key"]["crn"]
        .as_str()
        .map(str::to_owned)
        .or_else(|| (!image_crn.is_empty()).then(|| image_crn.clone()));
    if let Some(k) = &key {
        let instance = k.split(':').nth(7).unwrap_or("");
        if !crn_ok(k) || !s.block_storage_authorised.iter().any(|a| a == instance) {
            return vpc_error(
                400,
                "volume_crn_invalid",
                "The CRN specified in the request is not valid.",
            );
        }
    }
    s.next += 1;
    let n = s.next;
    let id = format!("0717_{n:08}");
    let vol_id = format!("r006-vol-{n:08}");
    s.volumes.insert(
        vol_id.clone(),
        match &key {
            Some(k) => {
                json!({"id": vol_id, "encryption": "user_managed", "encryption_key": {"crn": k}})
            }
            None => json!({"id": vol_id, "encryption": "provider_managed"}),
        },
    );
    let inst = json!({
        "id": id, "name": name, "status": "running", "status_reasons": [],
        "image": {"id": image_id, "name": image_name},
        "zone": {"name": zone}, "profile": {"name": profile}, "vpc": subnet["vpc"],
        "primary_network_interface": {"id": format!("0717-nic-{n}"), "subnet": {"id": subnet_id},
            "primary_ip": {"address": format!("10.240.0.{}", 3 + n % 250)}},
        "boot_volume_attachment": {"volume": {"id": vol_id, "name": format!("{name}-boot")}},
    });
    s.instances.push(inst.clone());
    s.instance_polls.insert(id.clone(), s.import_polls);
    let mut created = inst;
    created["status"] = json!("pending");
    (201, created.to_string())
}

/// The SoftLayer compute routes, or None for the image routes of `fake_ibm.rs`.
pub fn softlayer(s: &mut State, method: &str, path: &str, query: &str, v: &Value) -> Option<Reply> {
    let base = "/rest/v3.1/";
    let p = path.strip_prefix(base)?;
    Some(match p {
        "SoftLayer_Account/getSshKeys.json" => {
            let label = filter_eq(query, &["sshKeys", "label"]);
            let keys = s
                .sl_keys
                .iter()
                .filter(|k| label.as_ref().is_none_or(|l| k["label"] == l.as_str()))
                .cloned()
                .collect();
            (200, Value::Array(keys).to_string())
        }
        "SoftLayer_Account/getVirtualGuests.json" => {
            let host = filter_eq(query, &["virtualGuests", "hostname"]);
            let domain = filter_eq(query, &["virtualGuests", "domain"]);
            let gs = s
                .guests
                .iter()
                .filter(|g| host.as_ref().is_none_or(|h| g["hostname"] == h.as_str()))
                .filter(|g| domain.as_ref().is_none_or(|d| g["domain"] == d.as_str()))
                .map(|g| guest_shown(s, g))
                .collect();
            (200, Value::Array(gs).to_string())
        }
        "SoftLayer_Virtual_Guest/generateOrderTemplate.json" => {
            let t = &v["parameters"][0];
            if let Err(e) = check_guest(s, t) {
                return Some(e);
            }
            let mut g = t.clone();
            if let Some(o) = g.as_object_mut() {
                o.remove("userData");
            }
            (200, json!({
                "complexType": "SoftLayer_Container_Product_Order_Virtual_Guest",
                "packageId": 46, "location": "1441195", "quantity": 1,
                "useHourlyPricing": t["hourlyBillingFlag"],
                "imageTemplateGlobalIdentifier": t["blockDeviceTemplateGroup"]["globalIdentifier"],
                "virtualGuests": [g],
                "prices": [{"id": 1640}, {"id": 1644}, {"id": 905}],
            }).to_string())
        }
        "SoftLayer_Product_Order/verifyOrder.json" => {
            let c = &v["parameters"][0];
            if c["complexType"].as_str().is_none() || !c["prices"].is_array() {
                return Some(sl_error(
                    500,
                    "SoftLayer_Exception_Order_InvalidContainer",
                    "The order container is not valid.",
                ));
            }
            let mut out = c.clone();
            out["prices"] = json!([
                {"id": 1640, "hourlyRecurringFee": ".025", "recurringFee": "18.25", "item": {"description": "2 x 2.0 GHz or higher Cores"}},
                {"id": 1644, "hourlyRecurringFee": ".03", "recurringFee": "21.9", "item": {"description": "4 GB"}},
                {"id": 905, "hourlyRecurringFee": "0", "recurringFee": "0", "item": {"description": "100 Mbps Public & Private Network Uplinks"}},
            ]);
            (200, out.to_string())
        }
        "SoftLayer_Virtual_Guest/createObject.json" => {
            let t = &v["parameters"][0];
            if let Err(e) = check_guest(s, t) {
                return Some(e);
            }
            s.next += 1;
            let id = 5000 + s.next;
            let g = json!({
                "id": id, "globalIdentifier": format!("6C5F7E4D-0000-0000-0000-{id:012}"),
                "hostname": t["hostname"], "domain": t["domain"],
                "fullyQualifiedDomainName": format!("{}.{}", t["hostname"].as_str().unwrap_or(""), t["domain"].as_str().unwrap_or("")),
                "blockDeviceTemplateGroup": {"globalIdentifier": t["blockDeviceTemplateGroup"]["globalIdentifier"]},
                "primaryIpAddress": format!("169.48.0.{}", id % 250), "primaryBackendIpAddress": format!("10.1.0.{}", id % 250),
                "provisionDate": "2026-12-07T02:00:00-06:00", "powerState": {"keyName": "RUNNING", "name": "Running"},
                "status": {"keyName": "ACTIVE", "name": "Active"},
            });
            s.guests.push(g.clone());
            s.guest_polls.insert(id, s.import_polls);
            (201, guest_shown(s, &g).to_string())
        }
        _ => {
            let rest = p.strip_prefix("SoftLayer_Virtual_Guest/")?;
            let (id, method_name) = rest.split_once('/')?;
            let id: u64 = id.parse().ok()?;
            if method != "GET" || !method_name.starts_with("getObject") {
                return None;
            }
            let Some(g) = s.guests.iter().find(|g| g["id"] == id).cloned() else {
                return Some(sl_error(
                    404,
                    "SoftLayer_Exception_ObjectNotFound",
                    "Unable to find object with id of '…'.",
                ));
            };
            let shown = guest_shown(s, &g);
            if let Some(left) = s.guest_polls.get_mut(&id)
                && *left > 0
            {
                *left -= 1;
            }
            (200, shown.to_string())
        }
    })
}

/// A guest as the API shows it now: provisioning (no provisionDate, a transaction) while it has polls left.
fn guest_shown(s: &State, g: &Value) -> Value {
    let id = g["id"].as_u64().unwrap_or(0);
    let mut g = g.clone();
    if s.guest_polls.get(&id).is_some_and(|l| *l > 0) {
        if let Some(o) = g.as_object_mut() {
            o.remove("provisionDate");
            o.remove("primaryIpAddress");
        }
        g["powerState"] = json!({"keyName": "HALTED", "name": "Halted"});
        g["activeTransaction"] = json!({"id": 77, "transactionStatus": {"name": "PROVISION_DNS", "friendlyName": "Setting up DNS"}});
    }
    g
}

/// The `_= VALUE` of `objectFilter`'s `path`.
fn filter_eq(query: &str, path: &[&str]) -> Option<String> {
    let f: Value = serde_json::from_str(&query_param(query, "objectFilter")?).ok()?;
    let op = path.iter().fold(&f, |v, k| &v[*k])["operation"].as_str()?;
    Some(op.strip_prefix("_= ").unwrap_or(op).to_owned())
}

/// What `createObject` and `generateOrderTemplate` check: the required properties, an image
/// template that finished importing and is in the datacenter, known SSH keys, the quota.
fn check_guest(s: &State, t: &Value) -> Result<(), Reply> {
    let err = |m: &str| Err(sl_error(500, "SoftLayer_Exception_Public", m));
    for (k, ok) in [
        ("hostname", t["hostname"].is_string()),
        ("domain", t["domain"].is_string()),
        ("startCpus", t["startCpus"].is_u64()),
        ("maxMemory", t["maxMemory"].is_u64()),
        ("hourlyBillingFlag", t["hourlyBillingFlag"].is_boolean()),
        ("datacenter.name", t["datacenter"]["name"].is_string()),
    ] {
        if !ok {
            return err(&format!(
                "Property '{k}' must be set to create an instance of SoftLayer_Virtual_Guest."
            ));
        }
    }
    let Some(guid) = t["blockDeviceTemplateGroup"]["globalIdentifier"].as_str() else {
        return err(
            "Either 'operatingSystemReferenceCode' or 'blockDeviceTemplateGroup.globalIdentifier' must be set.",
        );
    };
    let id = s.created.iter().find_map(|(id, _, _)| {
        let n: u64 = id.parse().ok()?;
        (format!("0B5DEAF4-0000-0000-0000-{n:012}") == guid).then_some(n)
    });
    let Some(id) = id else {
        return err("Unable to find the image template with the given global identifier.");
    };
    if s.templates.get(&id).is_some_and(|l| *l > 0) {
        return err("The image template is not ready: a transaction is running on it.");
    }
    let dc = t["datacenter"]["name"].as_str().unwrap_or("");
    if !s.template_datacenters.iter().any(|d| d == dc) {
        return err(&format!(
            "The image template is not available in datacenter {dc}."
        ));
    }
    for k in t["sshKeys"].as_array().into_iter().flatten() {
        if !s.sl_keys.iter().any(|x| x["id"] == k["id"]) {
            return err("The SSH key was not found on the account.");
        }
    }
    if s.guests.len() >= s.quota {
        return err("The account has reached its virtual server limit.");
    }
    Ok(())
}
