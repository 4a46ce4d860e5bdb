//! Whole-mesh behaviour in the deterministic simulator (`tests/common/sim.rs`).
//!
//! Every test uses a fixed seed, so a failure reproduces exactly; the asserted facts are exact
//! (which node got which message, how many events, when), not just "no panic".

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::sim::{counters_add_up, open_frame, Link, NodeOpts, Sim};
use starling::topic::MAX_TOPIC_LEN;
use starling::wire::{Header, NodeId, MAX_DATAGRAM};
use starling::{Boot, Config, DownReason, Event, Instant, NetworkKey, Node, PeerInfo, PublishError};

const BEACON: Duration = Duration::from_secs(5);

/// The test's seed, or `SIM_SEED` from the environment to explore others (`SIM_SEED=7 cargo test`).
fn seed(default: u64) -> u64 {
    std::env::var("SIM_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

fn ms(v: u64) -> Instant {
    Instant::from_millis(v)
}

/// Ids of the PeerUp events in node `i`'s log.
fn peer_ups(sim: &Sim, i: usize) -> Vec<NodeId> {
    sim.events(i)
        .iter()
        .filter_map(|l| match &l.event {
            Event::PeerUp(p) => Some(p.id),
            _ => None,
        })
        .collect()
}

/// (time, reason) of every PeerDown about `id` in node `i`'s log.
fn peer_downs(sim: &Sim, i: usize, id: NodeId) -> Vec<(Instant, DownReason)> {
    sim.events(i)
        .iter()
        .filter_map(|l| match &l.event {
            Event::PeerDown { id: d, reason } if *d == id => Some((l.at, *reason)),
            _ => None,
        })
        .collect()
}

/// True when every running node in `nodes` has every other one as an up peer.
fn converged(sim: &Sim, nodes: &[usize]) -> bool {
    nodes.iter().all(|&i| {
        let peers: BTreeSet<NodeId> = sim.node(i).peers().map(|p| p.id).collect();
        nodes.iter().filter(|&&j| j != i).all(|&j| peers.contains(&sim.id(j)))
    })
}

/// 1. Five nodes starting within one second find each other in two seconds, far below the 5 s
///    beacon interval, because existing nodes answer a newcomer's beacon with an early one.
#[test]
fn discovery_converges_within_two_seconds() {
    let mut sim = Sim::new(seed(0x5eed_0001));
    let starts = [0, 230, 480, 710, 1000];
    let nodes: Vec<usize> = (0..5).map(|k| sim.add_node(&format!("node-{k}"))).collect();
    for (&i, &t) in nodes.iter().zip(&starts) {
        sim.run_until(ms(t));
        sim.start(i);
    }
    sim.run_until(ms(2000));

    for &i in &nodes {
        let got: Vec<(NodeId, String, u32, std::net::SocketAddr)> =
            sim.peers(i).into_iter().map(|p: PeerInfo| (p.id, p.name, p.epoch, p.addr)).collect();
        let mut want: Vec<_> =
            nodes.iter().filter(|&&j| j != i).map(|&j| (sim.id(j), format!("node-{j}"), 1, sim.addr(j))).collect();
        want.sort();
        assert_eq!(got, want, "peers of node {i}");
        let ups = peer_ups(&sim, i);
        assert_eq!(ups.len(), 4, "node {i} PeerUp events: {ups:?}");
        assert_eq!(ups.iter().collect::<BTreeSet<_>>(), want.iter().map(|w| &w.0).collect::<BTreeSet<_>>());
        assert!(counters_add_up(&sim.stats(i)));
        assert_eq!(sim.stats(i).dropped(), 0, "nothing is dropped on a perfect link");
    }

    // Traffic bound. A node that starts solicits for its first second: a beacon every 150 ms
    // (jittered by at most -25%, so at most 1 + 1000 / 112.5 = 9 of them), each carrying a Solicit
    // that every node answers with an early beacon, at most one per 250 ms (at most 1 + 2000 / 250
    // = 9 in 2 s). Its next periodic beacon comes at least 0.75 * 5 s = 3.75 s later, after the
    // 2 s mark. So at most 18 beacons per node, 90 for the mesh, in a burst that ends a second
    // after the last start; fewer than N + 1 would mean nobody answered a newcomer.
    let beacons: Vec<(usize, Instant)> = sim
        .tap()
        .iter()
        .filter(|s| s.at < ms(2000))
        .filter(|s| sim.open(&s.bytes).expect("own network's frame").has_beacon())
        .map(|s| (s.node, s.at))
        .collect();
    assert!(beacons.len() <= 90, "{} beacons in 2 s: {beacons:?}", beacons.len());
    assert!(beacons.len() > 5, "{} beacons in 2 s: {beacons:?}", beacons.len());
    // Besides beacons, only the freshness handshake: each node challenges each newcomer once
    // and answers each challenge once (PROTOCOL.md §3.4), and asks a peer it verified before
    // hearing its beacon for one (a unicast Solicit, §4): at most one of each per ordered pair.
    let handshake = |s: &&common::sim::Sent| {
        sim.open(&s.bytes).expect("own network's frame").records.iter().all(|r| {
            matches!(r, common::sim::Rec::Other(k) if *k == starling::wire::kind::CHALLENGE || *k == starling::wire::kind::ECHO)
                || matches!(r, common::sim::Rec::Other(k) if *k == starling::wire::kind::SOLICIT)
        })
    };
    let others = sim.tap().iter().filter(|s| s.at < ms(2000)).filter(|s| !sim.open(&s.bytes).unwrap().has_beacon());
    assert!(others.clone().all(|s| handshake(&s)), "only beacons and the freshness handshake were sent");
    let count = |kind: u8| {
        others
            .clone()
            .flat_map(|s| sim.open(&s.bytes).unwrap().records)
            .filter(|r| matches!(r, common::sim::Rec::Other(k) if *k == kind))
            .count()
    };
    use starling::wire::kind::{CHALLENGE, ECHO, SOLICIT};
    assert_eq!((count(CHALLENGE), count(ECHO)), (5 * 4, 5 * 4), "one challenge and one echo per ordered pair");
    assert!(count(SOLICIT) <= 5 * 4, "at most one unicast Solicit per ordered pair: {}", count(SOLICIT));
    for &i in &nodes {
        let own: Vec<Instant> = beacons.iter().filter(|b| b.0 == i).map(|b| b.1).collect();
        assert!((1..=18).contains(&own.len()), "node {i} sent {} beacons", own.len());
        assert_eq!(own[0], ms(starts[i]), "node {i} announces itself as it starts");
    }
}

/// 2. A publication reaches exactly the subscribers whose filter matches, byte for byte, once.
#[test]
fn publish_reaches_exactly_matching_subscribers() {
    let mut sim = Sim::new(seed(0x5eed_0002));
    let [s_plus, s_hash, s_office, s_none] = [0, 1, 2, 3].map(|k| sim.spawn(&format!("n{k}")));
    let sub_plus = sim.subscribe(s_plus, "home/+/temp");
    let sub_hash = sim.subscribe(s_hash, "home/#");
    let sub_office = sim.subscribe(s_office, "office/temp");
    sim.run_until(ms(500));
    assert!(converged(&sim, &[0, 1, 2, 3]));

    // The publisher is the `home/#` subscriber, so its own subscription matches.
    let publisher = s_hash;
    let from = sim.id(publisher);
    let binary: Vec<u8> = vec![0x00, 0xff, 0x00, 0x80, 0x7f, 0xff, 0x00, b'\n', 0xfe];
    sim.publish(publisher, "home/kitchen/temp", &binary);
    sim.publish(publisher, "home/kitchen/temp", &[]);
    sim.publish(publisher, "office/temp", &[0xff; 3]);
    sim.publish(publisher, "home/hall", b"h");
    sim.run_for(Duration::from_millis(100));

    let kitchen = |p: &[u8]| ("home/kitchen/temp".to_string(), p.to_vec(), from);
    assert_eq!(sim.messages(s_plus), vec![kitchen(&binary), kitchen(&[])]);
    assert_eq!(
        sim.messages(s_hash),
        vec![kitchen(&binary), kitchen(&[]), ("home/hall".to_string(), b"h".to_vec(), from)],
        "the publisher gets its own matching messages once (local delivery, not the looped-back copy)"
    );
    assert_eq!(sim.messages(s_office), vec![("office/temp".to_string(), vec![0xff; 3], from)]);
    assert_eq!(sim.messages(s_none), vec![]);

    for (i, sub) in [(s_plus, sub_plus), (s_hash, sub_hash), (s_office, sub_office)] {
        assert!(sim.full_messages(i).iter().all(|m| m.subscriptions == vec![sub]), "node {i}");
    }
    // Every datagram the publisher sent came back to it by loopback and was counted as its
    // own, never as a message: its only deliveries are the three local ones.
    let st = sim.stats(publisher);
    let multicast_sent = sim.tap().iter().filter(|s| s.node == publisher && s.targets.contains(&publisher)).count();
    assert_eq!(st.rx_own, multicast_sent as u64, "(unicast challenges and echoes do not loop back)");
    let from_others = sim.tap().iter().filter(|s| s.node != publisher && s.targets.contains(&publisher)).count();
    assert_eq!(st.rx_accepted, from_others as u64, "the beacons of the three others: {st:?}");
    assert_eq!(st.messages_delivered, 3, "local deliveries only");
    assert_eq!(sim.stats(s_none).messages_unmatched, 4);
    assert_eq!(sim.stats(s_none).messages_delivered, 0);
    for i in 0..4 {
        assert!(counters_add_up(&sim.stats(i)), "node {i}: {:?}", sim.stats(i));
    }
}

/// 3. A persistent node restarts: peers see the new epoch, its new messages flow, and every
///    frame of its previous boot replayed afterwards is refused as a replay.
///
///    Run twice: with the default lease block the new boot's packet numbers jump far past the
///    replay window (old frames are "too old"); with a 16-number block they stay inside it (old
///    frames are refused by the window's bitmap).
#[test]
fn restart_is_detected_and_old_frames_are_replays() {
    restart_scenario(None);
    restart_scenario(Some(16));
}

fn restart_scenario(lease_block: Option<u64>) {
    let mut sim = Sim::new(seed(0x5eed_0003));
    let a = sim.spawn("a");
    let opts = match lease_block {
        Some(n) => NodeOpts::new().config(move |c| c.lease_block = n),
        None => NodeOpts::new(),
    };
    let b = sim.add_node_with("b", opts);
    sim.start(b);
    sim.subscribe(a, "b/#");
    sim.run_until(ms(1000));
    let b_id = sim.id(b);
    sim.publish(b, "b/x", b"before-1");
    sim.run_for(Duration::from_millis(300));
    sim.publish(b, "b/x", b"before-2");
    sim.run_until(ms(7000)); // past one periodic beacon of b
    assert_eq!(sim.messages(a).len(), 2);

    let lease_before = sim.stored_state(b).expect("persistent").lease_end;
    sim.reboot(b);
    assert_eq!(sim.id(b), b_id, "same id after reboot");
    assert_eq!(sim.node(b).epoch(), 2);
    // Past the new boot's soliciting second, so only the replayed frames arrive below.
    sim.run_for(Duration::from_millis(1500));

    let restarted: Vec<&PeerInfo> = sim
        .events(a)
        .iter()
        .filter_map(|l| match &l.event {
            Event::PeerRestarted(p) => Some(p),
            _ => None,
        })
        .collect();
    assert_eq!(restarted.len(), 1, "{:?}", sim.events(a));
    assert_eq!((restarted[0].id, restarted[0].epoch, restarted[0].name.as_str()), (b_id, 2, "b"));
    assert_eq!(peer_ups(&sim, a), vec![b_id], "a restart is not a new PeerUp");
    assert!(peer_downs(&sim, a, b_id).is_empty());

    sim.publish(b, "b/x", b"after-1");
    sim.run_for(Duration::from_millis(100));
    let payloads: Vec<Vec<u8>> = sim.messages(a).into_iter().map(|m| m.1).collect();
    assert_eq!(payloads, vec![b"before-1".to_vec(), b"before-2".to_vec(), b"after-1".to_vec()]);
    // The new boot's packet numbers start past everything the old boot may have used.
    let first_new_pn = sim
        .tap()
        .iter()
        .filter(|s| s.node == b && s.boot == 2)
        .map(|s| Header::parse(&s.bytes).unwrap().pn)
        .min()
        .unwrap();
    assert_eq!(first_new_pn, lease_before);
    if let Some(block) = lease_block {
        assert!(first_new_pn < starling::replay::WINDOW_BITS && first_new_pn >= block, "{first_new_pn}");
    }

    let old: Vec<Vec<u8>> = sim.tap().iter().filter(|s| s.node == b && s.boot == 1).map(|s| s.bytes.clone()).collect();
    assert!(old.len() >= 4, "beacons and publications of the first boot: {}", old.len());
    let before = sim.stats(a);
    let now = sim.now();
    for bytes in &old {
        sim.inject(a, sim.addr(b), bytes, now);
    }
    sim.run_for(Duration::from_millis(100));
    let after = sim.stats(a);
    assert_eq!(after.drop_replay - before.drop_replay, old.len() as u64);
    assert_eq!(after.rx_accepted, before.rx_accepted);
    assert_eq!(sim.messages(a).len(), 3, "no old message delivered again");
    assert_eq!(sim.events(a).iter().filter(|l| matches!(l.event, Event::PeerRestarted(_))).count(), 1);
    assert_eq!(sim.peers(a)[0].epoch, 2, "an old beacon does not move the epoch back");
    assert!(counters_add_up(&after));
}

/// 4. A node with another network key is invisible, and every frame it sends is counted as
///    foreign (tag mismatch) or unauthentic (tag collision, one AEAD attempt) by each receiver.
#[test]
fn wrong_key_is_isolated_and_every_frame_is_counted() {
    let mut sim = Sim::new(seed(0x5eed_0004));
    let good: Vec<usize> = (0..3).map(|k| sim.add_node(&format!("good-{k}"))).collect();
    let w = sim.add_node_with("intruder", NodeOpts::new().key(NetworkKey::from_bytes([0x77; 32])));
    for &i in good.iter().chain([&w]) {
        sim.start(i);
        sim.subscribe(i, "#");
    }
    sim.run_until(ms(1000));
    for &i in good.iter().chain([&w]) {
        sim.publish(i, "chat", format!("hello from {i}").as_bytes());
    }
    sim.run_until(ms(16_000)); // three beacon rounds, and long enough for any timeout

    let w_id = sim.id(w);
    assert!(sim.peers(w).is_empty(), "intruder sees {:?}", sim.peers(w));
    assert!(sim.messages(w).iter().all(|m| m.2 == w_id), "intruder got a foreign message");
    assert_eq!(sim.messages(w).len(), 1, "only its own local delivery");
    assert!(!sim.events(w).iter().any(|l| matches!(l.event, Event::PeerUp(_))));

    // Count what each side sent to `to` that has arrived by now (one link latency, no jitter).
    let arrived = |from: &[usize], to: usize| -> u64 {
        let limit = sim.now() - sim.link.latency;
        sim.tap().iter().filter(|s| from.contains(&s.node) && s.targets.contains(&to) && s.at <= limit).count() as u64
    };
    for &i in &good {
        let w_sent = arrived(&[w], i);
        assert!(w_sent >= 4, "intruder sent {w_sent}");
        let st = sim.stats(i);
        assert!(!peer_ups(&sim, i).contains(&w_id));
        assert!(sim.messages(i).iter().all(|m| m.2 != w_id));
        assert_eq!(sim.messages(i).len(), 3, "node {i} gets the three good publications");
        assert_eq!(sim.peers(i).len(), 2);
        assert_eq!(st.drop_foreign_network + st.drop_auth, w_sent, "node {i}: {st:?}");
        assert_eq!(st.rx_datagrams, arrived(&good, i) + w_sent, "node {i} received everything sent");
        assert!(counters_add_up(&st));
    }
    let st = sim.stats(w);
    assert_eq!(st.drop_foreign_network + st.drop_auth, arrived(&good, w), "intruder: {st:?}");
    assert_eq!(st.rx_datagrams, arrived(&good, w) + arrived(&[w], w), "intruder received everything sent");
    assert_eq!(st.rx_accepted, 0);
    assert!(counters_add_up(&st));
}

/// 5. Close announces departure (PeerDown Left one link latency later); a crash is noticed by
///    timeout after about `peer_timeout_factor` beacon intervals of silence.
#[test]
fn close_is_prompt_and_crash_times_out() {
    let mut sim = Sim::new(seed(0x5eed_0005));
    let nodes = sim.spawn_many(3);
    let (observer, closer, crasher) = (nodes[0], nodes[1], nodes[2]);
    sim.run_until(ms(12_000));
    assert!(converged(&sim, &nodes));

    let closer_id = sim.id(closer);
    let t_close = sim.now();
    sim.close(closer);
    sim.run_for(Duration::from_millis(50));
    for &i in &[observer, crasher] {
        assert_eq!(peer_downs(&sim, i, closer_id), vec![(t_close + sim.link.latency, DownReason::Left)], "node {i}");
        assert!(!sim.peers(i).iter().any(|p| p.id == closer_id));
    }

    let crasher_id = sim.id(crasher);
    sim.run_for(Duration::from_millis(1234));
    sim.crash(crasher);
    let last_beacon = sim
        .tap()
        .iter()
        .filter(|s| s.node == crasher && sim.open(&s.bytes).unwrap().has_beacon())
        .map(|s| s.at)
        .max()
        .unwrap();
    sim.run_for(BEACON * 6);
    let downs = peer_downs(&sim, observer, crasher_id);
    assert_eq!(downs.len(), 1, "{downs:?}");
    let (t_down, reason) = downs[0];
    assert_eq!(reason, DownReason::Timeout);
    let silence = t_down - last_beacon;
    assert!(silence >= BEACON * 5 / 2 && silence <= BEACON * 5, "down after {silence:?} of silence");
    // Never before `peer_timeout_factor` full intervals after the last frame arrived.
    assert!(t_down >= last_beacon + sim.link.latency + BEACON * 3, "down after {silence:?}");
    // The closed node is not reported again by timeout.
    assert_eq!(peer_downs(&sim, observer, closer_id).len(), 1);
    assert!(sim.peers(observer).is_empty());
}

/// 6. Loss, duplication and reordering: discovery still converges within three beacon
///    intervals, and no message is ever delivered twice (duplicates die in the replay window).
#[test]
fn lossy_link_converges_and_never_duplicates() {
    let mut sim = Sim::new(seed(0x5eed_0006));
    sim.link =
        Link { latency: Duration::from_millis(2), jitter: Duration::from_millis(30), loss: 0.20, duplicate: 0.10 };
    let nodes: Vec<usize> = (0..5).map(|k| sim.add_node(&format!("lossy-{k}"))).collect();
    for (k, &i) in nodes.iter().enumerate() {
        sim.run_until(ms(k as u64 * 250));
        sim.start(i);
        sim.subscribe(i, "#");
    }
    let t = sim.run_until_or(Instant::ZERO + BEACON * 3, |s| converged(s, &nodes));
    assert!(
        t.is_some(),
        "no convergence within 3 beacon intervals; peers: {:?}",
        nodes.iter().map(|&i| sim.peers(i).len()).collect::<Vec<_>>()
    );

    // Each node publishes 60 numbered messages, 10 ms apart: less than the jitter, so they reorder.
    const N: u32 = 60;
    for k in 0..N {
        for &i in &nodes {
            sim.publish(i, &format!("seq/{i}"), &k.to_be_bytes());
        }
        sim.run_for(Duration::from_millis(10));
    }
    sim.run_for(Duration::from_secs(1));

    let net = sim.net_stats();
    assert!(net.duplicated > 50 && net.lost > 100, "the link did inject faults: {net:?}");
    let mut replays = 0;
    let mut inversions = 0;
    for &i in &nodes {
        let msgs = sim.messages(i);
        let mut seen = BTreeSet::new();
        let mut per_sender: BTreeMap<NodeId, Vec<u32>> = BTreeMap::new();
        for (topic, payload, from) in &msgs {
            assert!(seen.insert((topic.clone(), payload.clone(), *from)), "node {i} got {topic} {payload:?} twice");
            per_sender.entry(*from).or_default().push(u32::from_be_bytes(payload[..].try_into().unwrap()));
        }
        assert_eq!(per_sender[&sim.id(i)].len(), N as usize, "local delivery is lossless");
        for (from, seqs) in &per_sender {
            // 20% loss: 48 of 60 arrive on average (sd 3.1); 30 or fewer is 6 sd out (p < 1e-7).
            assert!(seqs.len() > 30, "node {i} got only {} from {from}", seqs.len());
            inversions += seqs.windows(2).filter(|w| w[0] > w[1]).count();
        }
        let st = sim.stats(i);
        replays += st.drop_replay;
        assert!(counters_add_up(&st), "node {i}: {st:?}");
    }
    assert!(inversions > 0, "jitter reordered some messages, and they were still delivered");
    assert!(replays > 0, "duplicated copies reached the replay window");
}

/// 7. Two devices running from the same stored state (a cloned state file): the id conflict
///    is detected by at least one of them.
#[test]
fn cloned_state_is_detected() {
    let mut sim = Sim::new(seed(0x5eed_0007));
    let other = sim.spawn("other");
    let original = sim.spawn("original");
    sim.run_until(ms(3000));
    let state = sim.stored_state(original).unwrap();
    sim.crash(original);
    let c1 = sim.add_node_with("clone-1", NodeOpts::new().state(state));
    let c2 = sim.add_node_with("clone-2", NodeOpts::new().state(state));
    sim.start(c1);
    sim.start(c2);
    assert_eq!(sim.id(c1), sim.id(c2));
    sim.run_for(BEACON * 4);

    let conflicts = |i: usize| -> Vec<std::net::SocketAddr> {
        sim.events(i)
            .iter()
            .filter_map(|l| match l.event {
                Event::NodeIdConflict { addr } => Some(addr),
                _ => None,
            })
            .collect()
    };
    let (k1, k2) = (conflicts(c1), conflicts(c2));
    assert!(!k1.is_empty() || !k2.is_empty(), "no NodeIdConflict; stats {:?} {:?}", sim.stats(c1), sim.stats(c2));
    assert!(k1.iter().all(|&a| a == sim.addr(c2)), "{k1:?}");
    assert!(k2.iter().all(|&a| a == sim.addr(c1)), "{k2:?}");
    assert!(conflicts(other).is_empty());
}

/// 8. Packet numbers never repeat per sender, across reboots and many lease renewals.
#[test]
fn packet_numbers_never_repeat_across_reboots() {
    let mut sim = Sim::new(seed(0x5eed_0008));
    let watcher = sim.spawn("watcher");
    let p = sim.add_node_with("p", NodeOpts::new().config(|c| c.lease_block = 16));
    sim.start(p);
    sim.subscribe(watcher, "#");
    let payload = vec![0xab; 1000]; // one publication per datagram
    let mut expected = 0;
    for round in 0..4 {
        for burst in 0..3 {
            for k in 0..(5 + 7 * burst) {
                sim.publish(p, "p/data", &[&payload[..], &[round, burst, k]].concat());
                expected += 1;
            }
            sim.run_for(Duration::from_millis(700));
        }
        if round < 3 {
            sim.reboot(p);
            sim.run_for(Duration::from_millis(200));
        }
    }
    sim.run_for(Duration::from_secs(1));
    assert_eq!(sim.node(p).epoch(), 4);
    assert_eq!(sim.messages(watcher).len(), expected, "every publication arrived (perfect link)");

    let mut seen = BTreeSet::new();
    let mut last_pn: BTreeMap<NodeId, u64> = BTreeMap::new();
    let mut p_frames = 0;
    for s in sim.tap() {
        let h = Header::parse(&s.bytes).unwrap();
        assert!(seen.insert((h.sender, h.pn)), "node {} boot {} reused pn {}", s.node, s.boot, h.pn);
        if let Some(&prev) = last_pn.get(&h.sender) {
            assert!(h.pn > prev, "pn went from {prev} to {} (node {} boot {})", h.pn, s.node, s.boot);
        }
        last_pn.insert(h.sender, h.pn);
        if s.node == p {
            p_frames += 1;
        }
    }
    assert!(p_frames > 4 * 16, "several lease blocks were used: {p_frames} frames");
    let stored = sim.stored_state(p).unwrap();
    assert_eq!(stored.epoch, 4);
    assert!(stored.lease_end > last_pn[&sim.id(p)], "every pn used is below the stored lease");
    assert_eq!(sim.stats(watcher).drop_replay, 0);
}

/// A node with `max_datagram` bytes per datagram, and a buffer for its transmits.
fn lone_node(max_datagram: usize) -> Node {
    let key = NetworkKey::from_bytes(common::sim::DEFAULT_KEY);
    let mut config = Config::new("lone", [3; 32]);
    config.max_datagram = max_datagram;
    let mut node = Node::new(config, &key, Boot::ephemeral(NodeId::from_u64(0x10e)), Instant::ZERO).unwrap();
    let mut buf = [0u8; MAX_DATAGRAM];
    while node.poll_transmit(Instant::ZERO, &mut buf).unwrap().is_some() {}
    node
}

/// `max_payload` is exact: the largest payload sent as a single Publish fits one datagram of
/// `max_datagram` bytes; one byte more goes as Fragment records, each within `max_datagram`.
#[test]
fn max_payload_fills_one_datagram_exactly() {
    let key = NetworkKey::from_bytes(common::sim::DEFAULT_KEY);
    let mut buf = [0u8; MAX_DATAGRAM];
    for max_datagram in [MAX_DATAGRAM, 600, 300, 200] {
        let mut node = lone_node(max_datagram);
        for topic_len in (1..=MAX_TOPIC_LEN).filter(|&l| l + 40 < max_datagram) {
            let topic = "t".repeat(topic_len);
            let max = node.max_payload(topic_len);
            assert!(max > 0);
            node.publish(&topic, &vec![0xee; max]).unwrap();
            let t = node.poll_transmit(Instant::ZERO, &mut buf).unwrap().expect("one datagram");
            assert!(t.len <= max_datagram);
            assert!(t.len + 3 > max_datagram, "the limit leaves no room for another byte: {} of {max_datagram}", t.len);
            let opened = open_frame(&key, &buf[..t.len]).unwrap();
            assert_eq!(
                opened.records,
                vec![common::sim::Rec::Publish { topic: topic.clone(), payload: vec![0xee; max] }],
                "max_datagram {max_datagram}, topic {topic_len}"
            );
            assert!(node.poll_transmit(Instant::ZERO, &mut buf).unwrap().is_none());
            // one byte more: fragments, none larger than a datagram
            node.publish(&topic, &vec![0xee; max + 1]).unwrap();
            let mut fragments = 0;
            while let Some(t) = node.poll_transmit(Instant::ZERO, &mut buf).unwrap() {
                assert!(t.len <= max_datagram);
                let opened = open_frame(&key, &buf[..t.len]).unwrap();
                assert!(opened.records.iter().all(|r| *r == common::sim::Rec::Other(starling::wire::kind::FRAGMENT)));
                fragments += opened.records.len();
                assert!(fragments < 1000);
            }
            assert!(fragments >= 2, "max_datagram {max_datagram}, topic {topic_len}");
            while node.poll_event().is_some() {}
        }
    }
}

/// With a small `max_datagram`, a topic too long for a single Publish is sent as fragments
/// that each fit; a payload above `max_message` is refused whatever the topic.
#[test]
fn topic_too_long_for_the_datagram_goes_as_fragments() {
    let mut node = lone_node(96);
    let topic = "t".repeat(70);
    assert_eq!(node.max_payload(70), 0);
    node.publish(&topic, &[]).unwrap();
    let mut buf = [0u8; MAX_DATAGRAM];
    let mut sent = Vec::new();
    while let Some(t) = node.poll_transmit(Instant::ZERO, &mut buf).unwrap() {
        sent.push(t.len);
        assert!(sent.len() < 10, "{sent:?}");
    }
    assert!(sent.len() >= 2 && sent.iter().all(|&l| l <= 96), "{sent:?}");
    let max = node.config().max_message;
    assert_eq!(node.publish(&topic, &vec![0; max + 1]), Err(PublishError::TooLarge { size: max + 1, max }));
}

/// A partition longer than the peer timeout takes each side down for the other (Timeout), and
/// healing brings them back with one PeerUp each, soon after the first beacon crosses.
#[test]
fn partition_times_out_and_heal_recovers() {
    let mut sim = Sim::new(seed(0x5eed_0009));
    let nodes = sim.spawn_many(4);
    let (left, right) = ([0, 1], [2, 3]);
    sim.run_until(ms(2000));
    assert!(converged(&sim, &nodes));
    sim.partition(&left, &right);
    sim.run_for(BEACON * 5);
    for (side, other) in [(left, right), (right, left)] {
        for &i in &side {
            let ids: Vec<NodeId> = sim.peers(i).iter().map(|p| p.id).collect();
            assert_eq!(ids, vec![sim.id(side[0] + side[1] - i)], "node {i} keeps only its own side");
            for &j in &other {
                assert_eq!(
                    peer_downs(&sim, i, sim.id(j)).iter().map(|d| d.1).collect::<Vec<_>>(),
                    vec![DownReason::Timeout]
                );
            }
        }
    }
    let healed = sim.now();
    sim.heal();
    // Each node beacons at least every 1.25 intervals; the first beacon across the cut brings
    // its sender up on the other side, which answers with an early beacon.
    let t = sim.run_until_or(healed + BEACON * 5 / 4 + Duration::from_millis(500), |s| converged(s, &nodes));
    assert!(t.is_some(), "not healed");
    sim.run_for(Duration::from_millis(500));
    for &i in &nodes {
        assert_eq!(peer_ups(&sim, i).len(), 3 + 2, "node {i}: 3 at start, 2 after the heal");
        assert!(sim.events(i).iter().all(|l| !matches!(l.event, Event::PeerRestarted(_))), "same epoch: no restart");
    }
}

/// A frame the peer sent before its Leave, reordered to arrive after it, must not bring the
/// departed peer back: its packet number is older than the Leave's.
#[test]
fn beacon_reordered_after_leave_does_not_resurrect() {
    let mut sim = Sim::new(seed(0x5eed_000a));
    let a = sim.spawn("a");
    let b = sim.spawn("b");
    sim.run_until(ms(1000));
    let b_id = sim.id(b);
    // Hold back everything b sends from now on, then play it to a in the wrong order.
    sim.partition(&[a], &[b]);
    let from = sim.tap().len();
    sim.run_until(ms(7000)); // b sends its periodic beacon
    sim.close(b);
    sim.heal();
    let held: Vec<Vec<u8>> = sim.tap()[from..].iter().map(|s| s.bytes.clone()).collect();
    assert!(held.len() >= 2, "a beacon and the Leave");
    let now = sim.now();
    for (k, bytes) in held.iter().rev().enumerate() {
        sim.inject(a, sim.addr(b), bytes, now + Duration::from_millis(k as u64));
    }
    sim.run_for(BEACON * 4);
    assert_eq!(peer_downs(&sim, a, b_id), vec![(now, DownReason::Left)]);
    assert_eq!(peer_ups(&sim, a), vec![b_id], "no PeerUp after the Leave");
}

/// Freshness after the receiver restarts (PROTOCOL.md §3.4): a rebooted receiver has no replay
/// state for anyone. Frames captured long before, replayed to it, are held, the live sender is
/// challenged, and its answer shows the captured frames are older than the freshness window:
/// they are dropped, never delivered. The live sender's new messages are delivered.
#[test]
fn receiver_restart_rejects_replays_and_accepts_live_senders() {
    let mut sim = Sim::new(seed(0x5eed_0100));
    let a = sim.spawn("a");
    let b = sim.spawn("b");
    sim.subscribe(a, "b/#");
    sim.run_until(ms(1000));
    sim.publish(b, "b/x", b"old-1");
    sim.run_for(Duration::from_millis(300));
    sim.publish(b, "b/x", b"old-2");
    sim.run_until(ms(10_000)); // the captured frames are now older than the 2 s window
    assert_eq!(sim.messages(a).len(), 2);
    let old: Vec<Vec<u8>> = sim.tap().iter().filter(|s| s.node == b).map(|s| s.bytes.clone()).collect();
    // Frames sent within the freshness window (2 s) before the proof may be accepted: that is
    // the window's meaning. Everything older must be refused.
    let window_start = sim.now() - Duration::from_secs(2);
    let too_old = sim.tap().iter().filter(|s| s.node == b && s.at < window_start).count() as u64;
    assert!(too_old >= 4, "beacons and both publications are old: {too_old}");

    sim.reboot(a);
    sim.subscribe(a, "b/#");
    let delivered_before = sim.messages(a).len();
    let before = sim.stats(a);
    let now = sim.now();
    for bytes in &old {
        sim.inject(a, sim.addr(b), bytes, now);
    }
    sim.run_for(Duration::from_secs(3));
    let after = sim.stats(a);
    let messages: Vec<Vec<u8>> = sim.messages(a).into_iter().skip(delivered_before).map(|m| m.1).collect();
    assert!(messages.is_empty(), "a replay was delivered: {messages:?}");
    let refused = (after.drop_unverified + after.drop_replay) - (before.drop_unverified + before.drop_replay);
    assert!(refused >= too_old, "every replayed frame older than the window refused: {after:?}");
    assert_eq!(
        refused + after.rx_after_challenge,
        old.len() as u64,
        "each replayed frame held, then judged: {after:?}"
    );

    sim.publish(b, "b/x", b"new-1");
    sim.run_for(Duration::from_millis(500));
    let messages: Vec<Vec<u8>> = sim.messages(a).into_iter().skip(delivered_before).map(|m| m.1).collect();
    assert_eq!(messages, vec![b"new-1".to_vec()], "the live sender is heard after the proof");
    assert_eq!(sim.node(a).held_frames(), 0);
}

/// A receiver that never heard of a sender holds its first frames until the sender answers
/// the challenge, then delivers them in order: nothing a live sender sends is lost to the proof.
#[test]
fn first_frames_of_a_new_sender_wait_for_the_proof_and_are_kept() {
    let mut sim = Sim::new(seed(0x5eed_0101));
    let a = sim.spawn("a");
    sim.subscribe(a, "n/#");
    sim.run_until(ms(500));
    let b = sim.spawn("b");
    // b publishes before anyone could have verified it
    sim.publish(b, "n/1", b"first");
    sim.publish(b, "n/2", b"second");
    sim.run_for(Duration::from_millis(300));
    let payloads: Vec<Vec<u8>> = sim.messages(a).into_iter().map(|m| m.1).collect();
    assert_eq!(payloads, vec![b"first".to_vec(), b"second".to_vec()]);
    assert!(sim.stats(a).rx_after_challenge >= 1);
    assert_eq!(sim.node(a).held_frames(), 0);
}
