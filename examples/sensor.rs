//! A sensor node: publishes a reading every second and prints peers as they come and go.
//! Copy it as the start of your own node.
//!
//! Run: `cargo run -p starling-examples --bin sensor -- net.key [name]`
//! and watch it with `starling sub --key net.key 'sensors/#'`.

use std::time::Duration;

use starling::runtime::{NodeBuilder, PeerEvent};
use starling::NetworkKey;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let key_path =
        args.next().ok_or("usage: sensor KEY_FILE [NAME]   (make a key with `starling keygen > net.key`)")?;
    let name = args.next().unwrap_or_else(|| "sensor".to_owned());
    let key = NetworkKey::parse(&std::fs::read_to_string(&key_path)?).map_err(|e| format!("{key_path}: {e}"))?;

    // A state file keeps the node's id across restarts, so peers see a restart, not a stranger.
    let mut builder = NodeBuilder::new(key).name(&name).state_file(format!("{name}.state"));
    // The mesh's port, as the CLI takes it (STARLING_PORT), so that several meshes share a machine.
    if let Ok(port) = std::env::var("STARLING_PORT") {
        builder = builder.port(port.parse().map_err(|_| format!("STARLING_PORT={port}: not a UDP port number"))?);
    }
    let node = builder.open().await?;
    println!("{name}: id {} epoch {}", node.id(), node.epoch());
    let mut events = node.peer_events();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let topic = format!("sensors/{name}/uptime");
    let started = std::time::Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let reading = started.elapsed().as_secs().to_string();
                node.publish(&topic, reading).await?;
            }
            Ok(e) = events.recv() => match e {
                PeerEvent::Up(p) => println!("{name}: {} ({}) is up", p.name, p.id),
                PeerEvent::Restarted(p) => println!("{name}: {} restarted (epoch {})", p.name, p.epoch),
                PeerEvent::Down { id, reason } => println!("{name}: {id} is down ({reason:?})"),
                other => println!("{name}: {other:?}"),
            },
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    node.close().await?;
    Ok(())
}
