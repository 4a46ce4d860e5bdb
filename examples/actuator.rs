//! An actuator node: serves `relay.set` (payload `0` or `1`) and `relay.get`, and publishes
//! every change of the relay reliably, so every subscriber sees each state exactly once.
//!
//! Run: `cargo run -p starling-examples --bin actuator -- net.key [name]`, then
//! `starling call --key net.key relay relay.set 1` and `starling sub --key net.key 'relays/#'`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use starling::runtime::{NodeBuilder, Request};
use starling::NetworkKey;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let key_path =
        args.next().ok_or("usage: actuator KEY_FILE [NAME]   (make a key with `starling keygen > net.key`)")?;
    let name = args.next().unwrap_or_else(|| "relay".to_owned());
    let key = NetworkKey::parse(&std::fs::read_to_string(&key_path)?).map_err(|e| format!("{key_path}: {e}"))?;
    let mut builder = NodeBuilder::new(key).name(&name).state_file(format!("{name}.state"));
    // The mesh's port, as the CLI takes it (STARLING_PORT), so that several meshes share a machine.
    if let Ok(port) = std::env::var("STARLING_PORT") {
        builder = builder.port(port.parse().map_err(|_| format!("STARLING_PORT={port}: not a UDP port number"))?);
    }
    let node = builder.open().await?;
    println!("{name}: id {}; serving relay.set and relay.get", node.id());

    let relay = Arc::new(AtomicBool::new(false));
    let (changes, mut changed) = tokio::sync::mpsc::channel::<bool>(16);
    let state = relay.clone();
    node.serve("relay.set", move |req: Request| {
        let (state, changes) = (state.clone(), changes.clone());
        async move {
            let on = match req.payload.as_slice() {
                b"1" | [1] => true,
                b"0" | [0] => false,
                _ => return Err(b"expected 0 or 1".to_vec()),
            };
            if state.swap(on, Ordering::SeqCst) != on {
                let _ = changes.send(on).await;
            }
            Ok(vec![u8::from(on)])
        }
    })
    .await?;
    let state = relay.clone();
    node.serve("relay.get", move |_req: Request| {
        let on = state.load(Ordering::SeqCst);
        async move { Ok(vec![u8::from(on)]) }
    })
    .await?;

    let topic = format!("relays/{name}/state");
    loop {
        tokio::select! {
            Some(on) = changed.recv() => {
                let r = node.publish(&topic, if on { "on" } else { "off" }).reliable().ttl(Duration::from_secs(60)).await;
                match r {
                    Ok(()) => println!("{name}: relay {} (every subscriber has it)", if on { "on" } else { "off" }),
                    Err(e) => println!("{name}: relay changed, but {e}"),
                }
            }
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    node.close().await?;
    Ok(())
}
