//! Crash safety of `ship` (issue #9 item 3, issue #16 item 13): SIGKILL at seeded-random points while
//! it works, then a rerun finishes the job: the object has the bundle's sha256, the cloud saw exactly
//! one image created, a key the state records as wrapped is not wrapped again, the object was completed
//! once and no part was sent again but those in flight at a kill (counted by
//! [`S3Like`], a proxy in front of moto that forgets completed uploads as S3 does), and the state and audit files are whole
//! after every kill.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use diskseal::profile::Profile;

use crate::fake_ibm::FakeIbm;
use crate::ship::ship_args_to;
use crate::upload::{S3Like, ShipWorld, remote_sha256};
use crate::util::agent;

/// xorshift64*: a small seeded generator, so a failing trial can be replayed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1)
    }
}

/// The default seed; `DISKSEAL_CRASH_SEED=N` tries another.
const SEED: u64 = 0x5eed_d15c_5ea1_0009;
const TRIALS: usize = 24;
/// Part size and parallel parts of every ship.
const PART: u64 = 64 << 10;
const JOBS: usize = 2;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// The ship state file in `home`, if any, parsed (it must always parse).
fn ship_state(home: &Path) -> Option<serde_json::Value> {
    let e = std::fs::read_dir(home).ok()?.flatten().find(|e| {
        let n = e.file_name().to_string_lossy().into_owned();
        n.starts_with("ship-") && n.ends_with(".json")
    })?;
    let text = std::fs::read(e.path()).unwrap();
    Some(serde_json::from_slice(&text).unwrap_or_else(|err| {
        panic!(
            "{} is corrupt ({err}): {}",
            e.path().display(),
            String::from_utf8_lossy(&text)
        )
    }))
}

fn wraps(f: &FakeIbm) -> usize {
    f.with(|s| {
        s.kp_log
            .iter()
            .filter(|(u, _, _)| u.contains("/actions/wrap"))
            .count()
    })
}

