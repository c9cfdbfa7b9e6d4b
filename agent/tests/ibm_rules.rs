//! The server rules the fake enforces (issue 15's list) and the agent's fixes: each test shows the agent
//! meets the rule, and that the old behaviour is refused by the fake.

use std::time::Duration;

use crate::fake_ibm::{
    ACCOUNT, API_KEY, FakeIbm, Fault, INSTANCE, KEY_ALIAS, OTHER_REGION, ROOT_KEY,
};
use diskseal_agent::http::RetryPolicy;
use diskseal_agent::import::{self, Cloud, ImportSettings};
use diskseal_agent::kms::keyprotect::{KeyProtect, KmsSettings, Service};
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
