//! `starling twin`: the ESP32-C3 firmware's application, run on the host over real UDP.
//!
//! It reads the same provisioning blob (network key or identity and allowlist), runs the same [`Device`] logic (readings, `info`,
//! `gpio.set`, `config.get`, `reboot`) with the same core bounds ([`starling_device::core_config`]) and
//! lease block, over a simulated board, so tests exercise the firmware's behaviour against host
//! nodes, the CLI and the gateway. The packet-number lease goes to a state file (the firmware
//! keeps it in flash with `starling_device::lease`). A `reboot` call restarts the node in
//! process from that state file, as the board restarts from flash.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use starling::runtime::{self, NodeBuilder, PeerEvent, Request};
use starling::Config;
use starling_device::provision::{GpioPin, ProvisionError};
use starling_device::retry::backoff;
use starling_device::{Board, Device, Membership, Provisioning, METHODS};

/// Arguments of `starling twin`.
#[derive(Args, Debug)]
pub struct TwinArgs {
    /// The provisioning blob, as written by `starling provision`.
    pub blob: PathBuf,
    /// State file keeping the node id and packet-number lease across restarts (the firmware's
    /// flash lease log). Without it every start is a new node.
    #[arg(long, value_name = "FILE")]
    pub state: Option<PathBuf>,
    /// Network interface address (the firmware uses its Wi-Fi address).
    #[arg(short, long, default_value = "127.0.0.1")]
    pub interface: Ipv4Addr,
}

/// A host stand-in for the ESP32-C3: plausible, changing readings and a remembered output.
#[derive(Debug, Default)]
pub struct SimBoard {
    ticks: u32,
    output: Option<bool>,
}

impl Board for SimBoard {
    fn temperature_c(&mut self) -> Option<f32> {
        self.ticks = self.ticks.wrapping_add(1);
        Some(24.0 + (self.ticks % 10) as f32 / 10.0)
    }

    fn rssi_dbm(&mut self) -> Option<i32> {
        Some(-55 - (self.ticks % 5) as i32)
    }

    fn free_heap(&mut self) -> Option<usize> {
        Some(150_000 - (self.ticks % 7) as usize * 64)
    }

    fn set_output(&mut self, pin: GpioPin, on: bool) -> Result<(), &'static str> {
        println!("twin: GPIO{} {}", pin.pin, if on { "on" } else { "off" });
        self.output = Some(on);
        Ok(())
    }

    fn platform(&self) -> &'static str {
        "host-twin"
    }
}

/// The firmware's core bounds on top of the runtime's defaults, network-key mode.
fn psk_bounds(c: &mut Config) {
    embedded_bounds(c, false)
}

/// The firmware's core bounds on top of the runtime's defaults, identity mode.
fn identity_bounds(c: &mut Config) {
    embedded_bounds(c, true)
}

fn embedded_bounds(c: &mut Config, identity: bool) {
    let e = starling_device::core_config(&c.name, c.rng_seed, c.beacon_interval, identity);
    c.max_peers = e.max_peers;
    c.response_cache_lifetime = e.response_cache_lifetime;
    c.max_subscriptions = e.max_subscriptions;
    c.max_events = e.max_events;
    c.max_queued_bytes = e.max_queued_bytes;
    c.lease_block = e.lease_block;
    c.max_message = e.max_message;
    c.streams = e.streams;
    c.max_pending_calls = e.max_pending_calls;
    c.response_cache_entries = e.response_cache_entries;
}

/// Runs the twin until interrupted.
pub async fn run(a: TwinArgs) -> Result<()> {
    let prov = tokio::select! {
        p = read_provisioning(&a.blob) => p,
        _ = crate::signals::terminated() => return Ok(()),
    };
    let board = Arc::new(Mutex::new(SimBoard::default()));
    loop {
        match boot(&a, &prov, &board).await? {
            Exit::Reboot => println!("twin: rebooting"),
            Exit::Interrupted => return Ok(()),
        }
    }
}

