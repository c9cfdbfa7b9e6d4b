//! `diskseal-agent provision` (and the order flags `ship --provision` shares): flags to a
//! [`crate::provision::Order`], the cost confirmation (`--yes`, else a question on the terminal, else
//! refused), the dry run, and the result.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

use clap::Args;
use serde_json::json;

use super::{Cli, layers_from, print, print_plan};
use crate::config::FileConfig;
use crate::error::{Error, Result};
use crate::import::{self, Cloud};
use crate::provision::{self, Answer, Order, Prepared, Step};

pub(super) const PROVISION_EXAMPLES: &str = "\
Examples:
  export IBMCLOUD_API_KEY=...
  # a VPC instance booting the imported encrypted image (names or ids):
  diskseal-agent provision --target ibm-vpc --region us-south \\
      --image my-disk --profile bx2-2x8 --subnet my-subnet --keys my-key
  # a classic virtual server from the template; first only check and price it:
  diskseal-agent provision --target ibm-classic --verify-only \\
      --image 0B5DEAF4-... --name web1 --domain example.com \\
      --datacenter dal13 --cpus 2 --memory 4096 --keys my-key";

/// The order flags `provision` and `ship --provision` share (`--profile` and the name are each
/// command's own: `ship` has `--profile` for AWS and `--name` for the image).
#[derive(Debug, Args)]
pub(super) struct OrderArgs {
    /// VPC zone, e.g. us-south-1 (default: the subnet's).
    #[arg(long, value_name = "ZONE", help_heading = "VPC order")]
    zone: Option<String>,
    /// VPC id or name (default: the subnet's).
    #[arg(long, value_name = "ID|NAME", help_heading = "VPC order")]
    vpc: Option<String>,
    /// VPC subnet id or name (required for ibm-vpc).
    #[arg(long, value_name = "ID|NAME", help_heading = "VPC order")]
    subnet: Option<String>,
    /// Root key CRN for the boot volume (default: the image's root key).
    #[arg(long, value_name = "CRN", help_heading = "VPC order")]
    boot_volume_key: Option<String>,
    /// SSH keys: VPC key ids or names, classic key ids or labels (comma-separated or repeated).
    #[arg(long, value_name = "KEY", value_delimiter = ',')]
    keys: Vec<String>,
    /// User data (cloud-init) file; never printed or logged.
    #[arg(long, value_name = "FILE")]
    user_data: Option<PathBuf>,
    /// Classic domain, e.g. example.com.
    #[arg(long, value_name = "DOMAIN", help_heading = "Classic order")]
    domain: Option<String>,
    /// Classic datacenter, e.g. dal13 (the image template must be there).
    #[arg(long, value_name = "DC", help_heading = "Classic order")]
    datacenter: Option<String>,
    /// Classic CPUs.
    #[arg(long, value_name = "N", help_heading = "Classic order")]
    cpus: Option<u32>,
    /// Classic memory in MB, e.g. 4096.
    #[arg(long, value_name = "MB", help_heading = "Classic order")]
    memory: Option<u64>,
    /// Classic: bill monthly (default hourly).
    #[arg(long, help_heading = "Classic order")]
    monthly: bool,
    /// Classic network port speed in Mbps (10, 100, 1000).
    #[arg(long, value_name = "MBPS", help_heading = "Classic order")]
    network_speed: Option<u32>,
    /// Classic post-install script URI.
    #[arg(long, value_name = "URI", help_heading = "Classic order")]
    post_install: Option<String>,
    /// Classic: SAN disk instead of local disk.
    #[arg(long, help_heading = "Classic order")]
    san: bool,
    /// Order without asking (ordering costs money: without --yes the order is shown and asked
    /// about on the terminal, and refused when there is none).
    #[arg(long)]
    yes: bool,
}

impl OrderArgs {
    /// The order for `image`, named `name`, of instance profile `profile`.
    pub(super) fn order(
        &self,
        image: String,
        name: Option<String>,
        profile: Option<String>,
    ) -> Result<Order> {
        let user_data = match &self.user_data {
            Some(p) => Some(crate::secret::SecretString::new(
                std::fs::read_to_string(p).map_err(|e| Error::io("read user data", p, e))?,
            )),
            None => None,
        };
        Ok(Order {
            image,
            name,
            keys: self.keys.clone(),
            user_data,
            profile,
            zone: self.zone.clone(),
            vpc: self.vpc.clone(),
            subnet: self.subnet.clone(),
            boot_volume_key: self.boot_volume_key.clone(),
            domain: self.domain.clone(),
            datacenter: self.datacenter.clone(),
            cpus: self.cpus,
            memory_mb: self.memory,
            monthly: self.monthly,
            network_speed: self.network_speed,
            post_install: self.post_install.clone(),
            san: self.san,
        })
    }

