//! The server rules the fake enforces (issue 15's list) and the agent's fixes: each test shows the agent
//! meets the rule, and that the old behaviour is refused by the fake.

use std::time::Duration;

use crate::fake_ibm::{
    ACCOUNT, API_KEY, FakeIbm, Fault, INSTANCE, KEY_ALIAS, OTHER_REGION, ROOT_KEY,
};
use diskseal_agent::http::RetryPolicy;
use diskseal_agent::import::{self, Cloud, ImportSettings};
use diskseal_agent::kms::keyprotect::{KeyProtect, KmsSettings, Service};
use diskseal_agent::provision;
use diskseal_agent::s3;
use diskseal_agent::secret::SecretString;

fn retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 3,
        base: Duration::from_millis(10),
        max_wait: Duration::from_millis(50),
        ..RetryPolicy::default()
    }
}

fn settings(
    f: &FakeIbm,
    cloud: Cloud,
    name: &str,
    key_crn: String,
    wdek: String,
) -> ImportSettings {
    ImportSettings {
        cloud,
        endpoint: f.url.clone(),
        iam_endpoint: f.url.clone(),
        api_key: SecretString::new(API_KEY.into()),
        name: name.into(),
        cos_uri: match cloud {
            Cloud::Vpc => "cos://us-south/bucket/disk.qcow2".into(),
            Cloud::Classic => "cos://us-south/bucket/disk.vhd-0.vhd".into(),
        },
        os: "debian-12-amd64".into(),
        wdek,
        key_crn,
        byol: false,
        tag: "rules".into(),
        poll: Duration::from_millis(5),
        timeout: Duration::from_secs(20),
        retry: retry(),
    }
}

/// Issue 15 item 1: the key's CRN comes from the key (by id or alias), with the account and the key id.
#[test]
fn the_key_crn_comes_from_the_key_with_its_account() {
    let f = FakeIbm::start();
    let k = KeyProtect::new(KmsSettings {
        service: Service::KeyProtect,
        region: Some("us-south".into()),
        endpoint: f.url.clone(),
        iam_endpoint: f.url.clone(),
        instance_id: INSTANCE.into(),
        key_id: KEY_ALIAS.into(),
        key_ring: None,
        api_key: SecretString::new(API_KEY.into()),
        retry: retry(),
    });
    let crn = k.key_crn().unwrap();
    assert!(
        crn.contains(&format!(":a/{ACCOUNT}:")) && crn.ends_with(&format!(":key:{ROOT_KEY}")),
        "{crn}"
    );
    // The CRN the agent used to build (empty account, the alias as key id) is refused by the import.
    let old = format!("crn:v1:bluemix:public:kms:us-south:a/:{INSTANCE}:key:{KEY_ALIAS}");
    let e = import::import(settings(&f, Cloud::Vpc, "disk", old, f.wrap(b"p")))
        .unwrap_err()
        .to_string();
    assert!(e.contains("validation_invalid_crn"), "{e}");
}

