//! AWS KMS through moto's server in IAM mode (SigV4 signatures are checked): encrypt / decrypt /
//! re-encrypt / generate round trips through the CLI, and a wrong secret gives a clear 403.

use crate::util::{Server, agent, pattern};

struct Moto {
    _server: Server,
    url: String,
}

/// moto in IAM mode plus a user's access key and a KMS key made with boto3: (server, ak, sk, key id).
fn moto() -> Option<(Moto, String, String, String)> {
    let setup = r#"kms = boto3.client("kms", endpoint_url=url, region_name="us-east-1", aws_access_key_id=k["AccessKeyId"], aws_secret_access_key=k["SecretAccessKey"])
key = kms.create_key()["KeyMetadata"]["KeyId"]
print(k["AccessKeyId"], k["SecretAccessKey"], key)"#;
    let (server, url, f) = crate::util::moto(&[], "kms:*", setup)?;
    Some((
        Moto {
            _server: server,
            url,
        },
        f[0].clone(),
        f[1].clone(),
        f[2].clone(),
    ))
}

fn aws_args<'a>(m: &'a Moto, key: &'a str) -> Vec<&'a str> {
    vec![
        "--service",
        "aws-kms",
        "--aws-region",
        "us-east-1",
        "--kms-endpoint",
        &m.url,
        "--key-id",
        key,
    ]
}

#[test]
fn aws_kms_passes_the_conformance_suite() {
    let Some((m, ak, sk, key)) = moto() else {
        return;
    };
    let kms = diskseal_agent::kms::aws::AwsKms::new(diskseal_agent::kms::aws::AwsSettings {
        region: "us-east-1".into(),
        endpoint: m.url.clone(),
        key_id: key,
        access_key_id: ak,
        secret_access_key: diskseal_agent::secret::SecretString::new(sk.clone()),
        session_token: None,
        retry: diskseal_agent::http::RetryPolicy::default(),
    });
    diskseal_agent::kms::conformance(&kms);
    assert!(
        !format!("{kms:?}").contains(&sk),
        "the secret key leaked through Debug"
    );
}

#[test]
fn aws_kms_round_trips_and_wrong_secret_is_403() {
    let Some((m, ak, sk, key)) = moto() else {
        return;
    };
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let dek = pattern(64, 7);
    std::fs::write(p.join("dek"), &dek).unwrap();
    let env = [
        ("AWS_ACCESS_KEY_ID", ak.as_str()),
        ("AWS_SECRET_ACCESS_KEY", sk.as_str()),
    ];
    let mut a = vec!["--json", "wrap", "--dek-file", "dek"];
    a.extend(aws_args(&m, &key));
    let out = agent(p, &a, &env).ok();
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    std::fs::write(p.join("w"), v["wdek"].as_str().unwrap()).unwrap();
    let mut a = vec!["unwrap", "--wdek-file", "w", "-o", "back"];
    a.extend(aws_args(&m, &key));
    agent(p, &a, &env).ok();
    assert_eq!(std::fs::read(p.join("back")).unwrap(), dek);
    // Re-encrypt, then the new blob decrypts to the same key.
    let mut a = vec!["--json", "rewrap", "--wdek-file", "w"];
    a.extend(aws_args(&m, &key));
    let out = agent(p, &a, &env).ok();
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    std::fs::write(p.join("w2"), v["wdek"].as_str().unwrap()).unwrap();
    let mut a = vec!["unwrap", "--wdek-file", "w2", "-o", "back2"];
    a.extend(aws_args(&m, &key));
    agent(p, &a, &env).ok();
    assert_eq!(std::fs::read(p.join("back2")).unwrap(), dek);
    // GenerateDataKey.
    let mut a = vec!["--json", "wrap", "--generate-to", "gen"];
    a.extend(aws_args(&m, &key));
    let out = agent(p, &a, &env).ok();
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    std::fs::write(p.join("gw"), v["wdek"].as_str().unwrap()).unwrap();
    let mut a = vec!["unwrap", "--wdek-file", "gw", "-o", "gback"];
    a.extend(aws_args(&m, &key));
    agent(p, &a, &env).ok();
    assert_eq!(
        std::fs::read(p.join("gback")).unwrap(),
        std::fs::read(p.join("gen")).unwrap()
    );
    assert_eq!(std::fs::read(p.join("gen")).unwrap().len(), 32);
    // A wrong secret: SigV4 fails, the 403 says why.
    let bad = [
        ("AWS_ACCESS_KEY_ID", ak.as_str()),
        ("AWS_SECRET_ACCESS_KEY", "wrong-secret"),
    ];
    let mut a = vec!["wrap", "--dek-file", "dek"];
    a.extend(aws_args(&m, &key));
    let out = agent(p, &a, &bad);
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("HTTP 403") && out.stderr.contains(&m.url),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("wrong-secret"));
    eprintln!("403 as the user sees it: {}", out.stderr);
    assert!(
        out.stderr.to_lowercase().contains("signature"),
        "{}",
        out.stderr
    );
    let log = std::fs::read_to_string(p.join("home/audit.jsonl")).unwrap();
    assert!(!log.contains(&sk) && !log.contains(&diskseal_agent::kms::b64(&dek)));
    assert!(!log.contains("wrong-secret"));
    // The credential recorded is the AWS access key kind, the failure with its reason.
    let events: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        events
            .iter()
            .all(|e| e["initiator"]["credential"]["type"] == "aws-access-key"),
        "{log}"
    );
    let failed = events.last().unwrap();
    assert_eq!(
        (failed["action"].as_str(), failed["outcome"].as_str()),
        (Some("kms.secrets.wrap"), Some("failure"))
    );
    assert!(
        failed["reason"]["reasonForFailure"]
            .as_str()
            .unwrap()
            .contains("403")
    );
}
