//! Reliable streams, fragmentation and RPC under loss, duplication, reordering, partitions,
//! reboots and hostile input, in the deterministic simulator (`tests/common/sim.rs`) or against
//! one node fed forged frames.
//!
//! Every test uses a fixed seed (`SIM_SEED` overrides it, to explore); the asserted facts are
//! exact: which message arrived where, with which sequence number, how often, which outcome
//! each publication and call had and when, and how much memory the node holds.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use common::sim::{seal_frame, seal_unicast_frame, Link, NodeOpts, Sim, SplitMix64, DEFAULT_KEY};
use starling::stream::Failure;
use starling::wire::{
    stream, Ack, Beacon, DataHeader, FragmentHeader, Heartbeat, Inner, KeyClass, Record, MAX_DATAGRAM,
};
use starling::{
    Boot, CallError, CallId, Config, Event, Instant, NetworkKey, Node, NodeId, PublishError, PublishFailure, PublishId,
};

// ----- allocation accounting -----

/// Counts the bytes each thread holds on the heap, so a test can check that a node's memory
/// stays bounded whatever it is fed (each test runs on its own thread).
struct CountingAlloc;

thread_local! {
    static HELD: Cell<isize> = const { Cell::new(0) };
}

fn account(delta: isize) {
    let _ = HELD.try_with(|h| h.set(h.get() + delta));
}

// SAFETY: every call is forwarded to the system allocator unchanged; only a counter is updated.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            account(layout.size() as isize);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            account(layout.size() as isize);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        account(-(layout.size() as isize));
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            account(new_size as isize - layout.size() as isize);
        }
        p
    }
}

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// Bytes this thread holds on the heap right now.
fn heap_held() -> isize {
    HELD.with(Cell::get)
}

// ----- helpers -----

