//! The host runtime's socket paths over real loopback multicast: with batched calls (GSO, GRO,
//! sendmmsg, recvmmsg) and with one datagram per call (`udp_offload(false)`, the fallback), and
//! mixed, a 64 KiB message, a 64 KiB call and many small messages all arrive whole and in order.

#![cfg(feature = "std")]

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use common::mesh::isolated_mesh;
use starling::runtime::{Node, NodeBuilder};
use starling::NetworkKey;
use tokio::time::timeout;

async fn open(key: &NetworkKey, mesh: (Ipv4Addr, u16), name: &str, offload: bool) -> Node {
    NodeBuilder::new(key.clone())
        .name(name)
        .group(mesh.0)
        .port(mesh.1)
        .beacon_interval(Duration::from_millis(300))
        .udp_offload(offload)
        .open()
        .await
        .expect("open")
}

fn payload(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

async fn exchange(publisher_offload: bool, subscriber_offload: bool) {
    let mesh = isolated_mesh();
    let mut k = [0u8; 32];
    getrandom::fill(&mut k).expect("OS randomness");
    let key = NetworkKey::from_bytes(k);
    let publisher = open(&key, mesh, "pub", publisher_offload).await;
    let subscriber = open(&key, mesh, "sub", subscriber_offload).await;
    subscriber.serve("echo", |req| async move { Ok(req.payload) }).await.unwrap();
    let mut sub = subscriber.subscribe("t/#").await.unwrap();
    let case = format!("publisher offload {publisher_offload}, subscriber offload {subscriber_offload}");
    let up = async {
        while !publisher.peers().await.unwrap().iter().any(|p| p.id == subscriber.id()) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    timeout(Duration::from_secs(5), up).await.unwrap_or_else(|_| panic!("{case}: peers never met"));
    // The subscription must be known to the publisher before reliable messages wait for it.
    tokio::time::sleep(Duration::from_millis(400)).await;

    let big = payload(64 * 1024, 7);
    publisher.publish("t/big", big.clone()).reliable().await.unwrap_or_else(|e| panic!("{case}: {e}"));
    let mut handles = Vec::new();
    for i in 0..300u32 {
        let p = publisher.publish("t/small", payload(1 + (i as usize * 13) % 200, i as u8)).reliable();
        handles.push(p.submit().await.unwrap());
    }
    for h in handles {
        h.await.unwrap_or_else(|e| panic!("{case}: {e}"));
    }
    let m = timeout(Duration::from_secs(5), sub.recv()).await.unwrap().unwrap();
    assert_eq!((m.topic.as_str(), m.payload.len()), ("t/big", big.len()), "{case}");
    assert!(m.payload == big, "{case}: the 64 KiB message arrives byte for byte");
    for i in 0..300u32 {
        let m = timeout(Duration::from_secs(5), sub.recv()).await.unwrap().unwrap();
        assert_eq!(m.payload, payload(1 + (i as usize * 13) % 200, i as u8), "{case}: small message {i}");
    }
    let reply = publisher.call(subscriber.id(), "echo", big.clone(), Duration::from_secs(5)).await;
    assert!(reply.unwrap_or_else(|e| panic!("{case}: {e}")) == big, "{case}: 64 KiB echoed whole");
    let stats = publisher.stats().await.unwrap();
    assert_eq!(stats.send_errors, 0, "{case}");
    publisher.close().await.unwrap();
    subscriber.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_datagram_per_call_delivers_large_and_small_messages() {
    exchange(false, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_calls_deliver_large_and_small_messages() {
    exchange(true, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_and_plain_nodes_understand_each_other() {
    exchange(true, false).await;
    exchange(false, true).await;
}
