//! `starling provision`: writes the provisioning blob a device reads from flash (Wi-Fi, network
//! key, name, intervals), or checks one. The format is `starling_device::provision`'s.

use std::io::{IsTerminal, Write};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use starling_device::provision::{GpioPin, Provisioning, DEFAULT_GROUP, DEFAULT_PORT};

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
    #[arg(short, long, env = "STARLING_KEY_FILE", value_name = "FILE")]
    pub key: Option<PathBuf>,
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
    #[arg(long, value_name = "FILE", conflicts_with_all = ["wifi_ssid", "name", "out"])]
    pub check: Option<PathBuf>,
}

/// Runs `starling provision`.
pub fn run(a: ProvisionArgs) -> Result<()> {
    if let Some(path) = &a.check {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let p = Provisioning::decode(&bytes).with_context(|| format!("{} is refused", path.display()))?;
        println!("{p:#?}");
        return Ok(());
    }
    let key = resolve_key(a.key.as_deref(), std::env::var("STARLING_KEY").ok().as_deref())?;
    let (Some(name), Some(ssid)) = (a.name.as_deref(), a.wifi_ssid.as_deref()) else {
        bail!("--name and --wifi-ssid are required");
    };
    let mut p = Provisioning::new(name, ssid, a.wifi_pass.as_deref().unwrap_or(""), key);
    p.publish_interval = a.interval;
    p.beacon_interval = a.beacon_interval;
    p.gpio = a.gpio.map(|pin| GpioPin { pin, active_low: a.gpio_active_low });
    p.group = a.group;
    p.port = a.port;
    let blob = p.encode().map_err(|e| anyhow::anyhow!("{e}"))?;
    match &a.out {
        Some(path) => std::fs::write(path, &blob).with_context(|| format!("writing {}", path.display()))?,
        None => {
            let mut out = std::io::stdout().lock();
            if out.is_terminal() {
                bail!("the blob is binary: redirect it to a file (`> {name}.prov`) or pass --out FILE");
            }
            out.write_all(&blob).context("writing the blob to standard output")?;
        }
    }
    Ok(())
}
