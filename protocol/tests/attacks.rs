//! The attacks of the security review of 48cd6cf (issue 13), replayed against the protocol core in
//! simulation: each test is one finding, and fails on that commit. PSK mode here; identity mode's
//! findings are in `attacks_identity.rs`. PROTOCOL.md §3.5 and §12 say what each one shows.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::sim::{seal_frame, NodeOpts, Sim, SplitMix64};
use starling::wire::{stream, Ack, Beacon, DataHeader, Record, SUITE_PSK_UNICAST};
use starling::{Destination, Event, Instant, NodeId};

fn ms(v: u64) -> Instant {
    Instant::from_millis(v)
}

/// Requests node `i`'s application received, across its boots.
fn requests(sim: &Sim, i: usize) -> usize {
    sim.events(i).iter().filter(|l| matches!(l.event, Event::Request { .. })).count()
}

/// The frames node `from` sent by unicast to node `to` since the tap was last cleared.
fn unicast_frames(sim: &Sim, from: usize, to: usize) -> Vec<Vec<u8>> {
    let addr = sim.addr(to);
    sim.tap()
        .iter()
        .filter(|t| t.node == from && t.destination == Destination::Unicast(addr))
        .map(|t| t.bytes.clone())
        .collect()
}

fn record(r: &Record<'_>) -> Vec<u8> {
    let mut b = Vec::new();
    r.emit(&mut b);
    b
}

/// Finding 2 (HIGH): a call captured on its way to relay-1 and replayed, after the caller left, to
/// relay-2 (which serves the same method) ran there. Unicast frames are now sealed for the pair
/// (PROTOCOL.md §3.1): relay-2 cannot even open them.
#[test]
fn a_call_captured_on_its_way_to_one_node_does_not_run_on_another() {
    let mut sim = Sim::new(0xa77_0002);
    let caller = sim.spawn("caller");
    let relay1 = sim.spawn("relay-1");
    let relay2 = sim.spawn("relay-2");
    for r in [relay1, relay2] {
        sim.serve(r, &["relay.set"], |_| Some(Ok(b"switched".to_vec())));
    }
    sim.run_until(ms(2_000));
    sim.clear_tap();
    let id = sim.call(caller, sim.id(relay1), "relay.set", b"on", Duration::from_secs(2));
    sim.run_for(Duration::from_millis(200));
    assert!(matches!(&sim.call_results(caller)[..], [(_, c, Ok(_))] if *c == id));
    let captured = unicast_frames(&sim, caller, relay1);
    assert!(!captured.is_empty());
    assert!(captured.iter().all(|f| f[0] & 0x0f == SUITE_PSK_UNICAST));
    sim.close(caller);
    sim.run_for(Duration::from_secs(1));

    let before = sim.stats(relay2);
    for (k, f) in captured.iter().enumerate() {
        let at = sim.now() + Duration::from_millis(k as u64);
        sim.inject(relay2, sim.addr(caller), f, at);
    }
    sim.run_for(Duration::from_secs(3));
    assert_eq!(requests(&sim, relay2), 0, "relay-2 ran a call meant for relay-1");
    assert_eq!(requests(&sim, relay1), 1);
    let after = sim.stats(relay2);
    assert_eq!(after.drop_auth - before.drop_auth, captured.len() as u64, "each refused with one AEAD attempt");
}

/// Finding 3 (MEDIUM), first half: a frame the receiver lost (here: it was cut off for a moment)
/// was accepted once at any later time (22 s and 47 s were measured). The replay window now ages
/// (PROTOCOL.md §3.4): a frame more than about two freshness windows behind a later one is refused.
#[test]
fn a_lost_frame_replayed_much_later_is_refused() {
    let mut sim = Sim::new(0xa77_0003);
    let sensor = sim.spawn("sensor");
    let rx = sim.spawn("dashboard");
    sim.subscribe(rx, "home/#");
    sim.run_until(ms(2_000));
    sim.block(&[sensor], &[rx]);
    sim.clear_tap();
    sim.publish(sensor, "home/door", b"open");
    sim.run_for(Duration::from_millis(50));
    let lost: Vec<Vec<u8>> = sim
        .tap()
        .iter()
        .filter(|t| t.node == sensor && sim.open(&t.bytes).is_some_and(|o| o.publishes() == 1))
        .map(|t| t.bytes.clone())
        .collect();
    assert_eq!(lost.len(), 1);
    sim.heal();
    for k in 0..5 {
        sim.publish(sensor, "home/door", format!("closed {k}").as_bytes());
        sim.run_for(Duration::from_secs(1));
    }
    let delivered = sim.messages(rx).len();
    assert_eq!(delivered, 5);
    for wait in [22u64, 25] {
        sim.run_until(ms(2_000 + wait * 1_000));
        let before = sim.stats(rx).drop_replay;
        sim.inject(rx, sim.addr(sensor), &lost[0], sim.now());
        sim.run_for(Duration::from_millis(10));
        assert_eq!(sim.messages(rx).len(), delivered, "the old 'open' was delivered {wait} s later");
        assert_eq!(sim.stats(rx).drop_replay, before + 1, "replayed after {wait} s: refused before decryption");
    }
}

