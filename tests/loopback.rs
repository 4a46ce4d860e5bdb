//! Real sockets: several nodes in one process on loopback multicast.

use std::time::Duration;

use starling::runtime::{Node, NodeBuilder, PeerEvent};
use starling::{DownReason, NetworkKey};
use starling_integration::{eventually, isolated_mesh, random_key};
use tokio::time::timeout;

const BEACON: Duration = Duration::from_millis(300);

fn builder(key: &NetworkKey, mesh: (std::net::Ipv4Addr, u16), name: &str) -> NodeBuilder {
    NodeBuilder::new(key.clone()).name(name).group(mesh.0).port(mesh.1).beacon_interval(BEACON)
}

async fn open(key: &NetworkKey, mesh: (std::net::Ipv4Addr, u16), name: &str) -> Node {
    builder(key, mesh, name).open().await.unwrap()
}

async fn peer_names(n: &Node) -> Vec<String> {
    let mut v: Vec<String> = n.peers().await.unwrap().into_iter().map(|p| p.name).collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_discover_and_deliver_exactly_to_matching_subscribers() {
    let mesh = isolated_mesh();
    let key = random_key();
    let a = open(&key, mesh, "a").await;
    let b = open(&key, mesh, "b").await;
    let c = open(&key, mesh, "c").await;
    for (n, want) in [(&a, ["b", "c"]), (&b, ["a", "c"]), (&c, ["a", "b"])] {
        assert!(eventually(Duration::from_secs(5), || async { peer_names(n).await == want }).await, "{want:?}");
    }
    let mut sa = a.subscribe("home/+/temp").await.unwrap();
    let mut sb = b.subscribe("home/#").await.unwrap();
    let mut sc = c.subscribe("office/#").await.unwrap();

    let payload: Vec<u8> = (0..=255u8).chain([0, 0, 0xff]).collect();
    a.publish("home/kitchen/temp", payload.clone()).await.unwrap();
    b.publish("home/kitchen/empty", Vec::new()).await.unwrap();

    // b gets both (its own locally, a's over the network), in no particular order across publishers
    let mut got = Vec::new();
    for _ in 0..2 {
        got.push(timeout(Duration::from_secs(2), sb.recv()).await.unwrap().unwrap());
    }
    got.sort_by(|x, y| x.topic.cmp(&y.topic));
    assert_eq!((got[0].topic.as_str(), got[0].payload.len(), got[0].from), ("home/kitchen/empty", 0, b.id()));
    assert_eq!((got[1].topic.as_str(), &got[1].payload, got[1].from), ("home/kitchen/temp", &payload, a.id()));
    assert_eq!(got[1].from_name.as_deref(), Some("a"));
    // the publisher's own matching subscription gets it once, locally
    let m = timeout(Duration::from_secs(2), sa.recv()).await.unwrap().unwrap();
    assert_eq!((m.payload, m.from), (payload, a.id()));
    assert!(timeout(Duration::from_millis(300), sa.recv()).await.is_err(), "no duplicate for the publisher");
    assert!(timeout(Duration::from_millis(300), sc.recv()).await.is_err(), "c's filter matches nothing sent");
    assert!(timeout(Duration::from_millis(100), sb.recv()).await.is_err(), "b got exactly two messages");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_is_seen_as_restart_and_departure_as_down() {
    let mesh = isolated_mesh();
    let key = random_key();
    let dir = std::env::temp_dir().join(format!("starling-it-{}-{}", std::process::id(), mesh.1));
    let state = dir.join("b.state");
    let a = open(&key, mesh, "a").await;
    let mut events = a.peer_events();
    let b = builder(&key, mesh, "b").state_file(&state).open().await.unwrap();
    let b_id = b.id();
    assert_eq!(b.epoch(), 1);
    let up = timeout(Duration::from_secs(3), events.recv()).await.unwrap().unwrap();
    assert!(matches!(up, PeerEvent::Up(ref p) if p.id == b_id && p.epoch == 1), "{up:?}");

    // A second node cannot take the same state file while b runs.
    let clash = NodeBuilder::new(key.clone()).group(mesh.0).port(mesh.1).state_file(&state).open().await;
    let err = clash.unwrap_err().to_string();
    assert!(err.contains("in use by another running node"), "{err}");

    b.close().await.unwrap();
    let down = timeout(Duration::from_secs(2), events.recv()).await.unwrap().unwrap();
    assert_eq!(down, PeerEvent::Down { id: b_id, reason: DownReason::Left });

    let b2 = builder(&key, mesh, "b").state_file(&state).open().await.unwrap();
    assert_eq!((b2.id(), b2.epoch()), (b_id, 2), "same id, next epoch");
    let up = timeout(Duration::from_secs(3), events.recv()).await.unwrap().unwrap();
    assert!(matches!(up, PeerEvent::Up(ref p) if p.id == b_id && p.epoch == 2), "{up:?}");
    let mut sub = a.subscribe("x").await.unwrap();
    b2.publish("x", "after restart").await.unwrap();
    let m = timeout(Duration::from_secs(2), sub.recv()).await.unwrap().unwrap();
    assert_eq!(m.payload, b"after restart");
    b2.close().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_key_and_garbage_are_dropped_and_counted() {
    let mesh = isolated_mesh();
    let key = random_key();
    let a = open(&key, mesh, "a").await;
    let mut sub = a.subscribe("#").await.unwrap();
    let intruder = open(&random_key(), mesh, "intruder").await;
    intruder.publish("home/door", "open").await.unwrap();

    // Garbage straight at a's unicast socket: too short, too long, wrong version, random.
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let to = a.local_addr();
    s.send_to(&[0x10; 5], to).unwrap();
    s.send_to(&[0x10; 1300], to).unwrap();
    s.send_to(&[0x20; 64], to).unwrap();

    assert!(
        eventually(Duration::from_secs(3), || async {
            let st = a.stats().await.unwrap().core;
            st.drop_truncated >= 1
                && st.drop_oversized >= 1
                && st.drop_version >= 1
                && st.drop_foreign_network + st.drop_auth >= 2 // intruder's beacon and publish at least
        })
        .await,
        "{:?}",
        a.stats().await.unwrap()
    );
    assert!(timeout(Duration::from_millis(300), sub.recv()).await.is_err(), "nothing from the intruder is delivered");
    assert!(a.peers().await.unwrap().is_empty());
    assert!(intruder.peers().await.unwrap().is_empty());
    // the node still works
    a.publish("still/alive", "yes").await.unwrap();
    assert_eq!(timeout(Duration::from_secs(1), sub.recv()).await.unwrap().unwrap().payload, b"yes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_is_extended_durably_while_sending() {
    let mesh = isolated_mesh();
    let key = random_key();
    let dir = std::env::temp_dir().join(format!("starling-lease-{}-{}", std::process::id(), mesh.1));
    let state = dir.join("n.state");
    let rx = open(&key, mesh, "rx").await;
    let mut sub = rx.subscribe("count").await.unwrap();
    let tx = NodeBuilder::new(key.clone())
        .group(mesh.0)
        .port(mesh.1)
        .state_file(&state)
        .configure(|c| c.lease_block = 16)
        .open()
        .await
        .unwrap();
    for i in 0..200u32 {
        tx.publish("count", i.to_be_bytes().to_vec()).await.unwrap();
        if i % 20 == 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    for i in 0..200u32 {
        let m = timeout(Duration::from_secs(2), sub.recv()).await.unwrap().unwrap();
        assert_eq!(m.payload, i.to_be_bytes(), "loopback keeps one publisher's order");
    }
    let sent = tx.stats().await.unwrap().core.tx_datagrams;
    let stored = starling::PersistedState::decode(&std::fs::read(&state).unwrap()).unwrap();
    assert!(stored.lease_end >= sent, "every used packet number is covered: {} < {sent}", stored.lease_end);
    assert!(stored.lease_end <= sent + 16 + 16, "leases advance in blocks: {} vs {sent}", stored.lease_end);
    tx.close().await.unwrap();
    // the next run starts above everything the last one could have used
    let tx2 = NodeBuilder::new(key).group(mesh.0).port(mesh.1).state_file(&state).open().await.unwrap();
    assert_eq!(tx2.epoch(), 2);
    let stored2 = starling::PersistedState::decode(&std::fs::read(&state).unwrap()).unwrap();
    assert!(stored2.lease_end > stored.lease_end);
    tx2.close().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_subscription_of_overlapping_filters_gets_each_message_once() {
    let mesh = isolated_mesh();
    let key = random_key();
    let a = open(&key, mesh, "a").await;
    let b = open(&key, mesh, "b").await;
    let mut sub = b.subscribe_many(&["room/#", "room/+/temp", "room/1/temp"]).await.unwrap();
    assert!(eventually(Duration::from_secs(5), || async { peer_names(&a).await == ["b"] }).await);
    a.publish("room/1/temp", "20").await.unwrap();
    a.publish("room/2/hum", "40").await.unwrap();
    let first = timeout(Duration::from_secs(2), sub.recv()).await.unwrap().unwrap();
    let second = timeout(Duration::from_secs(2), sub.recv()).await.unwrap().unwrap();
    assert_eq!((first.topic.as_str(), second.topic.as_str()), ("room/1/temp", "room/2/hum"));
    assert!(timeout(Duration::from_millis(300), sub.recv()).await.is_err(), "no copies for the other filters");
}
