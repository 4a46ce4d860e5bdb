//! The README's "From Rust" program, complete: two nodes in one process find each other on
//! loopback, one calls the other by name, and a message goes from one to the other.
//!
//! Run: `cargo run -p starling-examples --bin hello [PORT]` (PORT: default 4783).

use std::time::Duration;

use starling::prelude::*;
use tokio::time::timeout;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port = std::env::args().nth(1).map_or(Ok(starling::runtime::DEFAULT_PORT), |p| p.parse())?;
    // A real mesh shares one key: NetworkKey::parse(&std::fs::read_to_string("net.key")?)?
    let key = NetworkKey::generate();
    // Loopback by default; .interface("wlan0") (or an Ipv4Addr) for a real network.
    let kitchen = NodeBuilder::new(key.clone()).name("kitchen").port(port).open().await?;
    let display = NodeBuilder::new(key).name("display").port(port).open().await?;

    // Subscribed first: the filter is announced at once, so by the time the call below is answered
    // kitchen knows that display wants home/+/temp and its reliable publish waits for display.
    let mut sub = display.subscribe("home/+/temp").await?; // also a Stream of messages
    kitchen.serve("relay.set", |req| async move { Ok(req.payload) }).await?;
    // By name (or NodeId): waits, within the timeout, for a node named "kitchen" to be up.
    let reply = display.call("kitchen", "relay.set", vec![1], Duration::from_secs(10)).await?;
    println!("relay.set answered {reply:?}");

    kitchen.publish("home/kitchen/temp", b"21.5".to_vec()).reliable().await?; // acked by every subscriber
    let msg = timeout(Duration::from_secs(5), sub.recv()).await?.ok_or("the node shut down")?;
    println!("{} from {} ({:?}): {}", msg.topic, msg.from, msg.from_name, String::from_utf8_lossy(&msg.payload));

    for peer in display.peers().await? {
        println!("display sees {} ({})", peer.name, peer.id);
    }
    kitchen.close().await?;
    display.close().await?;
    Ok(())
}
