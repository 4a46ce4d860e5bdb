//! `starling provision`: writes the provisioning blob a device reads from flash (Wi-Fi, network
//! key or identity and allowlist, name, intervals), or checks one. The format is
//! `starling_device::provision`'s.

use std::io::{IsTerminal, Write};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use starling::runtime::identity_file::{read_allowlist, read_identity};
use starling_device::provision::{GpioPin, Membership, Provisioning, DEFAULT_GROUP, DEFAULT_PORT};

use crate::args::{parse_duration, resolve_key};

/// Arguments of `starling provision`.
#[derive(Args, Debug)]
pub struct ProvisionArgs {
    /// Wi-Fi network name (SSID) the device joins.
    #[arg(long, required_unless_present = "check", value_name = "SSID")]
    pub wifi_ssid: Option<String>,
    /// Wi-Fi passphrase (8-63 characters; omit for an open network). Also from STARLING_WIFI_PASS.
    #[arg(long, env = "STARLING_WIFI_PASS", value_name = "PASS", hide_env_values = true)]
    pub wifi_pass: Option<String>,
    /// Network key file, as written by `starling keygen` (or the key text in STARLING_KEY).
    #[arg(short, long, env = "STARLING_KEY_FILE", value_name = "FILE", conflicts_with = "identity")]
    pub key: Option<PathBuf>,
    /// Identity mode: the device's identity file (`starling identity new`); its secret goes into
    /// the blob. Needs --allowlist; no network key then.
    #[arg(long, value_name = "FILE", requires = "allowlist")]
    pub identity: Option<PathBuf>,
    /// Identity mode: the network's allowlist file, copied into the blob. It must list the
    /// device's public key with a publish filter covering its readings (`NAME/#`).
    #[arg(long, value_name = "FILE", requires = "identity")]
    pub allowlist: Option<PathBuf>,
    /// The device's node name; its readings go to NAME/temperature, NAME/uptime, ...
    #[arg(short, long, required_unless_present = "check")]
    pub name: Option<String>,
    /// Time between two rounds of readings.
    #[arg(long, default_value = "10s", value_parser = parse_duration, value_name = "DURATION")]
    pub interval: Duration,
    /// Mean time between beacons.
    #[arg(long, default_value = "5s", value_parser = parse_duration, value_name = "DURATION")]
    pub beacon_interval: Duration,
    /// GPIO number that `gpio.set` drives (an LED or relay); none by default.
    #[arg(long, value_name = "PIN")]
    pub gpio: Option<u8>,
    /// The output is on when the pin is low.
    #[arg(long, requires = "gpio")]
    pub gpio_active_low: bool,
    /// Multicast group of the mesh.
    #[arg(long, default_value_t = DEFAULT_GROUP)]
    pub group: Ipv4Addr,
    /// UDP port of the mesh.
    #[arg(long, default_value_t = DEFAULT_PORT)]
    pub port: u16,
    /// Write the blob to FILE instead of standard output.
    #[arg(short, long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Instead of writing a blob, check FILE (or a flash dump) and print what it holds, secrets
    /// left out, or why a device would refuse it.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["wifi_ssid", "name", "out", "identity"])]
    pub check: Option<PathBuf>,
}

/// Runs `starling provision`.
pub fn run(a: ProvisionArgs) -> Result<()> {
    if let Some(path) = &a.check {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let p = Provisioning::decode(&bytes).with_context(|| format!("{} is refused", path.display()))?;
        // Debug leaves the secrets out; in identity mode it shows the public key, network name
        // and member count.
        println!("{p:#?}");
        if let Some(why) = p.gpio.and_then(|g| g.esp32c3_refusal().map(|w| (g.pin, w))) {
            bail!("{} is refused by the ESP32-C3 firmware for gpio.set: GPIO {}: {}", path.display(), why.0, why.1);
        }
        if let Membership::Identity { identity, allowlist } = &p.membership {
            println!("node id: {}", identity.node_id());
            for e in &allowlist.entries {
                let me = if e.key == identity.public() { " (this device)" } else { "" };
                println!("member {:?} {}{me}", e.name, e.key);
            }
        }
        return Ok(());
    }
    let (Some(name), Some(ssid)) = (a.name.as_deref(), a.wifi_ssid.as_deref()) else {
        bail!("--name and --wifi-ssid are required");
    };
    let membership = match (&a.identity, &a.allowlist) {
        (Some(id_path), Some(list_path)) => {
            let (file, warning) = read_identity(id_path)?;
            if let Some(w) = warning {
                eprintln!("warning: {w}");
            }
            let allowlist = read_allowlist(list_path)?;
            Membership::Identity { identity: file.identity, allowlist }
        }
        _ => Membership::Psk(resolve_key(a.key.as_deref(), std::env::var("STARLING_KEY").ok().as_deref())?),
    };
    let mut p = Provisioning::with_membership(name, ssid, a.wifi_pass.as_deref().unwrap_or(""), membership);
    p.publish_interval = a.interval;
    p.beacon_interval = a.beacon_interval;
    p.gpio = a.gpio.map(|pin| GpioPin { pin, active_low: a.gpio_active_low });
    p.group = a.group;
    p.port = a.port;
    let blob = p.encode().map_err(|e| anyhow::anyhow!("{e}"))?;
    // The blob holds the network key (or the device's secret) and the Wi-Fi password: only its
    // owner may read it, as a key file.
    match &a.out {
        Some(path) => write_private(path, &blob).with_context(|| format!("writing {}", path.display()))?,
        None => {
            let mut out = std::io::stdout().lock();
            if out.is_terminal() {
                bail!("the blob is binary: pass --out {name}.prov (or redirect it to a file)");
            }
            private_if_file(&out);
            out.write_all(&blob).context("writing the blob to standard output")?;
        }
    }
    Ok(())
}

/// Creates (or replaces) `path` readable by its owner only, then writes `bytes`.
fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    // An existing file keeps its mode on open: narrow it too.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(bytes)
}

/// Standard output redirected to a file (`> kitchen.prov`): the shell created it readable by
/// others (umask), so narrow it to its owner; a pipe or device is left alone.
fn private_if_file(out: &std::io::StdoutLock<'_>) {
    use std::os::fd::AsFd;
    use std::os::unix::fs::PermissionsExt;
    let Ok(fd) = out.as_fd().try_clone_to_owned() else { return };
    let file = std::fs::File::from(fd);
    if file.metadata().is_ok_and(|m| m.is_file())
        && file.set_permissions(std::fs::Permissions::from_mode(0o600)).is_err()
    {
        eprintln!("warning: could not make the blob file private (it holds the key and the Wi-Fi password)");
    }
}