/// Item 2: VPC names: a valid default from any object name, the rule checked before anything is sent,
/// and a name clash (409) explained.
#[test]
fn vpc_names_follow_the_rule_and_a_clash_is_explained() {
    assert_eq!(
        import::default_name(Some(Cloud::Vpc), "dir/My_Disk.v2.qcow2"),
        "my-disk"
    );
    assert_eq!(
        import::default_name(Some(Cloud::Vpc), "2024_ibm-x.qcow2"),
        "img-x"
    );
    assert_eq!(
        import::default_name(Some(Cloud::Vpc), "ibm-base.qcow2"),
        "img-base"
    );
    assert_eq!(
        import::default_name(Some(Cloud::Classic), "My_Disk.vhd-0.vhd"),
        "My_Disk"
    );
    for bad in ["my_disk", "ibm-x", "9abc", "a-", &"a".repeat(64)] {
        let e = import::check_vpc_name(bad).unwrap_err().to_string();
        assert!(e.contains("^([a-z]|[a-z][-a-z0-9]*[a-z0-9])$"), "{e}");
    }
    import::check_vpc_name("my-disk-2").unwrap();
    let f = FakeIbm::start();
    f.with(|s| s.import_polls = 0);
    // The old default (the file stem as it is) is refused by the VPC.
    let e = import::import(settings(
        &f,
        Cloud::Vpc,
        "my_disk",
        FakeIbm::key_crn(),
        f.wrap(b"p"),
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("validation_invalid_name"), "{e}");
    import::import(settings(
        &f,
        Cloud::Vpc,
        "my-disk",
        FakeIbm::key_crn(),
        f.wrap(b"p"),
    ))
    .unwrap();
    let e = import::import(settings(
        &f,
        Cloud::Vpc,
        "my-disk",
        FakeIbm::key_crn(),
        f.wrap(b"p"),
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("409") && e.contains("unique per region"), "{e}");
}

/// Items 3 and 4: SoftLayer takes HTTP Basic `apikey:KEY`; an expired bearer token gets the 500
/// AccessTokenValidation (never a 401), and SoftLayer's 500s are not retried but named.
#[test]
fn softlayer_signs_in_with_basic_auth_and_its_errors_are_not_retried() {
    let f = FakeIbm::start();
    f.with(|s| s.import_polls = 0);
    import::import(settings(
        &f,
        Cloud::Classic,
        "disk",
        FakeIbm::key_crn(),
        f.wrap(b"p"),
    ))
    .unwrap();
    let schemes: Vec<String> = f.with(|s| {
        s.requests
            .iter()
            .filter(|r| r.path.starts_with("/rest/"))
            .map(|r| r.auth_scheme())
            .collect()
    });
    assert!(
        !schemes.is_empty() && schemes.iter().all(|a| a == "Basic"),
        "{schemes:?}"
    );
    assert_eq!(f.with(|s| s.iam_calls), 0, "no IAM token for SoftLayer");
    // The old way: a bearer token, once expired, is a 500 AccessTokenValidation.
    let r = ureq::get(&format!("{}/rest/v3.1/SoftLayer_Virtual_Guest_Block_Device_Template_Group/1/getObject.json?objectMask=mask[id]", f.url))
        .header("authorization", "Bearer expired")
        .config()
        .http_status_as_error(false)
        .build()
        .call()
        .unwrap();
    assert_eq!(r.status().as_u16(), 500);
    // A refused createFromIcos (HTTP 500) is sent once and its code named.
    let mut s = settings(
        &f,
        Cloud::Classic,
        "disk2",
        FakeIbm::key_crn(),
        f.wrap(b"p"),
    );
    s.cos_uri = "s3://bucket/disk.vhd-0.vhd".into();
    let n = f.with(|s| s.requests.len());
    let e = import::import(s).unwrap_err().to_string();
    assert!(
        e.contains("SoftLayer_Exception_Public") && e.contains("HTTP 500"),
        "{e}"
    );
    let creates = f.with(|s| {
        s.requests[n..]
            .iter()
            .filter(|r| r.path.contains("createFromIcos"))
            .count()
    });
    assert_eq!(creates, 1);
}

/// Item 5: a create whose answer is lost is not sent again blindly: the image is looked up by name
/// and adopted (VPC and classic).
#[test]
fn a_create_with_a_lost_answer_is_adopted_not_repeated() {
    for cloud in [Cloud::Vpc, Cloud::Classic] {
        let f = FakeIbm::start();
        f.with(|s| {
            s.import_polls = 0;
            s.kp_faults.push_back(Fault::After(503));
        });
        let i = import::import(settings(
            &f,
            cloud,
            "disk",
            FakeIbm::key_crn(),
            f.wrap(b"p"),
        ))
        .unwrap();
        let created = f.with(|s| s.created.clone());
        assert_eq!(created.len(), 1, "{cloud:?}: {created:?}");
        assert_eq!(created[0].0, i.id);
    }
}

/// Item 6: endpoints: the VPC region of a cross-region or single-site bucket must be given; S3's region
/// redirect is followed.
#[test]
fn endpoints_follow_the_vpc_region_table_and_s3_redirects() {
    assert_eq!(
        import::vpc_endpoint("eu-de", None).unwrap(),
        "https://eu-de.iaas.cloud.ibm.com"
    );
    for site in ["us", "eu", "ap", "ams03"] {
        let e = import::vpc_endpoint(site, None).unwrap_err().to_string();
        assert!(e.contains("--region") && e.contains("us-south"), "{e}");
        assert_eq!(
            import::vpc_endpoint(site, Some("jp-tok")).unwrap(),
            "https://jp-tok.iaas.cloud.ibm.com"
        );
    }
    let f = FakeIbm::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("disk.img");
    std::fs::write(&file, vec![7u8; 3000]).unwrap();
    let t = s3::Target {
        endpoint: f.url.clone(),
        region: "us-east-1".into(),
        bucket: "elsewhere".into(),
        key: "disk.img".into(),
    };
    let creds = s3::Credentials {
        access_key_id: "AKFAKE".into(),
        secret_access_key: SecretString::new("fake-secret".into()),
        session_token: None,
    };
    let c = s3::Client::new(t, s3::Auth::Hmac(creds), retry());
    let o = s3::Options {
        jobs: 1,
        part_size: None,
        force: false,
        content_md5: false,
    };
    let u = s3::upload(&c, &file, &o, &mut |_| {}).unwrap();
    assert_eq!(u.size, 3000);
    let last = f.with(|s| {
        s.requests
            .last()
            .unwrap()
            .header("authorization")
            .unwrap()
            .to_owned()
    });
    assert!(last.contains(&format!("/{OTHER_REGION}/s3/")), "{last}");
}

/// Item 9: a classic import is done when the template and its children have no transaction (what
/// `slcli image detail` shows), whether or not the children report `blockDevicesDiskSpaceTotal`.
#[test]
fn classic_completion_is_what_the_official_client_reads() {
    let f = FakeIbm::start();
    f.with(|s| {
        s.import_polls = 1;
        s.sl_no_disk_total = true;
    });
    let i = import::import(settings(
        &f,
        Cloud::Classic,
        "disk",
        FakeIbm::key_crn(),
        f.wrap(b"p"),
    ))
    .unwrap();
    assert_eq!(i.status, "ACTIVE");
    // A timeout says what was last seen.
    let f = FakeIbm::start();
    f.with(|s| s.import_polls = 1000);
    let mut s = settings(&f, Cloud::Classic, "disk", FakeIbm::key_crn(), f.wrap(b"p"));
    s.timeout = Duration::from_millis(50);
    let e = import::import(s).unwrap_err().to_string();
    assert!(
        e.contains("last seen status ACTIVE") && e.contains("Copying image"),
        "{e}"
    );
}

/// Item 11: the seed's 2018 flow: a raw LUKS image to classic is refused with its reason, and sent with
/// a warning under --legacy-luks.
#[test]
fn legacy_luks_images_go_to_classic_only_when_asked() {
    let d = tempfile::tempdir().unwrap();
    let luks = crate::util::encrypted(d.path(), "disk.luks", diskseal::ops::Container::Raw, None);
    let e = import::preflight(Cloud::Classic, "disk.vhd-0.vhd", Some(&luks), false, false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("--legacy-luks") && e.contains("2019"), "{e}");
    let w = import::preflight(Cloud::Classic, "disk.vhd-0.vhd", Some(&luks), false, true).unwrap();
    assert!(w.iter().any(|w| w.contains("--legacy-luks")), "{w:?}");
}

fn vpc_order(image: &str, name: &str) -> provision::Order {
    provision::Order {
        image: image.into(),
        name: Some(name.into()),
        profile: Some("bx2-2x8".into()),
        subnet: Some("my-subnet".into()),
        keys: vec!["my-key".into()],
        ..provision::Order::default()
    }
}

fn order_settings(f: &FakeIbm, cloud: Cloud, order: provision::Order) -> provision::Settings {
    provision::Settings {
        cloud,
        endpoint: f.url.clone(),
        iam_endpoint: f.url.clone(),
        api_key: SecretString::new(API_KEY.into()),
        order,
        poll: Duration::from_millis(5),
        timeout: Duration::from_secs(20),
        retry: retry(),
    }
}

/// Prepares, finds or orders, and waits: the server and whether it was adopted.
fn order(f: &FakeIbm, cloud: Cloud, o: provision::Order) -> Result<provision::Provisioned, String> {
    let pv =
        provision::Provisioner::connect(order_settings(f, cloud, o)).map_err(|e| e.to_string())?;
    let p = pv.prepare().map_err(|e| e.to_string())?;
    let (id, adopted) = match pv.find(&p).map_err(|e| e.to_string())? {
        Some(id) => (id, true),
        None => (pv.create(&p).map_err(|e| e.to_string())?, false),
    };
    let mut d = pv.wait(&id).map_err(|e| e.to_string())?;
    d.adopted = adopted;
    Ok(d)
}

fn posts(f: &FakeIbm, path: &str) -> usize {
    f.with(|s| {
        s.requests
            .iter()
            .filter(|r| r.method == "POST" && r.path.ends_with(path))
            .count()
    })
}

/// Issue 20: VPC instance names are unique per region: a second order of the same name from the
/// same image adopts the first instance (nothing ordered twice), from another image it is refused;
/// an order whose answer was lost is looked up and adopted, not sent again.
#[test]
fn vpc_instance_names_are_unique_and_an_existing_instance_is_adopted() {
    let f = FakeIbm::start();
    f.with(|s| s.import_polls = 1);
    f.add_image("disk");
    f.add_image("other-disk");
    let a = order(&f, Cloud::Vpc, vpc_order("disk", "vm")).unwrap();
    assert!(!a.adopted && a.status == "running" && a.primary_ip.is_some());
    assert_eq!(
        a.boot_volume_key.as_deref(),
        Some(FakeIbm::key_crn().as_str())
    );
    let b = order(&f, Cloud::Vpc, vpc_order("disk", "vm")).unwrap();
    assert!(b.adopted && b.id == a.id);
    assert_eq!(posts(&f, "/v1/instances"), 1);
    let e = order(&f, Cloud::Vpc, vpc_order("other-disk", "vm")).unwrap_err();
    assert!(
        e.contains("boots another image") && e.contains("--name"),
        "{e}"
    );
    // The fake refuses the clash itself too (what the VPC does).
    let pv = provision::Provisioner::connect(order_settings(
        &f,
        Cloud::Vpc,
        vpc_order("other-disk", "vm"),
    ))
    .unwrap();
    let p = pv.prepare().unwrap();
    let e = pv.create(&p).unwrap_err().to_string();
    assert!(e.contains("409") && e.contains("unique per region"), "{e}");
    // A lost answer: the instance exists, the agent looks it up and adopts it.
    let pv =
        provision::Provisioner::connect(order_settings(&f, Cloud::Vpc, vpc_order("disk", "vm2")))
            .unwrap();
    let p = pv.prepare().unwrap();
    f.with(|s| s.kp_faults.push_back(Fault::After(503)));
    let id = pv.create(&p).unwrap();
    assert_eq!(
        f.with(|s| s.instances.iter().filter(|i| i["name"] == "vm2").count()),
        1
    );
    assert_eq!(pv.wait(&id).unwrap().status, "running");
}

/// Issue 20: the encrypted-image boot rule. The boot volume is encrypted with the image's root key, or
/// the one given; Block Storage must be authorised to read it, and when it is not the order is refused
/// with the VPC's "CRN not valid" and the agent says why.
#[test]
fn the_boot_volume_of_an_encrypted_image_needs_a_key_block_storage_may_read() {
    let f = FakeIbm::start();
    f.with(|s| s.import_polls = 0);
    f.add_image("disk");
    let other = format!("crn:v1:bluemix:public:kms:us-south:a/{ACCOUNT}:{INSTANCE}:key:other-root");
    let mut o = vpc_order("disk", "vm");
    o.boot_volume_key = Some(other.clone());
    let d = order(&f, Cloud::Vpc, o).unwrap();
    assert_eq!(d.boot_volume_key.as_deref(), Some(other.as_str()));
    let sent = f.with(|s| {
        s.requests
            .iter()
            .rev()
            .find(|r| r.method == "POST" && r.path == "/v1/instances")
            .cloned()
            .unwrap()
    });
    let body: serde_json::Value = serde_json::from_slice(&sent.body).unwrap();
    assert_eq!(
        body["boot_volume_attachment"]["volume"]["profile"]["name"],
        "general-purpose"
    );
    // Block Storage not authorised for the KMS instance: refused and explained.
    f.with(|s| s.block_storage_authorised.clear());
    let e = order(&f, Cloud::Vpc, vpc_order("disk", "vm3")).unwrap_err();
    assert!(
        e.contains("volume_crn_invalid") && e.contains("Block Storage must be authorised"),
        "{e}"
    );
    // An instance that cannot attach its boot volume fails with its reason explained.
    f.with(|s| {
        s.block_storage_authorised.push(INSTANCE.into());
        s.instance_fails = Some("cannot_start_storage");
    });
    let e = order(&f, Cloud::Vpc, vpc_order("disk", "vm4")).unwrap_err();
    assert!(
        e.contains("cannot_start_storage") && e.contains("root key"),
        "{e}"
    );
}

/// Issue 20: errors explained: an image still importing is refused before anything is ordered; a
/// profile not in the zone, the quota, unknown names; the subnet outside the zone.
#[test]
fn provision_errors_are_explained() {
    let f = FakeIbm::start();
    f.with(|s| s.import_polls = 0);
    f.add_image("disk");
    let pending = f.add_image("pending-disk");
    f.with(|s| s.images.get_mut(&pending).unwrap().0 = 5);
    let e = order(&f, Cloud::Vpc, vpc_order("pending-disk", "vm")).unwrap_err();
    assert!(
        e.contains("is pending, not available") && e.contains("still running"),
        "{e}"
    );
    let mut o = vpc_order("disk", "vm");
    o.profile = Some("gx3-16x80x1l4".into());
    let e = order(&f, Cloud::Vpc, o).unwrap_err();
    assert!(e.contains("not available in this zone"), "{e}");
    f.with(|s| s.quota = 0);
    let e = order(&f, Cloud::Vpc, vpc_order("disk", "vm")).unwrap_err();
    assert!(e.contains("quota"), "{e}");
    f.with(|s| s.quota = 10);
    for (o, want) in [
        (
            vpc_order("no-such-disk", "vm"),
            "no image with id or name \"no-such-disk\"",
        ),
        (
            {
                let mut o = vpc_order("disk", "vm");
                o.subnet = Some("nope".into());
                o
            },
            "no subnet with id or name \"nope\" (--subnet); there are: my-subnet, other-subnet",
        ),
        (
            {
                let mut o = vpc_order("disk", "vm");
                o.keys = vec!["nope".into()];
                o
            },
            "no SSH key with id or name \"nope\"",
        ),
        (
            {
                let mut o = vpc_order("disk", "vm");
                o.zone = Some("us-south-2".into());
                o
            },
            "subnet my-subnet is in zone us-south-1, not us-south-2",
        ),
        (
            {
                let mut o = vpc_order("disk", "vm");
                o.profile = Some("zz-1x1".into());
                o
            },
            "no instance profile \"zz-1x1\"",
        ),
    ] {
        let e = order(&f, Cloud::Vpc, o).unwrap_err();
        assert!(e.contains(want), "{e}");
    }
    assert_eq!(
        posts(&f, "/v1/instances"),
        2,
        "only the profile and quota orders reached the VPC"
    );
}

/// Issue 20, classic: a template can be ordered only once its import finished and in a datacenter it
/// is in (the agent explains how to copy it); the required properties; a guest of the same hostname
/// and domain from the same template is adopted, from another refused.
#[test]
fn classic_orders_need_a_finished_template_in_the_datacenter() {
    let f = FakeIbm::start();
    f.with(|s| s.import_polls = 0);
    let guid = f.add_template("disk");
    let o = |dc: &str, host: &str| provision::Order {
        image: guid.clone(),
        name: Some(host.into()),
        domain: Some("example.com".into()),
        datacenter: Some(dc.into()),
        cpus: Some(1),
        memory_mb: Some(2048),
        ..provision::Order::default()
    };
    let e = order(&f, Cloud::Classic, o("lon02", "vm")).unwrap_err();
    assert!(
        e.contains("not available in datacenter lon02") && e.contains("slcli image datacenter"),
        "{e}"
    );
    let mut missing = o("dal13", "vm");
    missing.cpus = None;
    let e = order(&f, Cloud::Classic, missing).unwrap_err();
    assert!(e.contains("--cpus"), "{e}");
    f.with(|s| *s.templates.values_mut().next().unwrap() = 3);
    let e = order(&f, Cloud::Classic, o("dal13", "vm")).unwrap_err();
    assert!(e.contains("not ready"), "{e}");
    f.with(|s| *s.templates.values_mut().next().unwrap() = 0);
    let a = order(&f, Cloud::Classic, o("dal13", "vm")).unwrap();
    assert!(!a.adopted && a.primary_ip.is_some() && a.name == "vm.example.com");
    let b = order(&f, Cloud::Classic, o("dal13", "vm")).unwrap();
    assert!(b.adopted && b.id == a.id);
    assert_eq!(posts(&f, "createObject.json"), 1);
    let other = f.add_template("other");
    let mut o2 = o("dal13", "vm");
    o2.image = other;
    let e = order(&f, Cloud::Classic, o2).unwrap_err();
    assert!(e.contains("from another image"), "{e}");
}

/// Issue 20: the VPC lists are read page by page (`next.href`'s `start`), as the SDK's pagers do: a
/// subnet on the second page is found.
#[test]
fn vpc_lists_are_read_page_by_page() {
    let f = FakeIbm::start();
    f.with(|s| {
        s.import_polls = 0;
        s.page_size = 1;
    });
    f.add_image("disk");
    let mut o = vpc_order("disk", "vm");
    o.subnet = Some("other-subnet".into());
    let d = order(&f, Cloud::Vpc, o).unwrap();
    assert_eq!(d.status, "running");
    let starts = f.with(|s| {
        s.requests
            .iter()
            .filter(|r| {
                r.path == "/v1/subnets" && r.query.iter().any(|(k, v)| k == "start" && v == "1")
            })
            .count()
    });
    assert_eq!(starts, 1);
}