/// As the firmware does: while the blob is missing or refused, says why on stderr and reads it
/// again with growing pauses (0.5 s up to 10 s here, 5 s up to 60 s on the board).
async fn read_provisioning(path: &std::path::Path) -> Provisioning {
    let mut attempt = 0;
    loop {
        let why = match std::fs::read(path) {
            Ok(bytes) => match Provisioning::decode(&bytes) {
                Ok(p) => return p,
                Err(e) => e.to_string(),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => ProvisionError::Missing.to_string(),
            Err(e) => format!("cannot read it: {e}"),
        };
        let wait = backoff(attempt, Duration::from_millis(500), Duration::from_secs(10));
        eprintln!("twin: provisioning {}: {why}; reading it again in {} ms", path.display(), wait.as_millis());
        attempt += 1;
        tokio::time::sleep(wait).await;
    }
}

enum Exit {
    Reboot,
    Interrupted,
}

async fn boot(a: &TwinArgs, prov: &Provisioning, board: &Arc<Mutex<SimBoard>>) -> Result<Exit> {
    // As the firmware: a network key, or the device's identity and allowlist (the node id then
    // derives from the public key, and the state file must hold that id).
    let builder = match &prov.membership {
        Membership::Psk(key) => NodeBuilder::new(key.clone()),
        Membership::Identity { identity, allowlist } => NodeBuilder::identity(identity.clone(), allowlist.clone()),
    };
    let mut builder = builder
        .name(&prov.name)
        .group(prov.group)
        .port(prov.port)
        .interface(a.interface)
        .beacon_interval(prov.beacon_interval)
        .configure(if prov.membership.is_identity() { identity_bounds } else { psk_bounds });
    if let Some(s) = &a.state {
        builder = builder.state_file(s);
    }
    // After an in-process reboot the previous driver may still hold the state file's lock for
    // its linger time: retry for a bounded while.
    let mut tries = 0;
    let node = loop {
        match builder.clone().open().await {
            Ok(n) => break n,
            Err(e) if tries < 50 && matches!(e, runtime::Error::StateFile { .. }) => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e).context("starting the node"),
        }
    };
    let origin = tokio::time::Instant::now();
    let now = move || starling::Instant::from_micros(origin.elapsed().as_micros() as u64);
    let device = Arc::new(Mutex::new(Device::new(prov.clone(), now())));
    for method in METHODS {
        let (device, board) = (device.clone(), board.clone());
        node.serve(method, move |req: Request| {
            let reply = device.lock().expect("device lock").handle_request(
                now(),
                &req.method,
                &req.payload,
                &mut *board.lock().expect("board lock"),
            );
            async move { reply }
        })
        .await
        .context("serving")?;
    }
    println!("twin: {} up as {} epoch {}", prov.name, node.id(), node.epoch());
    let mut events = node.peer_events();
    loop {
        let wake = device.lock().expect("device lock").poll_timeout();
        let wake = origin + Duration::from_micros(wake.as_micros());
        tokio::select! {
            _ = tokio::time::sleep_until(wake) => {
                let t = now();
                if device.lock().expect("device lock").reboot_due(t) {
                    node.close().await.context("closing before the reboot")?;
                    return Ok(Exit::Reboot);
                }
                let readings = device.lock().expect("device lock").poll_readings(t, &mut *board.lock().expect("board lock"));
                for r in readings {
                    // As on the board: a reading that cannot go out is reported, the rest goes on.
                    if let Err(e) = node.publish(&r.topic, r.payload).await {
                        eprintln!("twin: publishing {}: {e}", r.topic);
                    }
                }
            }
            Ok(e) = events.recv() => match e {
                PeerEvent::Up(p) => println!("twin: peer up {} ({})", p.name, p.id),
                PeerEvent::Restarted(p) => println!("twin: peer restarted {} ({})", p.name, p.id),
                PeerEvent::Down { id, reason } => println!("twin: peer down {id} ({reason:?})"),
                PeerEvent::IdConflict { addr } => eprintln!("twin: another node at {addr} uses this id"),
                _ => {}
            },
            _ = crate::signals::terminated() => {
                node.close().await.context("closing")?;
                return Ok(Exit::Interrupted);
            }
        }
    }
}
