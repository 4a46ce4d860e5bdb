//! Measurements on the sans-IO core alone: frame overhead, sealing cost and the heap of a node
//! with many peers. No sockets: datagrams pass between nodes in memory.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use starling::crypto::NetworkKeys;
use starling::node::Destination;
use starling::wire::{NodeId, MAX_DATAGRAM};
use starling::{Boot, Config, Node};

use crate::report::Row;
use crate::star::TOPIC;
use crate::{Plan, SIZES};

/// Section of frame overhead.
pub const SECTION_OVERHEAD: &str = "frame overhead beside topic and payload (sans-IO core)";
/// Section of sealing cost.
pub const SECTION_SEAL: &str = "ChaCha20-Poly1305 seal + open of one frame body";
/// Section of heap use.
pub const SECTION_HEAP: &str = "heap of one node (sans-IO core, counting allocator)";

fn node(i: u64, key: &starling::NetworkKey) -> Node {
    let mut seed = [0u8; 32];
    seed[..8].copy_from_slice(&i.to_le_bytes());
    let config = Config::new(format!("node-{i}"), seed);
    Node::new(config, key, Boot::ephemeral(NodeId::from_u64(0x1000 + i)), starling::Instant::ZERO)
        .expect("valid config")
}

/// Drains every datagram `n` has queued.
fn drain(n: &mut Node, now: starling::Instant) -> Vec<(Destination, Vec<u8>)> {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut out = Vec::new();
    while let Ok(Some(t)) = n.poll_transmit(now, &mut buf) {
        out.push((t.destination, buf[..t.len].to_vec()));
    }
    out
}

/// Bytes per message beside topic and payload, as the core frames them.
pub fn frame_overhead() -> Vec<Row> {
    let key = crate::random_key();
    let mut rows = Vec::new();
    for size in SIZES {
        let mut n = node(1, &key);
        drain(&mut n, starling::Instant::ZERO);
        n.publish(TOPIC, &crate::payload(size, 0)).expect("publish");
        let frames = drain(&mut n, starling::Instant::ZERO);
        let bytes: usize = frames.iter().map(|f| f.1.len()).sum();
        let overhead = bytes - TOPIC.len() - size;
        rows.push(
            Row::value(
                SECTION_OVERHEAD,
                "Starling best effort, one message per datagram",
                Some(size),
                "B",
                overhead as f64,
                None,
            )
            .note(format!("{} datagram(s), {bytes} B in all", frames.len())),
        );
    }
    // Several small messages queued together share one header and tag.
    let mut n = node(2, &key);
    drain(&mut n, starling::Instant::ZERO);
    let count = 16;
    for i in 0..count {
        n.publish(TOPIC, &crate::payload(64, i)).expect("publish");
    }
    let frames = drain(&mut n, starling::Instant::ZERO);
    let bytes: usize = frames.iter().map(|f| f.1.len()).sum();
    let per = (bytes - count as usize * (TOPIC.len() + 64)) as f64 / count as f64;
    rows.push(
        Row::value(SECTION_OVERHEAD, "Starling best effort, 16 messages queued together", Some(64), "B", per, None)
            .note(format!("{} datagram(s) for {count} messages", frames.len())),
    );
    rows
}

/// Frame bodies whose sealing is timed: small, medium and the largest (no frame exceeds 1200
/// bytes, so larger messages are sealed as several such bodies).
pub const SEAL_SIZES: [usize; 3] = [64, 1024, MAX_DATAGRAM - 32];

/// Time to seal and open one frame body of each size with the backend this build selected.
pub fn seal_cost(plan: &Plan) -> Vec<Row> {
    let keys = NetworkKeys::derive(&crate::random_key());
    let sender = keys.sender_key(NodeId::from_u64(7));
    let backend = if cfg!(poly1305_force_soft) {
        "Poly1305 portable (cfg poly1305_force_soft), ChaCha20 chosen at run time"
    } else {
        "both chosen at run time (AVX2 if present)"
    };
    let mut rows = Vec::new();
    for size in SEAL_SIZES {
        let mut buf = vec![0u8; 16 + size + 16];
        let reps = (plan.iterations * 20).min(200_000_000 / (size + 64)).max(10);
        let mut runs = Vec::new();
        for _ in 0..plan.runs {
            let start = Instant::now();
            for pn in 0..reps as u64 {
                sender.seal(pn, &mut buf, 16);
                sender.open(pn, &mut buf, 16).expect("own frame opens");
            }
            runs.push(start.elapsed().as_secs_f64() * 1e6 / reps as f64);
        }
        rows.push(Row::cost(SECTION_SEAL, "Starling sender key", Some(size), "µs", &mut runs).note(backend));
    }
    rows
}

/// Heap bytes of one node that has heard from and verified `peers` peers.
pub fn heap_with(peers: usize) -> i64 {
    let key = crate::random_key();
    let mut others: Vec<Node> = (0..peers as u64).map(|i| node(100 + i, &key)).collect();
    let addr = |i: usize| SocketAddr::from((Ipv4Addr::LOCALHOST, 20_000 + i as u16));
    let me_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 19_999));
    let before = crate::heap::live();
    let mut me = crate::heap::counted(|| node(1, &key));
    let mut now = starling::Instant::ZERO;
    // Rounds of: every peer sends what it has (beacons, echoes), the node answers (challenges,
    // beacons), the peers hear the answers.
    for _ in 0..4 {
        now += Duration::from_millis(150);
        let mut to_me = Vec::new();
        for (i, o) in others.iter_mut().enumerate() {
            o.handle_timeout(now);
            for (_, d) in drain(o, now) {
                to_me.push((i, d));
            }
        }
        let replies = crate::heap::counted(|| {
            let mut buf = vec![0u8; MAX_DATAGRAM];
            let mut replies = Vec::new();
            for (i, d) in &to_me {
                me.handle_datagram(now, addr(*i), d);
            }
            me.handle_timeout(now);
            while let Ok(Some(t)) = me.poll_transmit(now, &mut buf) {
                replies.push((t.destination, buf[..t.len].to_vec()));
            }
            while me.poll_event().is_some() {}
            drop(buf);
            replies
        });
        for (dest, d) in &replies {
            for (i, o) in others.iter_mut().enumerate() {
                if *dest == Destination::Multicast || *dest == Destination::Unicast(addr(i)) {
                    o.handle_datagram(now, me_addr, d);
                }
            }
        }
        crate::heap::counted(|| drop(replies));
    }
    let up = me.peers().count();
    let bytes = crate::heap::live() - before;
    crate::heap::counted(|| drop(me));
    assert!(up == peers || peers == 0, "every peer should be up: {up} of {peers}");
    bytes
}

/// Heap of a node with 1, 16 and 128 peers.
pub fn heap_rows() -> Vec<Row> {
    if !crate::heap::installed() {
        return vec![Row::skipped(
            SECTION_HEAP,
            "Starling node",
            None,
            "the counting allocator is not installed in this binary",
        )];
    }
    [0usize, 1, 16, 128]
        .into_iter()
        .map(|n| {
            let bytes = heap_with(n) as f64;
            Row::value(SECTION_HEAP, &format!("Starling node with {n} peers"), None, "B", bytes, None).note(if n > 0 {
                format!("{:.0} B per peer beyond none", (bytes - heap_with(0) as f64) / n as f64)
            } else {
                String::new()
            })
        })
        .collect()
}
