//! `ship`: a bundle to a running image in one resumable run — verify the bundle, wrap its key, upload
//! the image ([`crate::s3`]), import it ([`crate::import`]). Each finished step is recorded in a state
//! file (`ship-<image sha256>.json` beside the audit log), so a rerun skips it; every step is audited.
//! [`plan`] says what a run would send (the dry run). Nothing here prints: warnings and upload
//! progress go to the caller's callback.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;

use crate::audit::{self, Event};
use crate::config::Layers;
use crate::error::{Error, Result};
use crate::http::RetryPolicy;
use crate::import::{self, Cloud};
use crate::s3;

/// What to ship, and how.
#[derive(Debug, Clone)]
pub struct Request {
    /// The bundle directory.
    pub bundle: PathBuf,
    /// `ibm-vpc`, `ibm-classic` or `s3-only`.
    pub target: String,
    /// `cos://REGION/BUCKET/KEY` (IBM targets) or `s3://BUCKET/KEY`.
    pub object: String,
    /// S3 base URL override.
    pub s3_endpoint: Option<String>,
    /// VPC or SoftLayer base URL override.
    pub import_endpoint: Option<String>,
    /// Image name (default: derived from the object's name).
    pub name: Option<String>,
    /// VPC `operating_system.name` / classic `operatingSystemReferenceCode`.
    pub os: Option<String>,
    /// The root key's CRN (default: the key's own, from the KMS).
    pub key_crn: Option<String>,
    /// Upload options.
    pub upload: s3::Options,
    /// Attempts per S3 request.
    pub s3_max_attempts: u32,
    /// S3 authorisation mode: auto, hmac or iam.
    pub s3_auth: String,
    /// AWS profile.
    pub profile: Option<String>,
    /// Skip the cloud's image size rules.
    pub allow_any_size: bool,
    /// Classic: send a raw LUKS image (the 2018 flow) instead of refusing it.
    pub legacy_luks: bool,
    /// Classic: bring your own license.
    pub byol: bool,
    /// Time between import status polls.
    pub poll: Duration,
    /// Give up waiting for the import after this long.
    pub wait: Duration,
    /// `--provision`: the server to order from the imported image (its `image` is ignored).
    pub provision: Option<crate::provision::Order>,
}

/// What [`ship`] tells its caller as it goes.
#[derive(Debug)]
pub enum Note<'a> {
    /// A warning that does not stop the run (a pre-flight remark).
    Warning(String),
    /// A note of a finished step (the upload's notes, also in its audit entry).
    Remark(String),
    /// Upload progress.
    Upload(s3::Progress<'a>),
    /// `--provision`: the order about to be placed; the callback answers (none: refused).
    Confirm(
        &'a crate::provision::Prepared,
        &'a mut Option<crate::provision::Answer>,
    ),
}

/// A finished ship.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Shipped {
    /// The imported image's id (none for `s3-only`).
    pub image_id: Option<String>,
    /// The object URL as given.
    pub object: String,
    /// The image's SHA-256 (from the bundle, checked against the uploaded bytes).
    pub sha256: String,
    /// The object's ETag.
    pub etag: Option<String>,
    /// The WDEK.
    pub wdek: Option<String>,
    /// The root key version that wrapped it.
    pub key_version: Option<String>,
    /// `--provision`: the server running the image.
    pub instance: Option<crate::provision::Provisioned>,
}

use crate::records::ShipState as State;

/// Everything [`ship`] and [`plan`] work out before sending anything.
struct Prepared {
    cloud: Option<Cloud>,
    os: String,
    verified: crate::verify::Verified,
    image: PathBuf,
    target: s3::Target,
    sha: String,
    state_path: PathBuf,
    state: State,
    name: String,
    import_endpoint: String,
}