#[test]
fn ship_killed_at_random_points_resumes_without_duplicate_imports_or_needless_rewraps() {
    let Some(w) = ShipWorld::start(2) else { return };
    let (s3, f, p) = (&w.s3, &w.f, w.p());
    let counter = S3Like::start(&s3.url, 0);
    let identity = p.join("home/identity.txt");
    let bundles = [
        (
            Profile::IbmClassicVhd,
            "ibm-classic",
            "disk.vhd-0.vhd",
            "UBUNTU_22_64",
        ),
        (Profile::IbmVpc, "ibm-vpc", "disk.qcow2", "debian-12-amd64"),
    ]
    .map(|(profile, target, file, os)| {
        let dir = p.join(target);
        std::fs::create_dir(&dir).unwrap();
        let b = w.bundle(&dir, profile);
        let m: serde_json::Value =
            serde_json::from_slice(&std::fs::read(b.join("manifest.json")).unwrap()).unwrap();
        let sha = m["image"]["sha256"].as_str().unwrap().to_owned();
        let size = m["image"]["file_size"].as_u64().unwrap();
        (b, target, file, os, sha, size)
    });
    let env = s3.ship_env();
    // Each trial ships a fresh copy of a bundle (the upload state lives beside the image) from a fresh
    // agent home holding the same identity, to its own object and image name.
    let setup = |t: &str, which: usize| {
        let (b, target, file, os, sha, _) = &bundles[which];
        let dir = p.join(t);
        copy_dir(b, &dir.join("bundle"));
        std::fs::create_dir_all(dir.join("home")).unwrap();
        std::fs::copy(&identity, dir.join("home/identity.txt")).unwrap();
        let object = format!("cos://us-south/bkt/{t}/{file}");
        let key = format!("{t}/{file}");
        (dir, *target, object, key, *os, sha.clone())
    };
    let argv = |dir: &Path, target: &str, object: &str, os: &str, name: &str| -> Vec<String> {
        let bundle = dir.join("bundle");
        let mut a: Vec<String> = ship_args_to(
            target,
            object,
            os,
            bundle.to_str().unwrap(),
            &counter.url,
            &f.url,
        )
        .into_iter()
        .map(str::to_owned)
        .collect();
        a.extend(
            [
                "--name",
                name,
                "--part-size",
                &PART.to_string(),
                "--jobs",
                &JOBS.to_string(),
            ]
            .map(str::to_owned),
        );
        a
    };
    // How long an uninterrupted ship takes, per target: kills land within that.
    let mut full_ms = [0u64; 2];
    for (which, ms) in full_ms.iter_mut().enumerate() {
        let t = format!("base{which}");
        let (dir, target, object, _, os, _) = setup(&t, which);
        let a = argv(&dir, target, &object, os, &t);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let t0 = Instant::now();
        agent(&dir, &a, &env).ok();
        *ms = t0.elapsed().as_millis() as u64;
    }
    let seed = std::env::var("DISKSEAL_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(SEED);
    let mut rng = Rng(seed | 1);
    let started = Instant::now();
    let mut kills = 0;
    // Kills seen after: nothing recorded, wrapped, upload started, import sent, image created.
    let mut phases = [0u32; 5];
    let mut resent = 0;
    for trial in 0..TRIALS {
        let which = trial % 2;
        let t = format!("t{trial}");
        let (dir, target, object, key, os, sha) = setup(&t, which);
        let a = argv(&dir, target, &object, os, &t);
        let home = dir.join("home");
        let mut wrapped_before: Option<usize> = None;
        let mut trial_kills = 0;
        for _ in 0..1 + rng.below(2) {
            let delay = rng.below(full_ms[which]);
            let mut child = Command::new(env!("CARGO_BIN_EXE_diskseal-agent"))
                .args(&a)
                .current_dir(&dir)
                .env_remove("IBMCLOUD_API_KEY")
                .env("DISKSEAL_AGENT_HOME", &home)
                .envs(env)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            std::thread::sleep(Duration::from_millis(delay));
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            kills += 1;
            trial_kills += 1;
            // Whole after every kill: the state parses, the audit chain verifies.
            let st = ship_state(&home);
            let log = home.join("audit.jsonl");
            if log.exists() {
                diskseal_agent::audit::verify(&log).unwrap_or_else(|e| {
                    panic!("trial {trial} (seed {seed:#x}, {delay} ms): audit log: {e}")
                });
            }
            let phase = match &st {
                None => 0,
                Some(s) if s["image_created"].is_array() => 4,
                Some(s) if s["import_sent"] == true => 3,
                Some(s) if s["upload_started"] == true => 2,
                Some(_) => 1,
            };
            phases[phase] += 1;
            if st.is_some_and(|s| s["wdek"].is_string()) && wrapped_before.is_none() {
                wrapped_before = Some(wraps(f));
            }
        }
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let out = agent(&dir, &a, &env);
        assert_eq!(
            out.code, 0,
            "trial {trial} (seed {seed:#x}): rerun failed: {}",
            out.stderr
        );
        let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        let created = f.with(|s| s.created.iter().filter(|c| c.1 == t).count());
        assert_eq!(created, 1, "trial {trial}: images created for {t}");
        let id = f.with(|s| s.created.iter().find(|c| c.1 == t).unwrap().0.clone());
        assert_eq!(v["image_id"], id.as_str(), "trial {trial}");
        if let Some(n) = wrapped_before {
            assert_eq!(
                wraps(f),
                n,
                "trial {trial}: wrapped again though the state had the WDEK"
            );
        }
        assert_eq!(remote_sha256(s3, &key), sha, "trial {trial}: object sha256");
        // One upload: completed once; a new multipart upload only after a kill that came before the
        // first one was recorded; parts sent again only those in flight at a kill.
        let (completes, starts, parts) = counter.counts(&format!("/bkt/{t}/"));
        let needed = bundles[which].5.div_ceil(PART) as usize;
        assert_eq!(
            completes,
            1,
            "trial {trial} (seed {seed:#x}): completed {completes} times: {:#?}",
            counter.requests(&format!("/bkt/{t}/"))
        );
        assert!(
            (1..=1 + trial_kills).contains(&starts),
            "trial {trial} (seed {seed:#x}): {starts} multipart uploads after {trial_kills} kills"
        );
        assert!(
            (needed..=needed + trial_kills * JOBS).contains(&parts),
            "trial {trial} (seed {seed:#x}): {parts} part requests for {needed} parts after \
             {trial_kills} kills"
        );
        resent += parts - needed;
        diskseal_agent::audit::verify(&home.join("audit.jsonl")).unwrap();
    }
    assert_eq!(f.with(|s| s.created.len()), TRIALS + 2);
    eprintln!(
        "{TRIALS} trials, {kills} SIGKILLs (full runs {full_ms:?} ms) in {:?}; state at the kills \
         (none, wrapped, uploading, import sent, created): {phases:?}; parts sent again: {resent}",
        started.elapsed()
    );
}

/// The narrowest window: killed after the create request reached the cloud but before its answer was
/// recorded (`import_sent`, no id). The rerun finds the image by name (VPC: and key CRN; classic: and
/// the note's ship tag) instead of creating a second one; with nothing found it creates it.
#[test]
fn a_rerun_after_a_kill_between_create_and_its_record_finds_the_image_instead_of_importing_again() {
    let Some(w) = ShipWorld::start(2) else { return };
    let (s3, f, p) = (&w.s3, &w.f, w.p());
    let env = s3.ship_env();
    for (profile, target, object, os) in [
        (
            Profile::IbmClassicVhd,
            "ibm-classic",
            "cos://us-south/bkt/c/disk.vhd-0.vhd",
            "UBUNTU_22_64",
        ),
        (
            Profile::IbmVpc,
            "ibm-vpc",
            "cos://us-south/bkt/v/disk.qcow2",
            "debian-12-amd64",
        ),
    ] {
        let dir = p.join(target);
        std::fs::create_dir(&dir).unwrap();
        std::fs::create_dir(dir.join("home")).unwrap();
        std::fs::copy(p.join("home/identity.txt"), dir.join("home/identity.txt")).unwrap();
        let bundle = w.bundle(&dir, profile);
        let args = ship_args_to(
            target,
            object,
            os,
            bundle.to_str().unwrap(),
            &s3.url,
            &f.url,
        );
        let first: serde_json::Value =
            serde_json::from_str(&agent(&dir, &args, &env).ok().stdout).unwrap();
        let home = dir.join("home");
        let forget = |sent: bool| {
            let e = std::fs::read_dir(&home)
                .unwrap()
                .flatten()
                .find(|e| e.file_name().to_string_lossy().starts_with("ship-"))
                .unwrap();
            let mut st: serde_json::Value =
                serde_json::from_slice(&std::fs::read(e.path()).unwrap()).unwrap();
            st["image_created"] = serde_json::Value::Null;
            st["image_id"] = serde_json::Value::Null;
            st["import_sent"] = sent.into();
            std::fs::write(e.path(), st.to_string()).unwrap();
        };
        forget(true);
        let n = f.with(|s| s.created.len());
        let again: serde_json::Value =
            serde_json::from_str(&agent(&dir, &args, &env).ok().stdout).unwrap();
        assert_eq!(again["image_id"], first["image_id"], "{target}");
        assert_eq!(f.with(|s| s.created.len()), n, "{target}: created again");
        // The image is gone from the cloud's list (deleted, or the request never arrived): created.
        f.with(|s| {
            s.created
                .retain(|c| Some(c.0.as_str()) != first["image_id"].as_str())
        });
        forget(true);
        let third: serde_json::Value =
            serde_json::from_str(&agent(&dir, &args, &env).ok().stdout).unwrap();
        assert_ne!(third["image_id"], first["image_id"], "{target}");
        assert_eq!(f.with(|s| s.created.len()), n, "{target}");
    }
}