    /// The confirmation: `--yes`, else the question on the terminal.
    pub(super) fn confirm(&self) -> impl FnMut(&Prepared) -> Answer + use<> {
        let yes = self.yes;
        move |p: &Prepared| ask(yes, p)
    }
}

/// Asks on the terminal whether to order `p` (unless `yes`); refuses without a terminal.
fn ask(yes: bool, p: &Prepared) -> Answer {
    if yes {
        return Answer::Yes;
    }
    if !(std::io::stdin().is_terminal() && std::io::stderr().is_terminal()) {
        return Answer::Refused(
            "ordering costs money and there is no terminal to ask on: pass --yes to order without asking".into(),
        );
    }
    let mut e = std::io::stderr();
    let _ = writeln!(e, "diskseal-agent: about to order (this costs money):");
    for l in p.summary_lines() {
        let _ = writeln!(e, "  {l}");
    }
    let _ = write!(e, "Order it? [y/N] ");
    let _ = e.flush();
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
    match line.trim().to_ascii_lowercase().as_str() {
        "y" | "yes" => Answer::Yes,
        _ => Answer::Refused("declined at the prompt".into()),
    }
}

/// `ship --provision`'s flags (the order flags, and the two `ship` names differently).
#[derive(Debug, Args)]
pub(super) struct ShipProvisionArgs {
    /// After the import, order a server from the image (the order flags below) and wait until it runs.
    #[arg(long)]
    provision: bool,
    /// With --provision: the VPC instance name (default: the image's name) or classic hostname.
    #[arg(long, value_name = "NAME")]
    instance_name: Option<String>,
    /// With --provision: the VPC instance profile, e.g. bx2-2x8.
    #[arg(long, value_name = "PROFILE", help_heading = "VPC order")]
    instance_profile: Option<String>,
    #[command(flatten)]
    order: OrderArgs,
}

impl ShipProvisionArgs {
    /// The order, when --provision; refused up front when it could not be confirmed (no --yes and no
    /// terminal), before anything is wrapped or uploaded.
    pub(super) fn order(&self, dry_run: bool) -> Result<Option<Order>> {
        if !self.provision {
            return Ok(None);
        }
        let can_ask = std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
        if !(dry_run || self.order.yes || can_ask) {
            return Err(Error::Refused(
                "provision: refused: --provision orders a server, which costs money, and there is no terminal to ask on: pass --yes to order without asking; nothing was done".into(),
            ));
        }
        self.order
            .order(
                String::new(),
                self.instance_name.clone(),
                self.instance_profile.clone(),
            )
            .map(Some)
    }

    /// The answer to an order ([`crate::ship::Note::Confirm`]).
    pub(super) fn ask(&self, p: &Prepared) -> Answer {
        ask(self.order.yes, p)
    }
}

/// `provision`'s flags.
#[derive(Debug, Args)]
pub(super) struct ProvisionArgs {
    /// ibm-vpc or ibm-classic.
    #[arg(long, value_name = "TARGET")]
    target: String,
    /// VPC: the image's id or name; classic: the image template's global identifier.
    #[arg(long, value_name = "ID|NAME")]
    image: String,
    /// VPC instance name (default: the image's name); classic: the hostname (required).
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// VPC instance profile, e.g. bx2-2x8 (required for ibm-vpc).
    #[arg(long, value_name = "PROFILE", help_heading = "VPC order")]
    profile: Option<String>,
    #[command(flatten)]
    order: OrderArgs,
    /// Resolve, check and (classic: generateOrderTemplate + verifyOrder) price the order; order nothing.
    #[arg(long)]
    verify_only: bool,
    /// Print every request that would be made (secrets redacted) and stop.
    #[arg(long)]
    dry_run: bool,
    /// IBM Cloud VPC region for the default VPC endpoint (else IBMCLOUD_REGION).
    #[arg(long, value_name = "REGION")]
    region: Option<String>,
    /// VPC API base URL, for --target ibm-vpc (default: https://REGION.iaas.cloud.ibm.com).
    #[arg(long, value_name = "URL")]
    vpc_endpoint: Option<String>,
    /// SoftLayer API base URL, for --target ibm-classic (default: https://api.softlayer.com).
    #[arg(long, value_name = "URL")]
    sl_endpoint: Option<String>,
    /// IAM base URL.
    #[arg(long, value_name = "URL")]
    iam_endpoint: Option<String>,
    /// File holding the IBM Cloud API key (else IBMCLOUD_API_KEY).
    #[arg(long, value_name = "FILE")]
    api_key_file: Option<PathBuf>,
    /// Time between status polls (ms).
    #[arg(long, value_name = "MS", default_value_t = 10_000)]
    poll_ms: u64,
    /// Give up waiting for the server after this many seconds.
    #[arg(long, value_name = "S", default_value_t = 3600)]
    wait_secs: u64,
}