fn prepare(l: &Layers, r: &Request, on: &mut dyn FnMut(Note<'_>)) -> Result<Prepared> {
    let cloud = match r.target.as_str() {
        "s3-only" => None,
        t => Some(Cloud::parse(t)?),
    };
    if cloud.is_some() && !r.object.starts_with("cos://") {
        return Err(Error::Config(format!(
            "{}: IBM imports read cos://REGION/BUCKET/KEY objects",
            r.object
        )));
    }
    let os = match (&r.os, cloud) {
        (Some(o), _) => o.clone(),
        (None, None) => String::new(),
        (None, Some(_)) => {
            return Err(Error::Config(
                "give --os (VPC operating_system.name or classic operatingSystemReferenceCode)"
                    .into(),
            ));
        }
    };
    // The bundle: manifest, image sha256, the key unseals.
    let verified = crate::verify::verify_logged(l, &r.bundle, false, false)?;
    let image = r.bundle.join(&verified.manifest.image.file);
    let region = std::env::var("AWS_REGION").ok();
    let target = s3::Target::parse(&r.object, region.as_deref(), r.s3_endpoint.as_deref())?;
    if let Some(c) = cloud {
        for w in import::preflight(
            c,
            &target.key,
            Some(&image),
            !r.allow_any_size,
            r.legacy_luks,
        )? {
            on(Note::Warning(w));
        }
    }
    let sha = verified.manifest.image.sha256.clone();
    let state_path = l
        .audit_log()
        .with_file_name(format!("ship-{}.json", &sha[..16.min(sha.len())]));
    let state: State = match std::fs::read(&state_path) {
        Ok(b) => State::parse(&b).map_err(|e| {
            Error::Config(format!(
                "ship state {} is corrupt ({e}); delete it to start over",
                state_path.display()
            ))
        })?,
        Err(_) => State {
            image_sha256: sha.clone(),
            target: r.target.clone(),
            object: r.object.clone(),
            ..State::default()
        },
    };
    if state.object != r.object || state.target != r.target {
        return Err(Error::Refused(format!(
            "configuration: {} records a ship of this image to {} ({}); delete it to ship elsewhere",
            state_path.display(),
            state.object,
            state.target
        )));
    }
    let name = r
        .name
        .clone()
        .unwrap_or_else(|| import::default_name(cloud, &target.key));
    if cloud == Some(Cloud::Vpc) {
        import::check_vpc_name(&name)?;
    }
    let import_endpoint = match (&r.import_endpoint, cloud) {
        (Some(e), _) => e.clone(),
        (None, Some(Cloud::Classic)) => "https://api.softlayer.com".into(),
        (None, Some(Cloud::Vpc)) => import::vpc_endpoint(&target.region, l.region())?,
        (None, None) => String::new(),
    };
    Ok(Prepared {
        cloud,
        os,
        verified,
        image,
        target,
        sha,
        state_path,
        state,
        name,
        import_endpoint,
    })
}

/// The root key CRN the import names: `--key-crn`, else the key's own from Key Protect / HPCS
/// (`GET /api/v2/keys/{id}`), which carries the account and the key id when the key is given by alias.
fn key_crn(l: &Layers, r: &Request, cloud: Option<Cloud>) -> Result<String> {
    Ok(match (&r.key_crn, cloud) {
        (Some(c), _) => c.clone(),
        (None, Some(_)) => crate::kms::keyprotect::KeyProtect::new(l.kms()?).key_crn()?,
        (None, None) => String::new(),
    })
}

fn tag(sha: &str) -> String {
    format!("ship {}", &sha[..16.min(sha.len())])
}

/// The dry run: every request a [`ship`] of `r` would send, secrets redacted, one per line; lines
/// starting with `# ` say what was checked locally. Nothing is sent.
pub fn plan(l: &Layers, r: &Request, on: &mut dyn FnMut(Note<'_>)) -> Result<Vec<String>> {
    let p = prepare(l, r, on)?;
    let (st, sha) = (&p.state, &p.sha);
    let done = |x: bool| {
        if x {
            " (done in an earlier run: skipped)"
        } else {
            ""
        }
    };
    let mut lines = vec![format!(
        "# verified {}: {} sha256 {sha}",
        r.bundle.display(),
        p.verified.manifest.image.file
    )];
    let wrap_done = done(st.wdek.is_some());
    lines.extend(l.kms_plan("wrap")?.into_iter().map(|x| x + wrap_done));
    let auth = l
        .s3_auth(
            &r.object,
            &r.s3_auth,
            r.profile.as_deref(),
            None,
            RetryPolicy::default(),
        )
        .ok()
        .map(|(a, _)| a);
    lines.extend(s3::plan(
        &p.target.url(),
        p.verified.manifest.image.file_size,
        &r.upload,
        r.s3_max_attempts,
        auth.as_ref(),
        done(st.uploaded_etag.is_some()),
    )?);
    if let Some(cloud) = p.cloud {
        let key_crn = match &r.key_crn {
            Some(c) => c.clone(),
            None => {
                let k = l.kms()?;
                lines.push(format!(
                    "GET  {}/api/v2/keys/{} (the key's CRN; Authorization: Bearer <redacted>)",
                    k.endpoint, k.key_id
                ));
                "<the key's CRN>".into()
            }
        };
        let s = import::ImportSettings {
            cloud,
            endpoint: p.import_endpoint.trim_end_matches('/').to_owned(),
            iam_endpoint: l.iam_endpoint(),
            api_key: crate::secret::SecretString::new(String::new()),
            name: p.name.clone(),
            cos_uri: r.object.clone(),
            os: p.os.clone(),
            wdek: String::new(),
            key_crn,
            byol: r.byol,
            tag: tag(sha),
            poll: r.poll,
            timeout: r.wait,
            retry: RetryPolicy::default(),
        };
        let wdek = if st.wdek.is_some() {
            "<WDEK from the earlier wrap>"
        } else {
            "<WDEK from the wrap>"
        };
        let import_done = done(st.image_id.is_some());
        lines.extend(import::plan(&s, wdek).into_iter().map(|x| x + import_done));
        if let Some(o) = &r.provision {
            let s = provision_settings(
                l,
                cloud,
                &p.import_endpoint,
                r,
                o,
                "<the imported image>".into(),
                None,
            );
            lines.extend(crate::provision::plan(&s, &l.iam_endpoint())?);
        }
    }
    Ok(lines)
}

/// Ships `r`: wrap, upload, import, each once across reruns; every step is audited to `l`'s log, and
/// then the ship's outcome (`diskseal.ship`: success, failure or refused, with the credentials used).
pub fn ship(l: &Layers, r: &Request, on: &mut dyn FnMut(Note<'_>)) -> Result<Shipped> {
    let mut used = Vec::new();
    let s = steps(l, r, on, &mut used);
    used.sort();
    used.dedup();
    let outcome = match &s {
        Ok(_) => audit::Outcome::Success,
        Err(Error::Refused(_)) => audit::Outcome::Refused,
        Err(_) => audit::Outcome::Failure,
    };
    audit::log(
        l,
        Event {
            action: "diskseal.ship".into(),
            outcome,
            credential: used.join("+"),
            reason_code: match &s {
                Ok(_) => 200,
                Err(Error::Remote(k)) => k.reason_code(),
                Err(_) => 0,
            },
            failure: s.as_ref().err().map(ToString::to_string),
            target_id: r.object.clone(),
            target_type: "image".into(),
            image_sha256: s.as_ref().ok().map(|s| s.sha256.clone()),
            details: match &s {
                Ok(s) => {
                    json!({"target": r.target, "image_id": s.image_id, "etag": s.etag, "instance_id": s.instance.as_ref().map(|i| &i.id)})
                }
                Err(_) => json!({"target": r.target}),
            },
            ..Event::default()
        },
    )?;
    s
}

/// The steps of [`ship`]; `used` collects the kinds of credential they used.
fn steps(
    l: &Layers,
    r: &Request,
    on: &mut dyn FnMut(Note<'_>),
    used: &mut Vec<String>,
) -> Result<Shipped> {
    let p = prepare(l, r, on)?;
    let Prepared {
        cloud,
        os,
        verified,
        image,
        target,
        sha,
        state_path,
        mut state,
        name,
        import_endpoint,
    } = p;
    let st = &mut state;
    let save = |st: &State| -> Result<()> {
        s3::write_atomically(
            &state_path,
            &serde_json::to_vec_pretty(st).unwrap_or_default(),
        )
        .map_err(|e| Error::io("write ship state", &state_path, e))
    };
    // 1. Wrap (once).
    if st.wdek.is_none() {
        let kms = l.wrapper()?;
        used.push(l.kms_credential());
        let w = kms.wrap(&verified.key);
        audit::log_kms(
            l,
            "kms.secrets.wrap",
            kms.as_ref(),
            w.as_ref()
                .map(|w| w.correlation_id.clone())
                .map_err(Clone::clone),
            Some(sha.clone()),
            json!({"bundle": r.bundle, "ship": true}),
        )?;
        let w = w?;
        st.wdek = Some(w.ciphertext);
        st.key_version = w.key_version;
        save(st)?;
    }
    drop(verified);
    // 2. Upload (once; resumable inside).
    if st.uploaded_etag.is_none() {
        let retry = RetryPolicy {
            max_attempts: r.s3_max_attempts.max(1),
            ..RetryPolicy::default()
        };
        let (auth, _) = l.s3_auth(&r.object, &r.s3_auth, r.profile.as_deref(), None, retry)?;
        let credential = auth.credential();
        used.push(credential.into());
        let client = s3::Client::new(target.clone(), auth, retry);
        // The object must not exist unless --force; once this ship has started its upload, a rerun
        // replaces what it finds (a run killed after the upload completed but before the state said so).
        if !st.upload_started {
            if !r.upload.force
                && let Some((size, _)) = client.head()?
            {
                return Err(Error::Refused(format!(
                    "upload: {} already exists ({size} bytes); use --force to overwrite it",
                    target.url()
                )));
            }
            st.upload_started = true;
            save(st)?;
        }
        let o = s3::Options {
            force: true,
            ..r.upload.clone()
        };
        let u = s3::upload(&client, &image, &o, &mut |p| on(Note::Upload(p)));
        audit::log(l, Event {
            action: "diskseal.object.upload".into(),
            outcome: audit::Outcome::of(u.is_ok()),
            credential: credential.into(),
            reason_code: if u.is_ok() { 200 } else { 0 },
            failure: u.as_ref().err().map(ToString::to_string),
            target_id: target.url(),
            target_type: "s3/object".into(),
            image_sha256: Some(sha.clone()),
            details: u.as_ref().map_or(json!({"file": image}), |u| json!({"file": image, "size": u.size, "etag": u.etag, "parts": u.parts, "parts_uploaded": u.parts_uploaded, "resumed": u.resumed, "notes": u.notes})),
            ..Event::default()
        })?;
        let u = u?;
        for n in &u.notes {
            on(Note::Remark(n.clone()));
        }
        if u.sha256 != sha {
            return Err(Error::Upload(format!(
                "{}: the uploaded bytes hash to {}, the bundle says {sha}",
                image.display(),
                u.sha256
            )));
        }
        st.uploaded_etag = Some(u.etag);
        save(st)?;
        s3::forget(&image);
    }
    // 3. Import (once).
    if let Some(c) = cloud
        && st.image_id.is_none()
    {
        used.push("apikey".into());
        let key_crn = key_crn(l, r, cloud)?;
        let s = import::ImportSettings {
            cloud: c,
            endpoint: import_endpoint.trim_end_matches('/').to_owned(),
            iam_endpoint: l.iam_endpoint(),
            api_key: l.api_key()?,
            name: name.clone(),
            cos_uri: r.object.clone(),
            os: os.clone(),
            wdek: st.wdek.clone().unwrap_or_default(),
            key_crn: key_crn.clone(),
            byol: r.byol,
            tag: tag(&sha),
            poll: r.poll,
            timeout: r.wait,
            retry: RetryPolicy::default(),
        };
        let resume = match (&st.image_created, st.import_sent) {
            (Some(id), _) => import::Resume::Created(id.clone()),
            (None, true) => import::Resume::MaybeSent,
            (None, false) => import::Resume::Fresh,
        };
        let i = import::import_resuming(s, resume, |step| {
            match step {
                import::Step::Sending => st.import_sent = true,
                import::Step::Created(id) => st.image_created = Some(id.clone()),
            }
            save(st)
        });
        audit::log(
            l,
            Event {
                action: format!("diskseal.image.import.{}", r.target),
                outcome: audit::Outcome::of(i.is_ok()),
                credential: "apikey".into(),
                reason_code: if i.is_ok() { 200 } else { 0 },
                failure: i.as_ref().err().map(ToString::to_string),
                target_id: r.object.clone(),
                target_type: "image".into(),
                image_sha256: Some(sha.clone()),
                details: json!({"name": name, "endpoint": import_endpoint, "image_id": i.as_ref().ok().map(|i| i.id.clone()), "key_crn": key_crn}),
                ..Event::default()
            },
        )?;
        st.image_id = Some(i?.id);
        save(st)?;
    }
    // 4. Provision (once: the state records the server; a rerun without it looks it up by name).
    let instance = match (&r.provision, cloud) {
        (Some(o), Some(c)) => {
            let image = match (c, &st.image_created) {
                (Cloud::Classic, Some((_, Some(guid)))) => guid.clone(),
                _ => st.image_id.clone().unwrap_or_default(),
            };
            let s = provision_settings(l, c, &import_endpoint, r, o, image, Some(l.api_key()?));
            let known = st.instance_id.clone();
            let mut confirm = |p: &crate::provision::Prepared| {
                for w in &p.warnings {
                    on(Note::Warning(w.clone()));
                }
                let mut answer = None;
                on(Note::Confirm(p, &mut answer));
                answer.unwrap_or_else(|| crate::provision::Answer::Refused("not confirmed".into()))
            };
            let (_, done) = crate::provision::run(
                l,
                s,
                false,
                known,
                &mut confirm,
                &mut |step| match step {
                    crate::provision::Step::Prepared(_) => Ok(()),
                    crate::provision::Step::Sending => {
                        st.provision_sent = true;
                        save(st)
                    }
                    crate::provision::Step::Created(id, _) => {
                        st.instance_id = Some(id.to_owned());
                        save(st)
                    }
                },
                Some(sha.clone()),
            )?;
            done
        }
        _ => None,
    };
    Ok(Shipped {
        image_id: st.image_id.clone(),
        object: r.object.clone(),
        sha256: sha,
        etag: st.uploaded_etag.clone(),
        wdek: st.wdek.clone(),
        key_version: st.key_version.clone(),
        instance,
    })
}

/// The provision settings of `ship --provision`: the order `o` of the imported `image` at the import's
/// endpoint, polled as the import is.
fn provision_settings(
    l: &Layers,
    cloud: Cloud,
    endpoint: &str,
    r: &Request,
    o: &crate::provision::Order,
    image: String,
    api_key: Option<crate::secret::SecretString>,
) -> crate::provision::Settings {
    crate::provision::Settings {
        cloud,
        endpoint: endpoint.trim_end_matches('/').to_owned(),
        iam_endpoint: l.iam_endpoint(),
        api_key: api_key.unwrap_or_else(|| crate::secret::SecretString::new(String::new())),
        order: crate::provision::Order { image, ..o.clone() },
        poll: r.poll,
        timeout: r.wait,
        retry: RetryPolicy::default(),
    }
}