/// The test's seed, or `SIM_SEED` from the environment to explore others.
fn seed(default: u64) -> u64 {
    std::env::var("SIM_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

fn ms(v: u64) -> Instant {
    Instant::from_millis(v)
}

/// 30% loss each way, 10% duplicates, and jitter far above the gap between datagrams.
const LOSSY: Link =
    Link { latency: Duration::from_millis(2), jitter: Duration::from_millis(20), loss: 0.30, duplicate: 0.10 };

/// True when every running node in `nodes` has every other one as an up peer.
fn converged(sim: &Sim, nodes: &[usize]) -> bool {
    nodes.iter().all(|&i| {
        let peers: BTreeSet<NodeId> = sim.node(i).peers().map(|p| p.id).collect();
        nodes.iter().filter(|&&j| j != i).all(|&j| peers.contains(&sim.id(j)))
    })
}

/// Runs in steps of 50 ms until `done` holds (returns true) or `limit` passed (returns false).
fn run_until_done(sim: &mut Sim, limit: Duration, mut done: impl FnMut(&Sim) -> bool) -> bool {
    let deadline = sim.now() + limit;
    while sim.now() < deadline {
        if done(sim) {
            return true;
        }
        sim.run_for(Duration::from_millis(50));
    }
    done(sim)
}

type Outcome = Result<(), PublishFailure>;
type CallResult = Result<Vec<u8>, CallError>;

/// Every `PublishDone` in node `i`'s log at or after `since`: (time, id, result).
fn publish_done(sim: &Sim, i: usize, since: Instant) -> Vec<(Instant, PublishId, Outcome)> {
    sim.events(i)
        .iter()
        .filter(|l| l.at >= since)
        .filter_map(|l| match &l.event {
            Event::PublishDone { id, result } => Some((l.at, *id, result.clone())),
            _ => None,
        })
        .collect()
}

/// Every `Gap` in node `i`'s log: (publisher, first, end).
fn gaps(sim: &Sim, i: usize) -> Vec<(NodeId, u64, u64)> {
    sim.events(i)
        .iter()
        .filter_map(|l| match l.event {
            Event::Gap { from, first, end } => Some((from, first, end)),
            _ => None,
        })
        .collect()
}

/// Every `Request` in node `i`'s log: (time, caller, call id, method, payload).
fn requests(sim: &Sim, i: usize) -> Vec<(Instant, NodeId, u64, String, Vec<u8>)> {
    sim.events(i)
        .iter()
        .filter_map(|l| match &l.event {
            Event::Request { from, call_id, method, payload } => {
                Some((l.at, *from, *call_id, method.clone(), payload.clone()))
            }
            _ => None,
        })
        .collect()
}

/// Index in node `i`'s log of the first event matching `f`.
fn position(sim: &Sim, i: usize, f: impl Fn(&Event) -> bool) -> Option<usize> {
    sim.events(i).iter().position(|l| f(&l.event))
}

/// Reliable messages node `i` received from `from` at or after `since`: (seq, payload).
fn stream_from(sim: &Sim, i: usize, from: NodeId, since: Instant) -> Vec<(u64, Vec<u8>)> {
    sim.events(i)
        .iter()
        .filter(|l| l.at >= since)
        .filter_map(|l| match &l.event {
            Event::Message(m) if m.from == from => {
                Some((m.seq.expect("only reliable publications in this test"), m.payload.clone()))
            }
            _ => None,
        })
        .collect()
}

/// `n` pseudo-random bytes from `seed`.
fn noise(seed: u64, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    SplitMix64::new(seed).fill(&mut v);
    v
}

// ----- 1. reliable publications under loss -----

/// Payload of message `k` of publisher `p`: who and which, then filler.
fn numbered(p: usize, k: u32) -> Vec<u8> {
    let mut v = vec![p as u8];
    v.extend_from_slice(&k.to_be_bytes());
    v.extend_from_slice(&[0xa5; 27]);
    v
}

/// 1. With 30% loss each way, duplicates and reordering from the very first reliable message,
///    1000 reliable messages from each of three publishers reach five subscribers exactly once
///    and in order (payload numbers and stream sequence numbers), with no gap, every
///    `PublishDone` is `Ok`, and the publishers release everything.
#[test]
fn reliable_streams_survive_heavy_loss() {
    const N: u32 = 1000;
    let mut sim = Sim::new(seed(0x5e1_0001));
    // On a link this bad, three beacon intervals of silence happen by chance once traffic stops
    // (acknowledgements then only answer heartbeats, at most 2 s apart): allow six.
    let mut spawn = |name: String| {
        let i = sim.add_node_with(&name, NodeOpts::new().config(|c| c.peer_timeout_factor = 6));
        sim.start(i);
        i
    };
    let pubs: Vec<usize> = (0..3).map(|k| spawn(format!("pub-{k}"))).collect();
    let subs: Vec<usize> = (0..5).map(|k| spawn(format!("sub-{k}"))).collect();
    for &s in &subs {
        sim.subscribe(s, "feed/#");
    }
    sim.run_until(ms(1000));
    let all: Vec<usize> = pubs.iter().chain(&subs).copied().collect();
    assert!(converged(&sim, &all), "discovery on the clean link");

    sim.link = LOSSY;
    let mut ids: Vec<Vec<PublishId>> = vec![Vec::new(); pubs.len()];
    for k in 0..N {
        for (p, &node) in pubs.iter().enumerate() {
            ids[p].push(sim.publish_reliable(node, &format!("feed/{p}"), &numbered(p, k), None));
        }
        sim.run_for(Duration::from_millis(5));
    }
    let finished = |sim: &Sim| {
        pubs.iter().all(|&p| publish_done(sim, p, Instant::ZERO).len() >= N as usize)
            && subs.iter().all(|&s| sim.full_messages(s).len() >= pubs.len() * N as usize)
    };
    let done = run_until_done(&mut sim, Duration::from_secs(60), finished);
    sim.run_for(Duration::from_secs(1));
    // The last acknowledgements may be lost too: heartbeats (at most 2 s apart) fetch them again.
    let released =
        run_until_done(&mut sim, Duration::from_secs(30), |sim| pubs.iter().all(|&p| sim.node(p).retained() == (0, 0)));

    for &s in &subs {
        let msgs = sim.full_messages(s);
        for (p, &node) in pubs.iter().enumerate() {
            let got: Vec<(Option<u64>, Vec<u8>, String)> = msgs
                .iter()
                .filter(|m| m.from == sim.id(node))
                .map(|m| (m.seq, m.payload.clone(), m.topic.clone()))
                .collect();
            let want: Vec<(Option<u64>, Vec<u8>, String)> =
                (0..N).map(|k| (Some(u64::from(k)), numbered(p, k), format!("feed/{p}"))).collect();
            if got != want {
                let seqs: Vec<Option<u64>> = got.iter().map(|g| g.0).collect();
                let missing: Vec<u64> = (0..u64::from(N)).filter(|k| !seqs.contains(&Some(*k))).collect();
                panic!(
                    "subscriber {s} from publisher {p}: {} of {N} messages, missing seqs {missing:?}, gaps {:?}",
                    got.len(),
                    gaps(&sim, s)
                );
            }
        }
        assert_eq!(gaps(&sim, s), vec![], "subscriber {s} lost nothing");
        assert!(sim.stats(s).drop_replay > 0, "subscriber {s} saw duplicated datagrams");
    }
    for (p, &node) in pubs.iter().enumerate() {
        let outcomes = publish_done(&sim, node, Instant::ZERO);
        let done_ids: Vec<PublishId> = outcomes.iter().map(|o| o.1).collect();
        assert_eq!(done_ids.len(), N as usize, "publisher {p}: one PublishDone per publication");
        assert_eq!(done_ids.iter().collect::<BTreeSet<_>>(), ids[p].iter().collect::<BTreeSet<_>>());
        let failed: Vec<_> = outcomes.iter().filter(|o| o.2.is_err()).collect();
        assert!(failed.is_empty(), "publisher {p}: {} failed, first {:?}", failed.len(), failed.first());
        assert_eq!(sim.node(node).retained(), (0, 0), "publisher {p} released everything ({released})");
        assert!(sim.stats(node).retransmissions > 100, "publisher {p} repaired losses: {:?}", sim.stats(node));
    }
    assert!(done, "everything finished within 60 s");
    let net = sim.net_stats();
    assert!(net.lost > 10_000 && net.duplicated > 2_000, "the link did inject faults: {net:?}");
}

/// A new subscriber's first record from a publisher is not the publisher's first message (it was
/// lost): the message is still retained for it, so it must be repaired and delivered, not
/// silently skipped while the publisher is told it was received.
#[test]
fn lost_first_message_of_a_stream_is_repaired() {
    let mut sim = Sim::new(seed(0x5e1_0002));
    let p = sim.spawn("pub");
    let s = sim.spawn("sub");
    sim.subscribe(s, "t/#");
    sim.run_until(ms(500));
    sim.block(&[p], &[s]);
    let first = sim.publish_reliable(p, "t/a", b"first", None);
    sim.run_for(Duration::from_millis(1));
    sim.heal();
    let second = sim.publish_reliable(p, "t/a", b"second", None);
    sim.run_for(Duration::from_secs(3));

    let p_id = sim.id(p);
    assert_eq!(
        stream_from(&sim, s, p_id, Instant::ZERO),
        vec![(0, b"first".to_vec()), (1, b"second".to_vec())],
        "gaps: {:?}, outcomes: {:?}",
        gaps(&sim, s),
        publish_done(&sim, p, Instant::ZERO)
    );
    let outcomes: Vec<(PublishId, Outcome)> =
        publish_done(&sim, p, Instant::ZERO).into_iter().map(|o| (o.1, o.2)).collect();
    assert_eq!(outcomes, vec![(first, Ok(())), (second, Ok(()))]);
}

// ----- 2. RPC under loss -----

/// What the callee named `name` answers: its name, then the payload reversed.
fn echo_reply(name: &str, payload: &[u8]) -> Vec<u8> {
    let mut v = name.as_bytes().to_vec();
    v.push(b':');
    v.extend(payload.iter().rev());
    v
}

/// 2. 200 calls from three callers to three callees on the 30% loss link all complete with
///    the right reply, and each handler ran exactly once per call.
#[test]
fn rpc_calls_on_a_lossy_link_run_once_and_get_the_right_reply() {
    let mut sim = Sim::new(seed(0x5e1_0003));
    let callers: Vec<usize> = (0..3).map(|k| sim.spawn(&format!("caller-{k}"))).collect();
    let callees: Vec<usize> = (0..3).map(|k| sim.spawn(&format!("callee-{k}"))).collect();
    for (k, &c) in callees.iter().enumerate() {
        let name = format!("callee-{k}");
        sim.serve(c, &["echo"], move |r| Some(Ok(echo_reply(&name, r.payload))));
    }
    sim.run_until(ms(1000));
    let all: Vec<usize> = callers.iter().chain(&callees).copied().collect();
    assert!(converged(&sim, &all));
    sim.link = LOSSY;

    // (caller, callee index, id, payload)
    let mut calls: Vec<(usize, usize, CallId, Vec<u8>)> = Vec::new();
    for n in 0..200usize {
        let caller = callers[n % 3];
        let k = (n / 3) % 3;
        let payload = format!("call number {n} from {caller}").into_bytes();
        let id = sim.call(caller, sim.id(callees[k]), "echo", &payload, Duration::from_secs(30));
        calls.push((caller, k, id, payload));
        if n % 10 == 9 {
            sim.run_for(Duration::from_millis(20));
        }
    }
    let finished = |sim: &Sim| callers.iter().map(|&c| sim.call_results(c).len()).sum::<usize>() >= calls.len();
    assert!(run_until_done(&mut sim, Duration::from_secs(30), finished), "every call finished before its deadline");
    sim.run_for(Duration::from_secs(1));

    for &(caller, k, id, ref payload) in &calls {
        let results: Vec<_> = sim.call_results(caller).into_iter().filter(|r| r.1 == id).collect();
        assert_eq!(results.len(), 1, "call {id:?} of {caller}: one CallDone");
        assert_eq!(results[0].2, Ok(echo_reply(&format!("callee-{k}"), payload)), "call {id:?}");
    }
    for (k, &c) in callees.iter().enumerate() {
        let mut runs: BTreeMap<(NodeId, u64), usize> = BTreeMap::new();
        for (_, from, call_id, method, _) in requests(&sim, c) {
            assert_eq!(method, "echo");
            *runs.entry((from, call_id)).or_default() += 1;
        }
        let want: BTreeMap<(NodeId, u64), usize> =
            calls.iter().filter(|c| c.1 == k).map(|c| ((sim.id(c.0), c.2 .0), 1)).collect();
        assert_eq!(runs, want, "callee {k}: each of its calls ran exactly once");
    }
    for &c in &callers {
        assert_eq!(sim.node(c).pending_calls(), 0);
        assert!(sim.stats(c).retransmissions > 0, "caller {c} had to retransmit");
    }
    assert!(sim.net_stats().lost > 150, "{:?}", sim.net_stats());
}

// ----- 3. 64 KiB messages -----

/// 3. Messages of `max_message` (64 KiB) bytes arrive intact: best effort as fragments on a
///    clean link; a reliable publication, an RPC request and its response under 30% loss. One
///    byte more is refused.
#[test]
fn messages_of_64_kib_arrive_intact() {
    let mut sim = Sim::new(seed(0x5e1_0004));
    let a = sim.spawn("a");
    let b = sim.spawn("b");
    let c = sim.spawn("c");
    sim.serve(b, &["big"], |r| Some(Ok(r.payload.iter().rev().copied().collect())));
    sim.subscribe(b, "big/#");
    sim.subscribe(c, "big/#");
    sim.run_until(ms(1000));
    let a_id = sim.id(a);
    let max = sim.node(a).config().max_message;
    assert_eq!(max, 64 * 1024);

    // Best effort, clean link: 64 KiB as fragments.
    let best_effort = noise(1, max);
    sim.publish(a, "big/be", &best_effort);
    sim.run_for(Duration::from_millis(200));
    for r in [b, c] {
        let got: Vec<_> = sim.full_messages(r).into_iter().map(|m| (m.topic, m.payload, m.from, m.seq)).collect();
        assert_eq!(got, vec![("big/be".to_string(), best_effort.clone(), a_id, None)], "node {r}");
    }
    assert_eq!(
        sim.node_mut(a).publish("big/be", &vec![0; max + 1]),
        Err(PublishError::TooLarge { size: max + 1, max })
    );
    let (now, b_id) = (sim.now(), sim.id(b));
    assert_eq!(
        sim.node_mut(a).call(now, b_id, "big", &vec![0; max + 1], Duration::from_secs(1)),
        Err(CallError::TooLarge { size: max + 1, max })
    );

    // Reliable and RPC, 30% loss.
    sim.link = LOSSY;
    let t0 = sim.now();
    let reliable = noise(2, max);
    let request = noise(3, max);
    let pid = sim.publish_reliable(a, "big/rel", &reliable, None);
    let cid = sim.call(a, sim.id(b), "big", &request, Duration::from_secs(30));
    let finished = |sim: &Sim| {
        !publish_done(sim, a, t0).is_empty()
            && !sim.call_results(a).is_empty()
            && [b, c].iter().all(|&r| sim.full_messages(r).len() == 2)
    };
    assert!(run_until_done(&mut sim, Duration::from_secs(30), finished), "finished within 30 s");
    sim.run_for(Duration::from_secs(1));

    for r in [b, c] {
        let got: Vec<_> = sim.full_messages(r).into_iter().map(|m| (m.topic, m.payload, m.from, m.seq)).collect();
        let want = vec![
            ("big/be".to_string(), best_effort.clone(), a_id, None),
            ("big/rel".to_string(), reliable.clone(), a_id, Some(0)),
        ];
        assert!(got == want, "node {r}: {:?}", got.iter().map(|g| (&g.0, g.1.len(), g.3)).collect::<Vec<_>>());
    }
    let outcomes: Vec<(PublishId, Outcome)> = publish_done(&sim, a, t0).into_iter().map(|o| (o.1, o.2)).collect();
    assert_eq!(outcomes, vec![(pid, Ok(()))]);
    let reversed: Vec<u8> = request.iter().rev().copied().collect();
    let results: Vec<_> = sim.call_results(a).into_iter().map(|r| (r.1, r.2)).collect();
    assert_eq!(results, vec![(cid, Ok(reversed))]);
    let reqs = requests(&sim, b);
    assert_eq!(reqs.len(), 1, "the handler ran once");
    assert_eq!((reqs[0].1, reqs[0].2, reqs[0].4 == request), (a_id, cid.0, true));
    assert!(sim.stats(a).retransmissions > 10, "{:?}", sim.stats(a));
    assert!(sim.stats(b).retransmissions > 10, "the response was repaired too: {:?}", sim.stats(b));
}

// ----- 4. partition and retention -----

/// 4. A 10 s partition, then healing: what the publisher still retains is delivered; what its
///    small retention (20 messages) had to evict is reported once as a `Gap` of exactly the
///    lost range; nothing is delivered twice; the evicted publications fail as `Evicted` for
///    the cut-off subscriber only.
#[test]
fn partition_delivers_what_is_retained_and_reports_the_rest_as_a_gap() {
    let mut sim = Sim::new(seed(0x5e1_0005));
    let p = sim.add_node_with("pub", NodeOpts::new().config(|c| c.streams.max_retained_messages = 20));
    sim.start(p);
    let near = sim.spawn("near");
    let far = sim.spawn("far");
    sim.subscribe(near, "t/#");
    sim.subscribe(far, "t/#");
    sim.run_until(ms(1000));
    let body = |k: u64| format!("message {k}").into_bytes();
    let mut ids = Vec::new();
    for k in 0..10 {
        ids.push(sim.publish_reliable(p, "t/x", &body(k), None));
        sim.run_for(Duration::from_millis(20));
    }
    sim.run_for(Duration::from_millis(500));

    sim.partition(&[far], &[p, near]);
    let cut = sim.now();
    for k in 10..60 {
        ids.push(sim.publish_reliable(p, "t/x", &body(k), None));
        assert!(sim.node(p).retained().1 <= 20);
        sim.run_for(Duration::from_millis(100));
    }
    sim.run_until(cut + Duration::from_secs(10));
    assert_eq!(sim.node(p).retained().1, 20, "messages 40..60 wait for `far`");
    assert!(sim.peers(p).iter().any(|i| i.id == sim.id(far)), "a 10 s cut is shorter than the peer timeout");
    sim.heal();
    sim.run_for(Duration::from_secs(5));

    let p_id = sim.id(p);
    let far_id = sim.id(far);
    let all: Vec<(u64, Vec<u8>)> = (0..60).map(|k| (k, body(k))).collect();
    assert_eq!(stream_from(&sim, near, p_id, Instant::ZERO), all);
    assert_eq!(gaps(&sim, near), vec![]);
    let kept: Vec<(u64, Vec<u8>)> = all.iter().filter(|(k, _)| *k < 10 || *k >= 40).cloned().collect();
    assert_eq!(stream_from(&sim, far, p_id, Instant::ZERO), kept);
    assert_eq!(gaps(&sim, far), vec![(p_id, 10, 40)]);
    assert_eq!(sim.stats(far).gaps, 30);
    // The gap is reported before what follows it.
    let gap_at = position(&sim, far, |e| matches!(e, Event::Gap { .. })).unwrap();
    let msg40 = position(&sim, far, |e| matches!(e, Event::Message(m) if m.seq == Some(40))).unwrap();
    let msg9 = position(&sim, far, |e| matches!(e, Event::Message(m) if m.seq == Some(9))).unwrap();
    assert!(msg9 < gap_at && gap_at < msg40);

    let outcomes: BTreeMap<PublishId, Outcome> =
        publish_done(&sim, p, Instant::ZERO).into_iter().map(|o| (o.1, o.2)).collect();
    assert_eq!(outcomes.len(), 60, "one outcome per publication");
    for (k, id) in ids.iter().enumerate() {
        let want = if (10..40).contains(&k) {
            Err(PublishFailure { missing: vec![far_id], reason: Failure::Evicted })
        } else {
            Ok(())
        };
        assert_eq!(outcomes[id], want, "message {k}");
    }
    assert_eq!(sim.node(p).retained(), (0, 0));
}

// ----- 5. reboots -----

/// 5a. The publisher reboots mid-stream: subscribers see `PeerRestarted`, then the new
///     incarnation's reliable messages arrive as a new stream starting at seq 0.
#[test]
fn publisher_reboot_starts_a_new_stream_at_zero() {
    let mut sim = Sim::new(seed(0x5e1_0006));
    let p = sim.spawn("pub");
    let subs = [sim.spawn("s1"), sim.spawn("s2")];
    for s in subs {
        sim.subscribe(s, "r/#");
    }
    sim.run_until(ms(1000));
    let p_id = sim.id(p);
    for k in 0..13u64 {
        sim.publish_reliable(p, "r/x", format!("old {k}").as_bytes(), None);
        if k < 10 {
            sim.run_for(Duration::from_millis(10));
        }
    }
    // Three publications are in flight, unacknowledged, when the publisher reboots.
    assert_eq!(sim.node(p).retained().1, 3);
    sim.reboot(p);
    assert_eq!((sim.id(p), sim.node(p).epoch()), (p_id, 2));
    assert!(run_until_done(&mut sim, Duration::from_secs(1), |sim| converged(sim, &[p, subs[0], subs[1]])));
    let t_new = sim.now();
    let mut new_ids = Vec::new();
    for k in 0..10u64 {
        new_ids.push(sim.publish_reliable(p, "r/x", format!("new {k}").as_bytes(), None));
        sim.run_for(Duration::from_millis(10));
    }
    sim.run_for(Duration::from_secs(1));

    for s in subs {
        let old: Vec<(u64, Vec<u8>)> = (0..13).map(|k| (k, format!("old {k}").into_bytes())).collect();
        let new: Vec<(u64, Vec<u8>)> = (0..10).map(|k| (k, format!("new {k}").into_bytes())).collect();
        assert_eq!(stream_from(&sim, s, p_id, Instant::ZERO), [old, new].concat(), "subscriber {s}");
        let restarted = position(&sim, s, |e| matches!(e, Event::PeerRestarted(i) if i.id == p_id && i.epoch == 2));
        let restarted = restarted.expect("PeerRestarted");
        let last_old = position(&sim, s, |e| matches!(e, Event::Message(m) if m.payload == b"old 12")).unwrap();
        let first_new = position(&sim, s, |e| matches!(e, Event::Message(m) if m.payload == b"new 0")).unwrap();
        assert!(last_old < restarted && restarted < first_new, "subscriber {s}: {last_old} {restarted} {first_new}");
        assert!(sim.events(s)[restarted].at < t_new);
        assert_eq!(gaps(&sim, s), vec![]);
    }
    let outcomes: Vec<(PublishId, Outcome)> = publish_done(&sim, p, t_new).into_iter().map(|o| (o.1, o.2)).collect();
    assert_eq!(outcomes, new_ids.iter().map(|&id| (id, Ok(()))).collect::<Vec<_>>());
}

/// 5b. A subscriber reboots mid-stream and subscribes again at once: it receives every message
///     published from then on, in order; the other subscriber misses nothing.
#[test]
fn rebooted_subscriber_receives_subsequent_messages() {
    let mut sim = Sim::new(seed(0x5e1_0007));
    let p = sim.spawn("pub");
    let steady = sim.spawn("steady");
    let rebooting = sim.spawn("rebooting");
    sim.subscribe(steady, "r/#");
    sim.subscribe(rebooting, "r/#");
    sim.run_until(ms(1000));
    let p_id = sim.id(p);
    let mut reboot_at = Instant::ZERO;
    let mut first_seq_after = 0;
    for k in 0..100u64 {
        if k == 30 {
            reboot_at = sim.now();
            sim.reboot(rebooting);
            sim.subscribe(rebooting, "r/#");
            first_seq_after = k;
        }
        sim.publish_reliable(p, "r/x", format!("m{k}").as_bytes(), None);
        sim.run_for(Duration::from_millis(20));
    }
    sim.run_for(Duration::from_secs(2));

    let all: Vec<(u64, Vec<u8>)> = (0..100).map(|k| (k, format!("m{k}").into_bytes())).collect();
    assert_eq!(stream_from(&sim, steady, p_id, Instant::ZERO), all);
    assert_eq!(stream_from(&sim, rebooting, p_id, Instant::ZERO), all, "first incarnation 0..30, second 30..100");
    assert_eq!(stream_from(&sim, rebooting, p_id, reboot_at), all[first_seq_after as usize..]);
    assert!(sim.events(p).iter().any(|l| matches!(&l.event, Event::PeerRestarted(i) if i.id == sim.id(rebooting))));
    assert!(publish_done(&sim, p, Instant::ZERO).iter().all(|o| o.2.is_ok()));
    assert_eq!(publish_done(&sim, p, Instant::ZERO).len(), 100);
}

/// 5c. A publication made while a subscriber was crashed (and not yet noticed) either reaches
///     its next incarnation or fails for it; it is never reported acknowledged by a node that
///     never received it.
#[test]
fn publication_missed_by_a_rebooted_subscriber_is_not_reported_delivered() {
    let mut sim = Sim::new(seed(0x5e1_0008));
    let p = sim.spawn("pub");
    let s = sim.spawn("sub");
    sim.subscribe(s, "r/#");
    sim.run_until(ms(1000));
    sim.publish_reliable(p, "r/x", b"before", None);
    sim.run_for(Duration::from_millis(200));
    sim.crash(s);
    sim.run_for(Duration::from_millis(500));
    let missed = sim.publish_reliable(p, "r/x", b"missed", None);
    sim.run_for(Duration::from_millis(500));
    sim.start(s);
    sim.subscribe(s, "r/#");
    sim.run_for(Duration::from_secs(5));

    let p_id = sim.id(p);
    let s_id = sim.id(s);
    let got = stream_from(&sim, s, p_id, Instant::ZERO);
    let delivered = got.iter().any(|m| m.1 == b"missed");
    let outcome = publish_done(&sim, p, Instant::ZERO).into_iter().find(|o| o.1 == missed).map(|o| o.2);
    match outcome {
        Some(Ok(())) => assert!(delivered, "reported acknowledged but never delivered; got {got:?}"),
        Some(Err(f)) => assert_eq!(f.missing, vec![s_id]),
        None => panic!("no outcome for the publication"),
    }
}

/// 5d. A frame of the publisher's previous incarnation that arrives late (after its restart was
///     seen, still inside the replay window because of a small lease block) must not deliver
///     again a message its subscriber already has: a stream of an older epoch than the peer's
///     current one is over.
#[test]
fn late_frame_of_a_previous_incarnation_is_not_delivered_again() {
    let mut sim = Sim::new(seed(0x5e1_0011));
    let p = sim.add_node_with("pub", NodeOpts::new().config(|c| c.lease_block = 16));
    sim.start(p);
    let s = sim.spawn("sub");
    sim.subscribe(s, "r/#");
    sim.run_until(ms(1000));
    let p_id = sim.id(p);
    // The original datagram of m0 is lost on its way to s; s gets m0 from a repair.
    sim.block(&[p], &[s]);
    let from = sim.tap().len();
    sim.publish_reliable(p, "r/x", b"m0", None);
    let original: Vec<u8> = sim.tap()[from].bytes.clone();
    sim.run_for(Duration::from_millis(1));
    sim.heal();
    sim.run_for(Duration::from_secs(2));
    assert_eq!(stream_from(&sim, s, p_id, Instant::ZERO), vec![(0, b"m0".to_vec())], "repaired");
    sim.reboot(p);
    sim.run_for(Duration::from_millis(500));
    assert!(sim.events(s).iter().any(|l| matches!(&l.event, Event::PeerRestarted(i) if i.id == p_id)));

    // Now the original datagram shows up, late.
    let now = sim.now();
    sim.inject(s, sim.addr(p), &original, now);
    sim.run_for(Duration::from_millis(500));
    assert_eq!(stream_from(&sim, s, p_id, Instant::ZERO), vec![(0, b"m0".to_vec())], "m0 delivered once");
}

// ----- 6. TTL -----

/// 6. A reliable message whose TTL passes while a subscriber is cut off is never delivered to
///    it, even after healing (it sees a one-message `Gap` when the stream moves on), and its
///    `PublishDone` is `Err(Expired)` naming that subscriber, exactly at the TTL.
#[test]
fn ttl_expiring_during_a_partition_is_never_delivered() {
    let mut sim = Sim::new(seed(0x5e1_0009));
    let p = sim.spawn("pub");
    let near = sim.spawn("near");
    let far = sim.spawn("far");
    sim.subscribe(near, "ttl/#");
    sim.subscribe(far, "ttl/#");
    sim.run_until(ms(1000));
    let first = sim.publish_reliable(p, "ttl/a", b"first", None);
    sim.run_for(Duration::from_millis(200));
    sim.partition(&[far], &[p, near]);
    let t0 = sim.now();
    let ttl = Duration::from_secs(2);
    let short = sim.publish_reliable(p, "ttl/a", b"short-lived", Some(ttl));
    sim.run_until(t0 + Duration::from_secs(10));
    sim.heal();
    sim.run_for(Duration::from_secs(3));
    let after = sim.publish_reliable(p, "ttl/a", b"after", None);
    sim.run_for(Duration::from_secs(2));

    let (p_id, far_id) = (sim.id(p), sim.id(far));
    assert_eq!(
        stream_from(&sim, near, p_id, Instant::ZERO),
        vec![(0, b"first".to_vec()), (1, b"short-lived".to_vec()), (2, b"after".to_vec())]
    );
    assert_eq!(stream_from(&sim, far, p_id, Instant::ZERO), vec![(0, b"first".to_vec()), (2, b"after".to_vec())]);
    assert_eq!(gaps(&sim, far), vec![(p_id, 1, 2)]);
    assert_eq!(gaps(&sim, near), vec![]);
    let outcomes: Vec<(Instant, PublishId, Outcome)> = publish_done(&sim, p, Instant::ZERO);
    let short_outcome: Vec<_> = outcomes.iter().filter(|o| o.1 == short).collect();
    assert_eq!(
        short_outcome,
        vec![&(t0 + ttl, short, Err(PublishFailure { missing: vec![far_id], reason: Failure::Expired }))]
    );
    let others: Vec<(PublishId, Outcome)> =
        outcomes.iter().filter(|o| o.1 != short).map(|o| (o.1, o.2.clone())).collect();
    assert_eq!(others, vec![(first, Ok(())), (after, Ok(()))]);
}

/// 6b. A message that completes at a subscriber only after its TTL is not delivered, and the
///     application is told it lost it: a `Gap` covering its sequence numbers, as for any message
///     "expired before repair".
#[test]
fn message_expiring_at_the_subscriber_is_reported_as_a_gap() {
    let mut v = lone(0x7711, |_| {});
    v.subscribe("#").unwrap();
    drain(&mut v, Instant::ZERO);
    let mut f = Forger::new();
    let publisher = NodeId::from_u64(0x9b);
    let message = Inner::Publish { topic: "t", payload: b"short-lived, in two chunks" }.encode();
    let (first, second) = message.split_at(10);
    let chunk = |seq, index, chunk| Record::Data {
        header: DataHeader { stream: stream::MULTICAST, epoch: 1, seq, low: 0, index, count: 2, ttl_ms: 100 },
        chunk,
    };
    let mut events = f.send(&mut v, ms(10), publisher, &[chunk(0, 0, first)]);
    // The second chunk comes 190 ms later: the message lived 100 ms.
    events.extend(f.send(&mut v, ms(200), publisher, &[chunk(1, 1, second)]));
    let next = Inner::Publish { topic: "t", payload: b"next" }.encode();
    events.extend(f.send(&mut v, ms(210), publisher, &[data(stream::MULTICAST, 2, 0, 1, &next)]));

    assert_eq!(v.stats().expired, 1);
    #[derive(Debug, PartialEq)]
    enum Seen {
        Gap(u64, u64),
        Message(Option<u64>),
    }
    let seen: Vec<Seen> = events
        .iter()
        .filter_map(|e| match e {
            Event::Gap { first, end, .. } => Some(Seen::Gap(*first, *end)),
            Event::Message(m) => Some(Seen::Message(m.seq)),
            _ => None,
        })
        .collect();
    assert_eq!(seen, vec![Seen::Gap(0, 2), Seen::Message(Some(2))]);
}

// ----- 7. bounded memory -----

/// 7a. A subscriber whose every datagram is lost never acknowledges: the publisher's retention
///     stays within `max_retained_messages` and `max_retained_bytes` (each bound reached and
///     never passed), the oldest publications fail as `Evicted`, and the data keeps flowing.
#[test]
fn silent_subscriber_cannot_grow_publisher_retention() {
    const MAX_MESSAGES: usize = 50;
    const MAX_BYTES: usize = 64 * 1024;
    let mut sim = Sim::new(seed(0x5e1_000a));
    let p = sim.add_node_with(
        "pub",
        NodeOpts::new().config(|c| {
            c.streams.max_retained_messages = MAX_MESSAGES;
            c.streams.max_retained_bytes = MAX_BYTES;
        }),
    );
    sim.start(p);
    let s = sim.spawn("silent");
    sim.subscribe(s, "m/#");
    sim.run_until(ms(1000));
    sim.block(&[s], &[p]);

    let mut ids = Vec::new();
    let mut peak = (0, 0);
    let check = |sim: &Sim, peak: &mut (usize, usize)| {
        let (bytes, messages) = sim.node(p).retained();
        assert!(bytes <= MAX_BYTES && messages <= MAX_MESSAGES, "retained {bytes} bytes, {messages} messages");
        *peak = (peak.0.max(bytes), peak.1.max(messages));
    };
    for k in 0..300u32 {
        ids.push(sim.publish_reliable(p, "m/small", &k.to_be_bytes(), None));
        check(&sim, &mut peak);
        sim.run_for(Duration::from_millis(10));
        check(&sim, &mut peak);
    }
    assert_eq!(peak.1, MAX_MESSAGES, "the message bound was reached");
    for k in 300..400u32 {
        let payload = [&k.to_be_bytes()[..], &[0x55; 3000]].concat();
        ids.push(sim.publish_reliable(p, "m/large", &payload, None));
        check(&sim, &mut peak);
        sim.run_for(Duration::from_millis(10));
        check(&sim, &mut peak);
    }
    assert!(peak.0 > MAX_BYTES - 3100, "the byte bound was reached: peak {peak:?}");
    assert!(sim.peers(p).iter().any(|i| i.id == sim.id(s)), "still up: 5 s is less than the timeout");

    let s_id = sim.id(s);
    let retained = sim.node(p).retained().1;
    let outcomes = publish_done(&sim, p, Instant::ZERO);
    assert_eq!(outcomes.len(), ids.len() - retained, "every publication no longer retained has an outcome");
    let evicted = Err(PublishFailure { missing: vec![s_id], reason: Failure::Evicted });
    assert!(outcomes.iter().all(|o| o.2 == evicted), "{:?}", outcomes.iter().find(|o| o.2 != evicted));
    assert_eq!(outcomes.iter().map(|o| o.1).collect::<Vec<_>>(), ids[..ids.len() - retained], "oldest first");
    let got: Vec<u32> = stream_from(&sim, s, sim.id(p), Instant::ZERO)
        .iter()
        .map(|(_, b)| u32::from_be_bytes(b[..4].try_into().unwrap()))
        .collect();
    assert_eq!(got, (0..400).collect::<Vec<_>>(), "the silent subscriber still got everything");
}

/// A node of the sim's network with `configure` applied, fed by hand. It takes frames from new
/// senders at once: the forgers here hold the key, so they could answer its freshness
/// challenges anyway, and what is tested is what comes after.
fn lone(id: u64, configure: impl FnOnce(&mut Config)) -> Node {
    let mut config = Config::new("victim", [7; 32]);
    config.require_fresh = false;
    configure(&mut config);
    let key = NetworkKey::from_bytes(DEFAULT_KEY);
    let mut node = Node::new(config, &key, Boot::ephemeral(NodeId::from_u64(id)), Instant::ZERO).unwrap();
    drain(&mut node, Instant::ZERO);
    node
}

/// Everything the node wants to store, send and say; returns its events.
fn drain(node: &mut Node, now: Instant) -> Vec<Event> {
    let mut buf = [0u8; MAX_DATAGRAM];
    loop {
        if let Some(s) = node.poll_lease() {
            node.handle_lease_stored(s.lease_end);
        }
        if node.poll_transmit(now, &mut buf).unwrap().is_none() && !node.has_lease_request() {
            break;
        }
    }
    std::iter::from_fn(|| node.poll_event()).collect()
}

/// A member of the network holding the key: forges authentic frames from any id.
struct Forger {
    key: NetworkKey,
    pn: BTreeMap<NodeId, u64>,
    addr: SocketAddr,
}

impl Forger {
    fn new() -> Self {
        Forger {
            key: NetworkKey::from_bytes(DEFAULT_KEY),
            pn: BTreeMap::new(),
            addr: "192.0.2.66:7400".parse().unwrap(),
        }
    }

    /// A sealed frame from `sender` to `receiver` carrying `records`, with its next packet
    /// number: multicast when every record may go to the group, else unicast (sealed for the pair).
    fn frame(&mut self, sender: NodeId, receiver: NodeId, records: &[Record<'_>]) -> Vec<u8> {
        let mut body = Vec::new();
        for r in records {
            r.emit(&mut body);
        }
        let pn = self.pn.entry(sender).or_insert(0);
        *pn += 1;
        let frame = if records.iter().all(|r| r.allowed_in(KeyClass::Group)) {
            seal_frame(&self.key, sender, *pn, &body)
        } else {
            seal_unicast_frame(&self.key, sender, receiver, *pn, &body)
        };
        assert!(frame.len() <= MAX_DATAGRAM, "forged frame of {} bytes", frame.len());
        frame
    }

    /// Hands `records` from `sender` to `node` at `now`; returns the node's events.
    fn send(&mut self, node: &mut Node, now: Instant, sender: NodeId, records: &[Record<'_>]) -> Vec<Event> {
        let frame = self.frame(sender, node.id(), records);
        node.handle_datagram(now, self.addr, &frame);
        drain(node, now)
    }
}

fn data<'a>(stream: u8, seq: u64, index: u32, count: u32, chunk: &'a [u8]) -> Record<'a> {
    Record::Data { header: DataHeader { stream, epoch: 1, seq, low: 0, index, count, ttl_ms: 0 }, chunk }
}

/// 7c. A key holder floods Repair and BlockRepair records (PROTOCOL.md §6.8, §6.9): for messages in the window with
///     every symbol id, for messages of other shapes over chunks the receiver holds, beyond the
///     window, and of older epochs. Nothing is delivered that was not sent, contradictions are
///     counted, and what the receiver holds stays within `max_pending_bytes` (symbols count
///     against the same budget as chunks), and so does its heap.
#[test]
fn forged_repairs_cannot_grow_memory_or_deliver_anything() {
    use starling::wire::{BlockRepairHeader, RepairHeader};
    const MAX_PENDING: usize = 40 * 1024;
    let mut v = lone(0x71c8, |c| {
        c.streams.max_pending_bytes = MAX_PENDING;
        c.max_message = 32 * 1024;
    });
    v.subscribe("#").unwrap();
    drain(&mut v, Instant::ZERO);
    let mut f = Forger::new();
    let evil = NodeId::from_u64(0xe712);
    let chunk = vec![0xcc; 1000];
    // A stream to attack: message 0 of three chunks, only its first chunk sent.
    assert_eq!(f.send(&mut v, ms(1), evil, &[data(stream::MULTICAST, 0, 0, 3, &chunk)]), vec![]);
    let base = heap_held();
    let mut rng = SplitMix64::new(seed(0x5e1_000c));
    let symbol = vec![0x5a; 1000];
    let mut now = ms(2);
    for n in 0..3000u64 {
        let (first, len) = match n % 4 {
            // Other shapes over the chunk held: contradictions. (Symbols of message 0's own
            // shape would rebuild it with forged bytes, as forged chunks would: a key holder
            // can publish in a PSK sender's name anyway, §3.5.)
            0 => (0, 5000),
            1 => (0, 7000),
            // Messages in the window that nobody sent, of many chunks.
            2 => (3 + rng.below(200), 1000 * (2 + rng.below(20) as u32)),
            // Far beyond the window.
            _ => (1 << 30 | rng.below(1 << 20), 4000),
        };
        let k = len.div_ceil(1000);
        let header = RepairHeader {
            stream: stream::MULTICAST,
            epoch: 1,
            first,
            len,
            symbol: 1000,
            esi: k + rng.below(1 << 20) as u32,
            ttl_ms: 0,
        };
        now += Duration::from_millis(1);
        let events = f.send(&mut v, now, evil, &[Record::Repair { header, symbol: &symbol }]);
        assert!(events.iter().all(|e| !matches!(e, Event::Message(_))), "nothing can be delivered");
        let pending = v.pending_from(evil);
        assert!(pending <= MAX_PENDING, "after {n}: {pending} bytes pending");
        let grown = heap_held() - base;
        assert!(grown < (MAX_PENDING + 64 * 1024) as isize, "heap grew by {grown} bytes after {n} frames");
    }
    // Every contradiction of message 0, and of forged messages among themselves, is counted.
    assert!(v.stats().drop_stream >= 1500, "contradictions counted: {}", v.stats().drop_stream);
    assert_eq!(v.stats().rebuilt_chunks, 0);

    // Block repairs (§6.9) likewise: a block claiming message 0's chunk as a one-chunk member,
    // forged blocks in the window, blocks far beyond it.
    let before = v.stats().drop_stream;
    for n in 0..2000u64 {
        let (first, members) = match n % 3 {
            0 => (0, 0b11),
            1 => (16 * (1 + rng.below(20)), 1 | (rng.below(1 << 15) as u16) << 1),
            _ => (16 * (1 << 30 | rng.below(1 << 20)), 0b1111),
        };
        let k = members.count_ones();
        let header = BlockRepairHeader {
            stream: stream::MULTICAST,
            epoch: 1,
            first,
            members,
            symbol: 1000,
            esi: k + rng.below(1 << 20) as u32,
            lens: vec![1000; k as usize],
        };
        now += Duration::from_millis(1);
        let events = f.send(&mut v, now, evil, &[Record::BlockRepair { header, symbol: &symbol }]);
        assert!(events.iter().all(|e| !matches!(e, Event::Message(_))), "nothing can be delivered");
        let pending = v.pending_from(evil);
        assert!(pending <= MAX_PENDING, "after block {n}: {pending} bytes pending");
        let grown = heap_held() - base;
        assert!(grown < (MAX_PENDING + 64 * 1024) as isize, "heap grew by {grown} bytes after block {n}");
    }
    assert!(v.stats().drop_stream - before >= 666, "block contradictions counted: {}", v.stats().drop_stream - before);
    assert_eq!(v.stats().rebuilt_chunks, 0);
}

/// 7b. A key holder floods Data records of one stream, in and out of the receive window, behind
///     an incomplete first message: what the receiver buffers from it never exceeds
///     `max_pending_bytes` (per stream: at most twice that for its two streams), and neither does
///     the receiver's heap.
#[test]
fn forged_out_of_window_data_cannot_grow_pending_bytes() {
    const MAX_PENDING: usize = 40 * 1024;
    let mut v = lone(0x71c7, |c| {
        c.streams.max_pending_bytes = MAX_PENDING;
        c.max_message = 32 * 1024; // a window must hold the largest message
    });
    v.subscribe("#").unwrap();
    drain(&mut v, Instant::ZERO);
    let mut f = Forger::new();
    let evil = NodeId::from_u64(0xe711);
    let window = v.config().streams.max_pending_chunks as u64;
    let chunk = vec![0xcc; 1000];
    let mut rng = SplitMix64::new(seed(0x5e1_000b));
    let mut now = ms(1);

    // Message 0 of each stream has two chunks; the second never comes, so nothing is delivered.
    assert_eq!(f.send(&mut v, now, evil, &[data(stream::MULTICAST, 0, 0, 2, &chunk)]), vec![]);
    let base = heap_held();
    let mut peak = 0;
    for n in 0..3000u64 {
        let s = if n < 1500 { stream::MULTICAST } else { stream::UNICAST };
        if n == 1500 {
            assert_eq!(f.send(&mut v, now, evil, &[data(stream::UNICAST, 0, 0, 2, &chunk)]), vec![]);
        }
        // In the window, just past it, or far beyond; seq 1 would complete message 0.
        let seq = match n % 3 {
            0 => 2 + rng.below(window - 2),
            1 => window + rng.below(window),
            _ => 2 + rng.below(1 << 40),
        };
        now += Duration::from_millis(1);
        let events = f.send(&mut v, now, evil, &[data(s, seq, 0, 1, &chunk)]);
        assert!(events.iter().all(|e| !matches!(e, Event::Message(_))), "nothing can be delivered");
        let pending = v.pending_from(evil);
        let bound = if s == stream::MULTICAST { MAX_PENDING } else { 2 * MAX_PENDING };
        assert!(pending <= bound, "after {n}: {pending} bytes pending");
        peak = peak.max(pending);
        if n == 1499 {
            assert!(peak > MAX_PENDING - 1000, "the bound was reached: {peak}");
        }
        let grown = heap_held() - base;
        assert!(grown < (2 * MAX_PENDING + 32 * 1024) as isize, "heap grew by {grown} bytes after {n} frames");
    }
    assert!(peak > 2 * MAX_PENDING - 2000, "both streams reached their bound: {peak}");
    assert_eq!(v.stats().drop_stream, 0);
    assert_eq!(v.stats().rx_accepted, 3002);
}

/// 7c. Acknowledgements from a stream of ids that each appear once and then time out must not
///     leave state behind in the publisher: its heap stays flat however many come.
#[test]
fn acks_from_departed_ids_do_not_accumulate() {
    let mut v = lone(0x7ac5, |c| {
        c.beacon_interval = Duration::from_millis(10);
        c.max_peers = 4;
    });
    let mut now = ms(1);
    v.publish_reliable(now, "t", b"x", None).unwrap();
    drain(&mut v, now);
    let epoch = v.epoch();
    let target = v.id().as_u64();
    let mut f = Forger::new();
    let mut base = 0;
    for n in 0..6000u64 {
        if n == 1000 {
            base = heap_held();
        }
        let ack = Ack { target, stream: stream::MULTICAST, epoch, next: 1, missing: vec![] };
        let id = NodeId::from_u64(0x1_0000 + n);
        f.send(&mut v, now, id, &[Record::Ack(ack)]);
        // What the forger remembers of the id is its own memory, not the node's.
        f.pn.remove(&id);
        // Long enough for the id to time out, so the next one can take its place in the table.
        now += Duration::from_millis(40);
        v.handle_timeout(now);
        drain(&mut v, now);
    }
    assert_eq!(v.stats().drop_peer_table_full, 0, "every id found room");
    assert_eq!(v.stats().drop_stream, 0, "every ack was valid");
    let grown = heap_held() - base;
    assert!(grown < 16 * 1024, "heap grew by {grown} bytes over 5000 departed ids");
}

// ----- 8. calls -----

/// 8a. A call to a node that never exists ends `Unreachable` exactly at its deadline, not before.
#[test]
fn call_to_a_peer_that_never_exists_is_unreachable_at_the_deadline() {
    let mut sim = Sim::new(seed(0x5e1_000c));
    let a = sim.spawn("a");
    let b = sim.spawn("b");
    sim.serve(b, &["echo"], |r| Some(Ok(r.payload.to_vec())));
    sim.run_until(ms(500));
    let t0 = sim.now();
    let timeout = Duration::from_secs(3);
    let ghost = NodeId::from_u64(0x6057);
    let id = sim.call(a, ghost, "echo", b"anyone?", timeout);
    sim.run_until(t0 + timeout - Duration::from_micros(1));
    assert_eq!(sim.call_results(a), vec![], "nothing before the deadline");
    assert_eq!(sim.node(a).pending_calls(), 1);
    sim.run_for(Duration::from_secs(1));
    assert_eq!(sim.call_results(a), vec![(t0 + timeout, id, Err(CallError::Unreachable))]);
    assert_eq!(sim.node(a).pending_calls(), 0);
    assert_eq!(requests(&sim, b), vec![], "nobody else ran it");
}

/// 8b. A call to a callee that is down (its departure noticed) waits; the callee comes back
///     before the deadline and the call succeeds without the application doing anything.
#[test]
fn call_to_a_down_peer_that_comes_back_succeeds() {
    let mut sim = Sim::new(seed(0x5e1_000d));
    let a = sim.spawn("a");
    let b = sim.spawn("b");
    sim.serve(b, &["echo"], |r| Some(Ok([b"boot ", &[b'0' + r.boot as u8][..], b": ", r.payload].concat())));
    sim.run_until(ms(500));
    let b_id = sim.id(b);
    let warmup = sim.call(a, b_id, "echo", b"warm", Duration::from_secs(5));
    sim.run_for(Duration::from_millis(100));
    assert_eq!(
        sim.call_results(a).into_iter().map(|r| (r.1, r.2)).collect::<Vec<_>>(),
        [(warmup, Ok(b"boot 1: warm".to_vec()))]
    );

    sim.crash(b);
    assert!(run_until_done(&mut sim, Duration::from_secs(30), |sim| sim.peers(a).is_empty()), "b noticed down");
    let t0 = sim.now();
    let id = sim.call(a, b_id, "echo", b"are you back?", Duration::from_secs(20));
    sim.run_for(Duration::from_secs(5));
    assert_eq!(sim.call_results(a).len(), 1, "still waiting");
    sim.start(b);
    let back = sim.now();
    sim.run_for(Duration::from_secs(1));
    let results = sim.call_results(a);
    assert_eq!(results.len(), 2);
    let (at, got_id, result) = results[1].clone();
    assert_eq!((got_id, result), (id, Ok(b"boot 2: are you back?".to_vec())));
    assert!(at > back && at < back + Duration::from_millis(100), "answered as soon as b was back: {at:?}");
    assert!(at < t0 + Duration::from_secs(20));
    let reqs: Vec<(NodeId, u64, Vec<u8>)> = requests(&sim, b).into_iter().map(|r| (r.1, r.2, r.4)).collect();
    assert_eq!(reqs, vec![(sim.id(a), warmup.0, b"warm".to_vec()), (sim.id(a), id.0, b"are you back?".to_vec())]);
}

/// 8c. `NoSuchMethod` for a method the callee does not serve (its application never sees the
///     request), and a handler's error bytes passed through as `Remote`.
#[test]
fn no_such_method_and_remote_errors_pass_through() {
    let mut sim = Sim::new(seed(0x5e1_000e));
    let a = sim.spawn("a");
    let b = sim.spawn("b");
    sim.serve(b, &["fail", "echo"], |r| match r.method {
        "fail" => Some(Err([b"bad input: ", r.payload].concat())),
        _ => Some(Ok(r.payload.to_vec())),
    });
    sim.run_until(ms(500));
    let b_id = sim.id(b);
    let t = Duration::from_secs(5);
    let nope = sim.call(a, b_id, "nope", b"?", t);
    let fail = sim.call(a, b_id, "fail", &[0x00, 0xff], t);
    let echo = sim.call(a, b_id, "echo", b"ok", t);
    sim.run_for(Duration::from_millis(200));
    let results: BTreeMap<CallId, CallResult> = sim.call_results(a).into_iter().map(|r| (r.1, r.2)).collect();
    assert_eq!(
        results,
        BTreeMap::from([
            (nope, Err(CallError::NoSuchMethod)),
            (fail, Err(CallError::Remote(b"bad input: \x00\xff".to_vec()))),
            (echo, Ok(b"ok".to_vec())),
        ])
    );
    let methods: Vec<String> = requests(&sim, b).into_iter().map(|r| r.3).collect();
    assert_eq!(methods, vec!["fail".to_string(), "echo".to_string()]);
    assert_eq!(sim.node(a).pending_calls(), 0);
}

/// 8d. The callee reboots while a call it received is pending (its first incarnation never
///     answered): the call may have run there, so it ends `Interrupted` as soon as the restart is
///     seen, and is never sent to the new incarnation: at most once, across callee restarts.
#[test]
fn call_received_before_a_callee_reboot_ends_interrupted_and_never_runs_twice() {
    let mut sim = Sim::new(seed(0x5e1_000f));
    let a = sim.spawn("a");
    let b = sim.spawn("b");
    // The first incarnation's handler never finishes; the second would answer at once.
    sim.serve(b, &["work"], |r| (r.boot >= 2).then(|| Ok([b"done by boot 2: ", r.payload].concat())));
    sim.run_until(ms(500));
    let (a_id, b_id) = (sim.id(a), sim.id(b));
    let id = sim.call(a, b_id, "work", b"job", Duration::from_secs(10));
    sim.run_for(Duration::from_millis(300));
    assert_eq!(sim.call_results(a), vec![]);
    let reboot = sim.now();
    sim.reboot(b);
    sim.run_for(Duration::from_secs(2));

    let results: Vec<_> = sim.call_results(a).into_iter().map(|r| (r.1, r.2)).collect();
    assert_eq!(results, vec![(id, Err(CallError::Interrupted))]);
    assert!(sim.call_results(a)[0].0 < reboot + Duration::from_millis(100), "ended when the restart was seen");
    let reqs: Vec<(bool, NodeId, u64, Vec<u8>)> =
        requests(&sim, b).into_iter().map(|r| (r.0 >= reboot, r.1, r.2, r.4)).collect();
    assert_eq!(reqs, vec![(false, a_id, id.0, b"job".to_vec())], "run by the first incarnation only");
    assert!(sim.events(a).iter().any(|l| matches!(&l.event, Event::PeerRestarted(i) if i.id == b_id)));
}

/// 8d'. A call the callee's first incarnation never received (the link to it was cut) goes to
///      the new incarnation when the callee reboots, and succeeds.
#[test]
fn call_never_received_before_a_callee_reboot_is_sent_again_and_succeeds() {
    let mut sim = Sim::new(seed(0x5e1_001f));
    let a = sim.spawn("a");
    let b = sim.spawn("b");
    sim.serve(b, &["work"], |r| Some(Ok([b"done by boot ", r.boot.to_string().as_bytes()].concat())));
    sim.run_until(ms(500));
    let b_id = sim.id(b);
    sim.partition(&[a], &[b]);
    let id = sim.call(a, b_id, "work", b"job", Duration::from_secs(10));
    sim.run_for(Duration::from_millis(300));
    sim.reboot(b);
    sim.heal();
    sim.run_for(Duration::from_secs(3));
    let results: Vec<_> = sim.call_results(a).into_iter().map(|r| (r.1, r.2)).collect();
    assert_eq!(results, vec![(id, Ok(b"done by boot 2".to_vec()))]);
    assert_eq!(requests(&sim, b).len(), 1, "run once, by the new incarnation");
}

/// 8e. After a callee reboots with a request in flight, that request and every later call
///     complete: the caller's unicast stream to the new incarnation starts afresh, and the new
///     incarnation must not take it for the old one.
#[test]
fn calls_after_a_callee_reboot_keep_working() {
    let mut sim = Sim::new(seed(0x5e1_0010));
    let a = sim.spawn("a");
    let b = sim.spawn("b");
    sim.serve(b, &["echo"], |r| Some(Ok(r.payload.to_vec())));
    sim.run_until(ms(500));
    let (a_id, b_id) = (sim.id(a), sim.id(b));
    let mut calls: Vec<(CallId, Vec<u8>)> = Vec::new();
    let mut call = |sim: &mut Sim, payload: String| {
        let id = sim.call(a, b_id, "echo", payload.as_bytes(), Duration::from_secs(5));
        calls.push((id, payload.into_bytes()));
    };
    for k in 0..20 {
        call(&mut sim, format!("before {k}"));
        sim.run_for(Duration::from_millis(20));
    }
    // This request is in flight when b reboots: b's next incarnation receives it.
    call(&mut sim, "in flight".to_string());
    sim.reboot(b);
    sim.run_for(Duration::from_secs(1));
    for k in 0..3 {
        call(&mut sim, format!("after {k}"));
        sim.run_for(Duration::from_millis(100));
    }
    sim.run_for(Duration::from_secs(6));

    let results: BTreeMap<CallId, CallResult> = sim.call_results(a).into_iter().map(|r| (r.1, r.2)).collect();
    let want: BTreeMap<CallId, CallResult> = calls.iter().map(|(id, p)| (*id, Ok(p.clone()))).collect();
    let wrong: Vec<(CallId, Option<&CallResult>)> =
        want.iter().filter(|(id, w)| results.get(id) != Some(w)).map(|(id, _)| (*id, results.get(id))).collect();
    assert!(
        wrong.is_empty(),
        "{} of {} calls failed: {wrong:?}; a dropped {} stream records",
        wrong.len(),
        want.len(),
        sim.stats(a).drop_stream
    );
    let mut runs: BTreeMap<u64, usize> = BTreeMap::new();
    for r in requests(&sim, b) {
        assert_eq!(r.1, a_id);
        *runs.entry(r.2).or_default() += 1;
    }
    assert_eq!(runs, calls.iter().map(|(id, _)| (id.0, 1)).collect(), "each call ran once");
}

// ----- 9. bad input -----

/// 9a. Acks for sequence numbers never sent (or of another epoch, or of a stream that does not
///     exist) and responses to calls never made are dropped and counted in `drop_stream`;
///     requests on the multicast stream and undecodable stream messages in `malformed_messages`;
///     nothing reaches the application, nothing retained is released, and floods of them leave
///     the node's memory where it was.
#[test]
fn forged_acks_and_responses_are_dropped_and_counted() {
    let mut v = lone(0xacce, |_| {});
    v.subscribe("#").unwrap();
    v.serve("echo").unwrap();
    let mut now = ms(10);
    let mut f = Forger::new();
    let me = v.id().as_u64();
    let epoch = v.epoch();
    // A subscriber the node's reliable publications wait for: it never acknowledges them.
    let sub = NodeId::from_u64(0x5b);
    let hello = [
        Record::Beacon(Beacon { epoch: 1, interval_ms: 3_600_000, name: "sub", features: 0 }),
        Record::Subscriptions(vec!["#"]),
    ];
    let events = f.send(&mut v, now, sub, &hello);
    assert!(matches!(events[..], [Event::PeerUp(ref p)] if p.id == sub), "{events:?}");
    // Two reliable publications: sequence numbers 0 and 1 exist, nothing above.
    v.publish_reliable(now, "t", b"zero", None).unwrap();
    v.publish_reliable(now, "t", b"one", None).unwrap();
    let ghost = NodeId::from_u64(0x6057);
    let call = v.call(now, ghost, "echo", b"x", Duration::from_secs(600)).unwrap();
    drain(&mut v, now);
    let retained = v.retained();
    assert_eq!(retained.1, 2);
    let before = v.stats().clone();

    let acks = [
        Ack { target: me, stream: stream::MULTICAST, epoch, next: 3, missing: vec![] },
        Ack { target: me, stream: stream::MULTICAST, epoch, next: 0, missing: vec![(1, 5)] },
        Ack { target: me, stream: stream::MULTICAST, epoch, next: u64::MAX, missing: vec![(u64::MAX - 1, 1)] },
        Ack { target: me, stream: stream::MULTICAST, epoch: epoch + 1, next: 2, missing: vec![] },
        Ack { target: me, stream: stream::UNICAST, epoch, next: 1, missing: vec![] },
        Ack { target: me, stream: 7, epoch, next: 2, missing: vec![] },
    ];
    for ack in &acks {
        now += Duration::from_millis(1);
        assert_eq!(f.send(&mut v, now, sub, &[Record::Ack(ack.clone())]), vec![], "{ack:?}");
    }
    let mid = v.stats().clone();
    assert_eq!(mid.drop_stream - before.drop_stream, acks.len() as u64);
    assert_eq!(v.retained(), retained, "no forged ack released anything");

    // Responses on sub's unicast stream: to a call never made, and to a real call made to
    // another node. A request on the multicast stream, and a stream message that is no message.
    let never = Inner::Response { call_id: 0x1234_5678, status: 0, payload: b"surprise" }.encode();
    let wrong_peer = Inner::Response { call_id: call.0, status: 0, payload: b"not me" }.encode();
    let misplaced = Inner::Request { call_id: 1, to_epoch: 1, method: "echo", payload: b"x" }.encode();
    let garbage = [0x7f, 1, 2, 3];
    now += Duration::from_millis(1);
    // (A unicast stream's records travel only in unicast frames, PROTOCOL.md §2.7: two frames.)
    let unicast = [data(stream::UNICAST, 0, 0, 1, &never), data(stream::UNICAST, 1, 0, 1, &wrong_peer)];
    assert_eq!(f.send(&mut v, now, sub, &unicast), vec![]);
    let multicast = [data(stream::MULTICAST, 0, 0, 1, &misplaced), data(stream::MULTICAST, 1, 0, 1, &garbage)];
    assert_eq!(f.send(&mut v, now, sub, &multicast), vec![]);
    let after = v.stats().clone();
    assert_eq!(after.drop_stream - mid.drop_stream, 2, "two responses to calls never made to sub");
    assert_eq!(after.malformed_messages - mid.malformed_messages, 2, "a misplaced request and garbage");
    assert_eq!(v.pending_calls(), 1, "the real call still waits for its callee");
    assert_eq!(after.messages_delivered, before.messages_delivered);

    // A frame with one record that breaks the Data rules (index not below count) is dropped
    // whole: the valid record with it is not acted upon.
    let bad = Record::Data {
        header: DataHeader { stream: 0, epoch: 1, seq: 5, low: 0, index: 3, count: 2, ttl_ms: 0 },
        chunk: b"x",
    };
    let next = Inner::Publish { topic: "t", payload: b"valid" }.encode();
    now += Duration::from_millis(1);
    assert_eq!(f.send(&mut v, now, sub, &[data(stream::MULTICAST, 2, 0, 1, &next), bad]), vec![]);
    let last = v.stats().clone();
    assert_eq!(last.drop_malformed - after.drop_malformed, 1);
    assert_eq!(last.messages_delivered, before.messages_delivered);

    // Floods: acks beyond what was sent, NACKs of what is retained (repaired, at most once per
    // hold-off), responses to calls never made. Each bad record is counted; memory stays flat.
    let mut rng = SplitMix64::new(seed(0x5e1_0012));
    let base = heap_held();
    let mut bad_records = 0;
    for n in 0..3000u64 {
        now += Duration::from_millis(1);
        let record = match n % 3 {
            0 => {
                bad_records += 1;
                let missing = (0..16).map(|_| (rng.below(1 << 40), 1 + rng.below(1 << 20) as u32)).collect();
                Record::Ack(Ack { target: me, stream: stream::MULTICAST, epoch, next: 2, missing })
            }
            1 => Record::Ack(Ack { target: me, stream: stream::MULTICAST, epoch, next: 0, missing: vec![(0, 2)] }),
            _ => {
                bad_records += 1;
                let response = Inner::Response { call_id: rng.next_u64(), status: 0, payload: &[0; 500] }.encode();
                let frame = f.frame(sub, v.id(), &[data(stream::UNICAST, 2 + n / 3, 0, 1, &response)]);
                v.handle_datagram(now, f.addr, &frame);
                assert_eq!(drain(&mut v, now), vec![]);
                continue;
            }
        };
        assert_eq!(f.send(&mut v, now, sub, &[record]), vec![]);
        let grown = heap_held() - base;
        assert!(grown < 16 * 1024, "heap grew by {grown} bytes after {n} records");
    }
    let end = v.stats().clone();
    assert_eq!(end.drop_stream - last.drop_stream, bad_records);
    assert!(end.retransmissions - last.retransmissions > 100, "the NACKs were honoured: {end:?}");
    assert_eq!(v.retained(), retained);
    assert_eq!(v.pending_calls(), 1);
}

/// 9b. Forged best-effort fragments: overlapping (same index, other bytes), lying about the
///     total (count changes, or more than `max_message`), and completing into something that
///     is no message are dropped and counted; a flood of messages that never complete holds a
///     bounded amount of memory, released when they time out.
#[test]
fn forged_fragments_are_dropped_counted_and_bounded() {
    let mut v = lone(0xf4a9, |_| {});
    v.subscribe("#").unwrap();
    drain(&mut v, Instant::ZERO);
    let mut f = Forger::new();
    let evil = NodeId::from_u64(0xe711);
    let mut now = ms(10);
    let frag =
        |msg_id, index, count, chunk| Record::Fragment { header: FragmentHeader { msg_id, index, count }, chunk };
    let part = vec![0x41; 1100];
    let other = vec![0x42; 1100];
    let before = v.stats().clone();

    let cases: [(&str, Vec<Record<'_>>, u64, u64); 6] = [
        ("same index, other bytes", vec![frag(1, 0, 3, &part), frag(1, 0, 3, &other)], 1, 0),
        ("count changes", vec![frag(2, 0, 3, &part), frag(2, 1, 4, &part)], 1, 0),
        ("more than max_message", vec![frag(3, 0, 1000, &part)], 1, 0),
        ("last longer than the others", vec![frag(4, 0, 2, &part[..500]), frag(4, 1, 2, &part)], 1, 0),
        ("non-last lengths differ", vec![frag(5, 0, 3, &part), frag(5, 1, 3, &part[..1000])], 1, 0),
        ("completes into garbage", vec![frag(6, 0, 2, &[0xff; 600]), frag(6, 1, 2, &[0xff; 10])], 0, 1),
    ];
    for (what, records, stream_drops, malformed) in cases {
        let s0 = v.stats().clone();
        for r in records {
            now += Duration::from_millis(1);
            assert_eq!(f.send(&mut v, now, evil, &[r]), vec![], "{what}");
        }
        let s1 = v.stats().clone();
        assert_eq!(
            (s1.drop_stream - s0.drop_stream, s1.malformed_messages - s0.malformed_messages),
            (stream_drops, malformed),
            "{what}"
        );
    }
    assert_eq!(v.stats().messages_delivered, before.messages_delivered);

    // A flood of first fragments of messages that never complete.
    let base = heap_held();
    for n in 0..3000u32 {
        now += Duration::from_micros(100);
        f.send(&mut v, now, evil, &[frag(100 + n, 0, 50, &part)]);
        let grown = heap_held() - base;
        // At most 16 partial messages (max_partial) of one 1100-byte fragment each.
        assert!(grown < 48 * 1024, "heap grew by {grown} bytes after {n} fragments");
    }
    assert_eq!(v.stats().messages_delivered, before.messages_delivered);
    // They time out: the memory comes back.
    now += v.config().reassembly_timeout;
    v.handle_timeout(now);
    drain(&mut v, now);
    let left = heap_held() - base;
    assert!(left < 4 * 1024, "{left} bytes still held after the timeout");
}

/// 9c. Incomplete fragmented messages that time out (or are evicted for newer ones) are lost
///     data: some counter must record them.
#[test]
fn incomplete_fragmented_messages_are_counted_when_dropped() {
    let mut v = lone(0xf4aa, |_| {});
    v.subscribe("#").unwrap();
    drain(&mut v, Instant::ZERO);
    let mut f = Forger::new();
    let evil = NodeId::from_u64(0xe711);
    let part = vec![0x41; 1100];
    let now = ms(10);
    f.send(
        &mut v,
        now,
        evil,
        &[Record::Fragment { header: FragmentHeader { msg_id: 1, index: 0, count: 2 }, chunk: &part }],
    );
    let before = v.stats().clone();
    let later = now + v.config().reassembly_timeout + Duration::from_millis(1);
    v.handle_timeout(later);
    drain(&mut v, now);
    assert_ne!(v.stats(), &before, "the expired message is counted somewhere");
}

/// 9d. Heartbeats that announce huge gaps (a key holder can send any sequence numbers) must not
///     crash the node: `handle_datagram` never panics on any input.
#[test]
fn huge_forged_gaps_do_not_overflow_counters() {
    let mut v = lone(0x6a95, |_| {});
    v.subscribe("#").unwrap();
    drain(&mut v, Instant::ZERO);
    let mut f = Forger::new();
    let evil = NodeId::from_u64(0xe711);
    let half = u64::MAX / 2 + 2;
    let mut events = Vec::new();
    for (k, s) in [stream::MULTICAST, stream::UNICAST].into_iter().enumerate() {
        // Its first record starts the stream at 0; the heartbeat then gives up almost everything.
        events.extend(f.send(&mut v, ms(10 + k as u64), evil, &[data(s, 0, 0, 2, b"x")]));
        let hb = Heartbeat { stream: s, epoch: 1, low: half, next: half };
        events.extend(f.send(&mut v, ms(20 + k as u64), evil, &[Record::Heartbeat(hb)]));
    }
    // Two gaps of `half` each: the sum does not fit. Refused (0) or saturated, never wrapped (2).
    let gaps = v.stats().gaps;
    assert!(gaps == 0 || gaps >= half, "the counter wrapped: {gaps}");
    assert!(events.iter().all(|e| !matches!(e, Event::Gap { first, end, .. } if first >= end)), "{events:?}");
}