/// The endpoint of `cloud`: the flag of that service (the other's is refused), else the default.
pub(super) fn endpoint(
    cloud: Cloud,
    vpc: Option<&String>,
    sl: Option<&String>,
    region: Option<&str>,
) -> Result<String> {
    Ok(match (super::target_endpoint(cloud, vpc, sl)?, cloud) {
        (Some(e), _) => e.trim_end_matches('/').to_owned(),
        (None, Cloud::Classic) => "https://api.softlayer.com".into(),
        (None, Cloud::Vpc) => match region {
            Some(r) => import::vpc_endpoint(r, None)?,
            None => {
                return Err(Error::Config(
                    "give --region (or IBMCLOUD_REGION) or --vpc-endpoint for --target ibm-vpc"
                        .into(),
                ));
            }
        },
    })
}

pub(super) fn run(cli: &Cli, a: &ProvisionArgs) -> Result<()> {
    let l = layers_from(
        cli,
        FileConfig {
            api_key_file: a.api_key_file.clone(),
            iam_endpoint: a.iam_endpoint.clone(),
            region: a.region.clone(),
            ..FileConfig::default()
        },
    )?;
    let cloud = Cloud::parse(&a.target)?;
    let endpoint = endpoint(
        cloud,
        a.vpc_endpoint.as_ref(),
        a.sl_endpoint.as_ref(),
        l.region(),
    )?;
    let order = a
        .order
        .order(a.image.clone(), a.name.clone(), a.profile.clone())?;
    let poll = std::time::Duration::from_millis(a.poll_ms);
    if a.dry_run {
        let s = provision::Settings {
            cloud,
            endpoint,
            iam_endpoint: l.iam_endpoint(),
            api_key: crate::secret::SecretString::new(String::new()),
            order,
            poll,
            timeout: std::time::Duration::from_secs(a.wait_secs),
            retry: crate::http::RetryPolicy::default(),
        };
        print_plan(cli, &l, &provision::plan(&s, &l.iam_endpoint())?)?;
        return Ok(());
    }
    let s = provision::Settings {
        cloud,
        endpoint,
        iam_endpoint: l.iam_endpoint(),
        api_key: l.api_key()?,
        order,
        poll,
        timeout: std::time::Duration::from_secs(a.wait_secs),
        retry: crate::http::RetryPolicy::default(),
    };
    let mut confirm = a.order.confirm();
    let (p, done) = provision::run(
        &l,
        s,
        a.verify_only,
        None,
        &mut confirm,
        &mut |step| {
            if let Step::Prepared(p) = step {
                for w in &p.warnings {
                    eprintln!("diskseal-agent: warning: {w}");
                }
            }
            Ok(())
        },
        None,
    )?;
    match done {
        None => print(
            cli,
            json!({"verified": true, "order": p.summary_json()}),
            format!(
                "order verified, nothing ordered:\n  {}",
                p.summary_lines().join("\n  ")
            ),
        ),
        Some(d) => print(
            cli,
            serde_json::to_value(&d).unwrap_or_default(),
            format!(
                "{} {} is {}{}\n  primary IP: {}\n  boot volume key: {}",
                d.id,
                d.name,
                d.status,
                if d.adopted {
                    " (it existed already: adopted, not ordered again)"
                } else {
                    ""
                },
                d.primary_ip.as_deref().unwrap_or("(none)"),
                d.boot_volume_key.as_deref().unwrap_or(match cloud {
                    Cloud::Vpc => "(none)",
                    Cloud::Classic =>
                        "the image template's root key (classic does not show it on the guest)",
                }),
            ),
        ),
    }
    Ok(())
}

impl ProvisionArgs {
    /// The audit log's action and target for a provision that ended before its steps recorded it.
    pub(super) fn audit_action(&self) -> (String, String) {
        (
            format!("diskseal.instance.provision.{}", self.target),
            self.image.clone(),
        )
    }
}
