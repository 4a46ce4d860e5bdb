//! The library API over real loopback sockets: calls by node name, `NetworkKey::generate`,
//! `NodeBuilder::configure` with a closure, and interfaces by name.

#![cfg(feature = "std")]

mod common;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use common::mesh::isolated_mesh;
use starling::prelude::*;
use starling::SubscribeError;
use tokio::time::timeout;

fn builder(key: &NetworkKey, mesh: (Ipv4Addr, u16), name: &str) -> NodeBuilder {
    NodeBuilder::new(key.clone()).name(name).group(mesh.0).port(mesh.1).beacon_interval(Duration::from_millis(300))
}

/// Every test's bound: nothing here may hang.
const LIMIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_by_name_reaches_the_node_of_that_name() {
    let (mesh, key) = (isolated_mesh(), NetworkKey::generate());
    let echo = builder(&key, mesh, "echo-1").open().await.unwrap();
    let other = builder(&key, mesh, "echo-2").open().await.unwrap();
    let caller = builder(&key, mesh, "caller").open().await.unwrap();
    echo.serve("who", |_| async { Ok(b"one".to_vec()) }).await.unwrap();
    other.serve("who", |_| async { Ok(b"two".to_vec()) }).await.unwrap();
    let reply = timeout(LIMIT, caller.call("echo-1", "who", Vec::new(), Duration::from_secs(10))).await.unwrap();
    assert_eq!(reply.unwrap(), b"one");
    let name = String::from("echo-2");
    let reply = timeout(LIMIT, caller.call(&name, "who", Vec::new(), Duration::from_secs(10))).await.unwrap();
    assert_eq!(reply.unwrap(), b"two");
    // An id still works, and resolves to itself.
    assert_eq!(caller.resolve(echo.id(), Duration::ZERO).await.unwrap(), echo.id());
    assert_eq!(caller.call(echo.id(), "who", Vec::new(), Duration::from_secs(10)).await.unwrap(), b"one");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_by_name_waits_for_the_node_to_appear() {
    let (mesh, key) = (isolated_mesh(), NetworkKey::generate());
    let caller = builder(&key, mesh, "caller").open().await.unwrap();
    let later = {
        let key = key.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let node = builder(&key, mesh, "late").open().await.unwrap();
            node.serve("ping", |_| async { Ok(b"pong".to_vec()) }).await.unwrap();
            node
        })
    };
    let started = Instant::now();
    let reply = timeout(LIMIT, caller.call("late", "ping", Vec::new(), Duration::from_secs(10))).await.unwrap();
    assert_eq!(reply.unwrap(), b"pong");
    assert!(started.elapsed() >= Duration::from_millis(400), "it cannot have answered before it existed");
    later.await.unwrap().close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_to_an_unknown_name_fails_within_its_timeout() {
    let (mesh, key) = (isolated_mesh(), NetworkKey::generate());
    let caller = builder(&key, mesh, "caller").open().await.unwrap();
    let _someone = builder(&key, mesh, "someone").open().await.unwrap();
    let started = Instant::now();
    let err = timeout(LIMIT, caller.call("nobody", "ping", Vec::new(), Duration::from_millis(600)))
        .await
        .unwrap()
        .unwrap_err();
    let waited = started.elapsed();
    assert!(matches!(err, Error::NoSuchNode { ref name, .. } if name == "nobody"), "{err:?}");
    assert!(waited >= Duration::from_millis(550) && waited < Duration::from_secs(3), "{waited:?}");
    assert_eq!(err.to_string(), "no node named 'nobody' appeared within 600ms");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_two_nodes_carry_is_ambiguous() {
    let (mesh, key) = (isolated_mesh(), NetworkKey::generate());
    let caller = builder(&key, mesh, "caller").open().await.unwrap();
    let a = builder(&key, mesh, "twin").open().await.unwrap();
    let b = builder(&key, mesh, "twin").open().await.unwrap();
    let both = || async { caller.peers().await.unwrap().iter().filter(|p| p.name == "twin").count() == 2 };
    let end = Instant::now() + Duration::from_secs(10);
    while !both().await {
        assert!(Instant::now() < end, "both twins should be seen");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let err = caller.call("twin", "ping", Vec::new(), Duration::from_secs(2)).await.unwrap_err();
    let mut ids = vec![a.id(), b.id()];
    ids.sort();
    assert!(matches!(err, Error::AmbiguousName { ref name, ids: ref got } if name == "twin" && *got == ids), "{err:?}");
    assert_eq!(err.to_string(), format!("2 nodes are named 'twin'; call one by id: {}, {}", ids[0], ids[1]));
}

#[test]
fn target_text_is_an_id_only_with_16_hex_digits() {
    let id: NodeId = "00000000000000ab".parse().unwrap();
    assert_eq!(Target::parse("00000000000000ab"), Target::Id(id));
    assert_eq!(Target::parse("ab"), Target::Name("ab".into()));
    assert_eq!(Target::parse("echo-1"), Target::Name("echo-1".into()));
    assert_eq!(Target::from("00000000000000ab"), Target::Name("00000000000000ab".into()));
}

#[test]
fn generate_gives_distinct_random_keys() {
    let keys: Vec<[u8; 32]> = (0..8).map(|_| *NetworkKey::generate().as_bytes()).collect();
    for (i, k) in keys.iter().enumerate() {
        assert_ne!(k, &[0u8; 32]);
        assert!(keys[i + 1..].iter().all(|other| other != k), "key {i} repeated");
    }
}

fn small(c: &mut Config) {
    c.max_subscriptions = 2;
}

fn large(c: &mut Config) {
    c.max_subscriptions = 50;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configure_takes_capturing_closures_and_fns() {
    let (mesh, key) = (isolated_mesh(), NetworkKey::generate());
    // A closure that captures by copy, and one that moves a String out (an FnOnce).
    let max = 3;
    let name = String::from("from-closure");
    let node = NodeBuilder::new(key.clone())
        .group(mesh.0)
        .port(mesh.1)
        .configure(|c| c.max_subscriptions = max)
        .configure(move |c| c.name = name)
        .open()
        .await
        .unwrap();
    let mut subs = Vec::new();
    for i in 0..max {
        subs.push(node.subscribe(&format!("t/{i}")).await.unwrap());
    }
    let err = node.subscribe("t/over").await.unwrap_err();
    assert!(matches!(err, Error::Subscribe(SubscribeError::TooMany { max: 3 })), "{err:?}");
    let watcher = builder(&key, mesh, "watcher").open().await.unwrap();
    let end = Instant::now() + Duration::from_secs(10);
    while !watcher.peers().await.unwrap().iter().any(|p| p.id == node.id() && p.name == "from-closure") {
        assert!(Instant::now() < end, "the closure's name should be announced");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Fns still work, as the gateway passes them: one of two, chosen at run time.
    for (tiny, want) in [(true, 2), (false, 50)] {
        let node = builder(&key, mesh, "fn").configure(if tiny { small } else { large }).open().await.unwrap();
        let mut subs = Vec::new();
        let err = loop {
            match node.subscribe(&format!("t/{}", subs.len())).await {
                Ok(s) => subs.push(s),
                Err(e) => break e,
            }
        };
        assert_eq!(subs.len(), want, "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_name_call_wins_over_an_earlier_configure() {
    let (mesh, key) = (isolated_mesh(), NetworkKey::generate());
    let node = NodeBuilder::new(key.clone())
        .group(mesh.0)
        .port(mesh.1)
        .configure(|c| c.name = "first".into())
        .name("second")
        .open()
        .await
        .unwrap();
    // Resolution by the later name works; nothing answers to the earlier one.
    let watcher = builder(&key, mesh, "watcher").open().await.unwrap();
    assert_eq!(watcher.resolve("second", Duration::from_secs(10)).await.unwrap(), node.id());
    assert!(matches!(watcher.resolve("first", Duration::from_millis(300)).await, Err(Error::NoSuchNode { .. })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interface_can_be_given_by_name() {
    let (mesh, key) = (isolated_mesh(), NetworkKey::generate());
    let a = builder(&key, mesh, "a").interface("lo").open().await.unwrap();
    let b = builder(&key, mesh, "b").interface(String::from("127.0.0.1")).open().await.unwrap();
    assert_eq!(a.local_addr().ip(), Ipv4Addr::LOCALHOST);
    b.serve("ping", |_| async { Ok(b"pong".to_vec()) }).await.unwrap();
    let reply = timeout(LIMIT, a.call("b", "ping", Vec::new(), Duration::from_secs(10))).await.unwrap();
    assert_eq!(reply.unwrap(), b"pong");

    let err = builder(&key, mesh, "c").interface("no-such-if0").open().await.unwrap_err();
    assert!(matches!(err, Error::Interface(_)), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("no interface named 'no-such-if0'") && text.contains("lo"), "{text}");
}