/// Finding 3, second half: a restarted callee re-ran a call replayed 10 s after its restart (its
/// memory of finished calls died with it). Requests now name the callee's epoch (PROTOCOL.md §7),
/// and old frames age out of the window: neither an early nor a late replay runs it again.
#[test]
fn a_call_replayed_after_the_callee_restarts_never_runs_again() {
    let mut sim = Sim::new(0xa77_0013);
    let caller = sim.spawn("caller");
    let callee = sim.spawn("relay");
    sim.serve(callee, &["relay.set"], |_| Some(Ok(b"switched".to_vec())));
    sim.run_until(ms(2_000));
    sim.clear_tap();
    sim.call(caller, sim.id(callee), "relay.set", b"toggle", Duration::from_secs(2));
    sim.run_for(Duration::from_millis(100));
    assert_eq!(requests(&sim, callee), 1);
    let captured = unicast_frames(&sim, caller, callee);
    sim.reboot(callee);
    // Soon after the restart (the caller is still alive and answers the new incarnation's
    // freshness challenge, so frames it sent in the last 2 s pass that check), and 10 s later.
    for delay in [300u64, 10_000] {
        let at = sim.now() + Duration::from_millis(delay);
        for f in &captured {
            sim.inject(callee, sim.addr(caller), f, at);
        }
        sim.run_until(at + Duration::from_secs(1));
    }
    assert_eq!(requests(&sim, callee), 1, "the restarted callee ran the replayed call");
}

/// Finding 7 (MEDIUM): an outsider replaying frames of dead short-lived nodes (authentic, each
/// waiting for a freshness proof that never comes) filled the peer table; a fresh subscriber then
/// received 0 of 10 messages. Unverified senders now make room for each other (PROTOCOL.md §3.4).
#[test]
fn replayed_frames_of_dead_nodes_do_not_lock_out_a_live_publisher() {
    let mut sim = Sim::new(0xa77_0007);
    let rx = sim.spawn("subscriber");
    sim.subscribe(rx, "home/#");
    sim.run_until(ms(500));
    // Frames of dead nodes, each a beacon as it once sent: 200 per second for 8 s, so that even
    // with each one forgotten after its challenges go unanswered (3.1 s), they fill the table.
    let key = sim.network_key().clone();
    let mut rng = SplitMix64::new(7);
    let dead: Vec<Vec<u8>> = (0..1600)
        .map(|_| {
            let id = NodeId::from_u64(rng.next_u64());
            let beacon = Record::Beacon(Beacon { epoch: 1, interval_ms: 5_000, name: "gone", features: 0 });
            seal_frame(&key, id, 0, &record(&beacon))
        })
        .collect();
    let attacker: SocketAddr = "192.0.2.66:4783".parse().unwrap();
    let start = sim.now();
    for (k, f) in dead.iter().enumerate() {
        sim.inject(rx, attacker, f, start + Duration::from_millis(5 * k as u64));
    }
    // The publisher starts once the table is full of them.
    sim.run_for(Duration::from_secs(3));
    let publisher = sim.spawn("sensor");
    sim.run_for(Duration::from_millis(500));
    for k in 0..10 {
        sim.publish(publisher, "home/temp", format!("{k}").as_bytes());
        sim.run_for(Duration::from_millis(100));
    }
    sim.run_for(Duration::from_secs(2));
    assert_eq!(sim.messages(rx).len(), 10, "the live publisher was locked out: {:?}", sim.stats(rx));
}

/// A subscriber to `#` and a publisher, both with freshness challenges off: the attacker of
/// finding 10 is a member and could answer them anyway (and frames waiting for a proof have their
/// own bound, PROTOCOL.md §3.4).
fn subscriber_and_publisher(seed: u64) -> (Sim, usize, usize) {
    let mut sim = Sim::new(seed);
    let no_challenge = || NodeOpts::new().config(|c| c.require_fresh = false);
    let rx = sim.add_node_with("subscriber", no_challenge());
    let publisher = sim.add_node_with("publisher", no_challenge());
    sim.start(rx);
    sim.start(publisher);
    sim.subscribe(rx, "#");
    sim.run_until(ms(2_000));
    (sim, rx, publisher)
}

