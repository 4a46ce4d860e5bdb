//! The same mesh as the main job, without MQTT, in one process: a small mesh on loopback, end to end.
//!
//! Starts three nodes (two sensors and a display) plus an intruder with the wrong key, lets them
//! discover each other, publishes text and binary readings, and prints what each node sees and
//! what the intruder's frames cost the mesh. Exits 0 only if every expected message arrived.
//!
//! Run: `cargo run --release -p starling-examples --bin demo`

use std::time::Duration;

use starling::runtime::{Node, NodeBuilder, PeerEvent, Request};
use starling::NetworkKey;
use tokio::time::timeout;

/// A port of its own so the demo never mixes with a mesh on the default port.
const PORT: u16 = 4790;

fn random_key() -> NetworkKey {
    let mut k = [0u8; 32];
    getrandom::fill(&mut k).expect("OS randomness");
    NetworkKey::from_bytes(k)
}

fn show(m: &starling::runtime::Message) {
    let name = m.from_name.as_deref().unwrap_or("?");
    match std::str::from_utf8(&m.payload) {
        Ok(t) if !m.payload.is_empty() && !t.chars().any(char::is_control) => {
            println!("display: {:<18} from {name:<8} {} B  {t}", m.topic, m.payload.len())
        }
        _ => println!("display: {:<18} from {name:<8} {} B  hex {:02x?}", m.topic, m.payload.len(), m.payload),
    }
}

async fn open(key: &NetworkKey, name: &str) -> Result<Node, Box<dyn std::error::Error>> {
    let node =
        NodeBuilder::new(key.clone()).name(name).port(PORT).beacon_interval(Duration::from_secs(1)).open().await?;
    println!("started {name:<9} id {} at {}", node.id(), node.local_addr());
    Ok(node)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let key = random_key();
    let display = open(&key, "display").await?;
    let mut peers = display.peer_events();
    let mut temps = display.subscribe("home/+/temp").await?;
    let mut frames = display.subscribe("cam/#").await?;
    let kitchen = open(&key, "kitchen").await?;
    let camera = open(&key, "camera").await?;
    let intruder = open(&random_key(), "intruder").await?;

    // Discovery: the display should see both sensors, and never the intruder.
    let mut seen = Vec::new();
    while seen.len() < 2 {
        match timeout(Duration::from_secs(3), peers.recv()).await {
            Ok(Ok(PeerEvent::Up(p))) => {
                println!("display: peer up   {} ({}) at {}", p.name, p.id, p.addr);
                seen.push(p.name);
            }
            Ok(Ok(_)) => {}
            _ => return Err("discovery did not converge within 3 s".into()),
        }
    }

    kitchen.publish("home/kitchen/temp", "21.5").await?;
    kitchen.publish("home/kitchen/humidity", "40").await?; // matches no subscription of the display
    camera.publish("cam/1/frame", vec![0x89, b'P', b'N', b'G', 0x00, 0xff]).await?;
    camera.publish("cam/1/empty", Vec::new()).await?;
    intruder.publish("home/kitchen/temp", "99.9 (forged)").await?;

    show(&timeout(Duration::from_secs(2), temps.recv()).await?.ok_or("subscription ended")?);
    if timeout(Duration::from_millis(300), temps.recv()).await.is_ok() {
        return Err("the display accepted a message it should not have".into());
    }
    println!("display: (the intruder's forged temperature never arrived)");
    for _ in 0..2 {
        show(&timeout(Duration::from_secs(2), frames.recv()).await?.ok_or("subscription ended")?);
    }

    // Reliable delivery and a call: the display switches the kitchen's relay.
    let mut states = display.subscribe("home/kitchen/relay").await?;
    kitchen
        .serve("relay.set", |req: Request| async move {
            match req.payload.as_slice() {
                b"on" | b"off" => Ok(b"done".to_vec()),
                _ => Err(b"say on or off".to_vec()),
            }
        })
        .await?;
    let reply = display.call(kitchen.id(), "relay.set", "on", Duration::from_secs(2)).await?;
    println!("display: called kitchen relay.set(on) -> {}", String::from_utf8_lossy(&reply));
    match display.call(kitchen.id(), "relay.set", "maybe", Duration::from_secs(2)).await {
        Err(e) => println!("display: called kitchen relay.set(maybe) -> {e}"),
        Ok(_) => return Err("a bad argument was accepted".into()),
    }
    kitchen.publish("home/kitchen/relay", "on").reliable().await?;
    let m = timeout(Duration::from_secs(2), states.recv()).await?.ok_or("subscription ended")?;
    println!(
        "display: {} = {} (reliable, sequence {:?}, acknowledged)",
        m.topic,
        String::from_utf8_lossy(&m.payload),
        m.seq
    );

    let stats = display.stats().await?.core;
    println!(
        "display: {} datagrams in, {} accepted, {} dropped as another network, {} failed authentication",
        stats.rx_datagrams, stats.rx_accepted, stats.drop_foreign_network, stats.drop_auth
    );
    let intruder_stats = intruder.stats().await?.core;
    println!(
        "intruder: saw {} peers and {} messages",
        intruder.peers().await?.len(),
        intruder_stats.messages_delivered
    );
    if !intruder.peers().await?.is_empty() {
        return Err("the intruder discovered members".into());
    }
    for n in [kitchen, camera, intruder] {
        n.close().await?;
    }
    match timeout(Duration::from_secs(2), peers.recv()).await {
        Ok(Ok(PeerEvent::Down { id, reason })) => println!("display: peer down {id} ({reason:?})"),
        other => println!("display: expected a PeerDown, got {other:?}"),
    }
    display.close().await?;
    println!("demo ok");
    Ok(())
}