/// Finding 10 (LOW): 256 invented ids sending out-of-order chunks grew a subscriber from 6 to 241
/// MiB. All receiving streams now share one budget (`max_pending_total`).
#[test]
fn many_senders_cannot_buffer_past_the_node_total() {
    let (mut sim, rx, _) = subscriber_and_publisher(0xa77_0010);
    let key = sim.network_key().clone();
    let total = sim.node(rx).config().max_pending_total;
    let attacker: SocketAddr = "192.0.2.66:4783".parse().unwrap();
    let chunk = vec![0xcc; 1000];
    // 256 ids, each: a beacon (so it is known), then chunks 1..40 of a message whose chunk 0
    // never comes.
    let mut buffered_peak = 0;
    for n in 0..256u64 {
        let id = NodeId::from_u64(0xbad0_0000 + n);
        let mut pn = 0;
        let mut send = |sim: &mut Sim, body: Vec<u8>| {
            let f = seal_frame(&key, id, pn, &body);
            pn += 1;
            sim.inject(rx, attacker, &f, sim.now());
        };
        let hello = Record::Beacon(Beacon { epoch: 1, interval_ms: 3_600_000, name: "x", features: 0 });
        send(&mut sim, record(&hello));
        for seq in 1..40u64 {
            let header = DataHeader { stream: stream::MULTICAST, epoch: 1, seq, low: 0, index: 1, count: 2, ttl_ms: 0 };
            send(&mut sim, record(&Record::Data { header, chunk: &chunk }));
        }
        sim.run_for(Duration::from_millis(1));
        buffered_peak = buffered_peak.max(sim.node(rx).pending_total());
    }
    println!("256 invented senders: at most {buffered_peak} bytes buffered (bound {total})");
    assert!(buffered_peak <= total, "{buffered_peak} bytes buffered, bound {total}");
    assert!(buffered_peak > total / 2, "the flood did reach the bound ({buffered_peak})");
}

/// Finding 10, second half: one 49-byte NACK made a publisher multicast 97 KB of repairs (1980x).
/// One Ack record now gets at most 32 chunks repaired.
#[test]
fn one_small_nack_repairs_little() {
    let (mut sim, rx, publisher) = subscriber_and_publisher(0xa77_001a);
    let key = sim.network_key().clone();
    let attacker: SocketAddr = "192.0.2.66:4783".parse().unwrap();
    // The subscriber's acks do not reach the publisher, so it still retains all 100 messages
    // when the NACK comes (acknowledged ones are released: there would be nothing to repair).
    sim.block(&[rx], &[publisher]);
    for k in 0..100 {
        sim.publish_reliable(publisher, "t", &vec![k as u8; 1000], None);
    }
    sim.run_for(Duration::from_millis(500));
    assert_eq!(sim.node(publisher).retained().1, 100, "the NACK finds everything still retained");
    sim.clear_tap();
    let me = sim.id(publisher);
    let epoch = sim.node(publisher).epoch();
    let nack =
        Record::Ack(Ack { target: me.as_u64(), stream: stream::MULTICAST, epoch, next: 0, missing: vec![(0, 100)] });
    let body = record(&nack);
    let f = seal_frame(&key, NodeId::from_u64(0xbad0_0001), 10_000, &body);
    sim.inject(publisher, attacker, &f, sim.now());
    sim.run_for(Duration::from_millis(100));
    let repaired: usize = sim.tap().iter().filter(|t| t.node == publisher).map(|t| t.bytes.len()).sum();
    println!("one NACK of {} bytes: {repaired} bytes of repairs", f.len());
    assert!(repaired <= 32 * 1200 + 2400, "{repaired} bytes answered a {}-byte frame", f.len());
}

/// Finding 12 (LOW): a replayed `$stats` request from a spoofed address reflected ~1 KB for 55 B
/// (18x): any authenticated frame, even one older than its sender's newest, moved the sender's
/// address. Here the callee lost the request; the attacker delivers the captured copy from the
/// victim's address after newer frames of the caller: nothing goes to the victim.
#[test]
fn a_lost_request_delivered_from_a_spoofed_address_reflects_nothing() {
    let mut sim = Sim::new(0xa77_0012);
    let caller = sim.spawn("monitor");
    let callee = sim.spawn("board");
    sim.serve(callee, &["stats"], |_| Some(Ok(vec![b'x'; 1000])));
    sim.run_until(ms(2_000));
    sim.clear_tap();
    sim.block(&[caller], &[callee]);
    let id = sim.call(caller, sim.id(callee), "stats", b"", Duration::from_secs(2));
    let captured = unicast_frames(&sim, caller, callee);
    assert!(!captured.is_empty());
    sim.heal();
    sim.publish(caller, "monitor/up", b"1");
    sim.run_for(Duration::from_millis(2));
    let victim: SocketAddr = "192.0.2.99:4783".parse().unwrap();
    sim.clear_tap();
    // At once, a second later (the caller still talks), and much later.
    for delay in [1u64, 1_000, 30_000] {
        let at = sim.now() + Duration::from_millis(delay);
        for f in &captured {
            sim.inject(callee, victim, f, at);
        }
        sim.run_until(at + Duration::from_millis(500));
    }
    let reflected: usize =
        sim.tap().iter().filter(|t| t.destination == Destination::Unicast(victim)).map(|t| t.bytes.len()).sum();
    let bytes_in: usize = captured.iter().map(Vec::len).sum();
    assert_eq!(reflected, 0, "bytes sent to the spoofed address for {bytes_in} B captured");
    assert_eq!(requests(&sim, callee), 1);
    assert!(matches!(&sim.call_results(caller)[..], [(_, c, Ok(_))] if *c == id), "{:?}", sim.call_results(caller));
}
