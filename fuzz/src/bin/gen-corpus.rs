//! Writes the seed corpus under `fuzz/corpus/<target>/` (run from `fuzz/`:
//! `cargo run --release --bin gen-corpus`). Seeds come from two places:
//! - the test vectors of PROTOCOL.md §10, read from the spec itself;
//! - a real conversation between a peer node and the node under test (same id, key and
//!   configuration as the fuzz harness's), captured frame by frame.
//!
//! Existing files of a target are replaced, so the committed corpus is exactly what this writes.

use std::collections::{BTreeMap, VecDeque};
use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use starling::wire::{DataHeader, Inner, Record, RecordIter};
use starling::{Boot, Config, Destination, Event, Instant, Node, NodeId};
use starling_fuzz::harness::{peer_addr, victim_config};
use starling_fuzz::psk::Psk;
use starling_fuzz::{put_long, put_short, AppOp, Driver, Mode, Op, PnChoice, NETWORK_KEY, PEER_A, VICTIM};

/// Hex vectors of PROTOCOL.md §10 by name.
fn vectors() -> BTreeMap<String, Vec<u8>> {
    let spec = fs::read_to_string("../PROTOCOL.md").expect("run from fuzz/: ../PROTOCOL.md");
    let start = spec.find("<!-- vectors:begin -->").expect("vectors begin");
    let end = spec.find("<!-- vectors:end -->").expect("vectors end");
    let mut out = BTreeMap::new();
    for line in spec[start..end].lines() {
        let Some((name, value)) = line.split_once('=') else { continue };
        let value = value.trim();
        let bytes: Option<Vec<u8>> =
            (0..value.len()).step_by(2).map(|i| u8::from_str_radix(value.get(i..i + 2)?, 16).ok()).collect();
        out.insert(name.trim().to_string(), bytes.expect("hex vector"));
    }
    assert_eq!(out["network_key"], NETWORK_KEY, "the harness uses the spec's network key");
    out
}

/// What the peer did, in time order: frames it sent (as received by the node under test) and
/// what the node under test's application did, so the harness can replay both.
enum Step {
    Frame(Instant, Vec<u8>),
    App(Instant, AppOp),
}

/// Two real nodes on a perfect 1 ms link: peer A and the node under test.
struct Pair {
    nodes: [Node; 2],
    addrs: [SocketAddr; 2],
    now: Instant,
    flight: VecDeque<(Instant, usize, usize, Vec<u8>)>,
    steps: Vec<Step>,
}

const PEER: usize = 0;
const VICTIM_IX: usize = 1;

impl Pair {
    fn new() -> Pair {
        let mut config = Config::new("peer-a", [1; 32]);
        config.require_fresh = false;
        let psk = Psk::default();
        let peer = Node::new(config, psk.key(), Boot::ephemeral(NodeId::from_u64(PEER_A)), Instant::ZERO).unwrap();
        let mut victim = psk.node(victim_config(0));
        victim.subscribe("#").unwrap();
        victim.serve("echo").unwrap();
        let mut p = Pair {
            nodes: [peer, victim],
            addrs: [peer_addr(0), SocketAddr::from(([192, 0, 2, 1], 4783))],
            now: Instant::ZERO,
            flight: VecDeque::new(),
            steps: Vec::new(),
        };
        p.flush(PEER);
        p.flush(VICTIM_IX);
        p
    }

    fn flush(&mut self, i: usize) {
        let mut buf = vec![0u8; 1200];
        let node = &mut self.nodes[i];
        if let Some(s) = node.poll_lease() {
            node.handle_lease_stored(s.lease_end);
        }
        while let Some(t) = node.poll_transmit(self.now, &mut buf).unwrap() {
            let to = match t.destination {
                Destination::Multicast => 1 - i,
                Destination::Unicast(a) => self.addrs.iter().position(|x| *x == a).expect("a known address"),
            };
            if to != i {
                self.flight.push_back((self.now + Duration::from_millis(1), i, to, buf[..t.len].to_vec()));
            }
        }
        let mut answers = Vec::new();
        while let Some(e) = self.nodes[i].poll_event() {
            if let (VICTIM_IX, Event::Request { from, call_id, payload, .. }) = (i, e) {
                answers.push((from, call_id, payload));
            }
        }
        for (from, call_id, payload) in answers {
            self.nodes[i].respond(self.now, from, call_id, Ok(&payload));
            self.steps.push(Step::App(self.now, AppOp::Respond { ok: true, payload }));
            self.flush(i);
        }
    }

    fn run_for(&mut self, dt: Duration) {
        let end = self.now + dt;
        loop {
            let timer = (0..2).filter_map(|i| self.nodes[i].poll_timeout().map(|t| (t, i))).min();
            let arrival = self.flight.front().map(|f| f.0);
            match (timer, arrival) {
                (_, Some(a)) if a <= end && timer.is_none_or(|(t, _)| a <= t) => {
                    let (at, from, to, bytes) = self.flight.pop_front().unwrap();
                    self.now = self.now.max(at);
                    if from == PEER {
                        self.steps.push(Step::Frame(self.now, bytes.clone()));
                    }
                    self.nodes[to].handle_datagram(self.now, self.addrs[from], &bytes);
                    self.flush(to);
                }
                (Some((t, i)), _) if t <= end => {
                    self.now = self.now.max(t);
                    self.nodes[i].handle_timeout(self.now);
                    self.flush(i);
                }
                _ => break,
            }
        }
        self.now = end;
    }

    /// Something the application of node `i` does, then a flush.
    fn app(&mut self, i: usize, f: impl FnOnce(&mut Node, Instant)) {
        f(&mut self.nodes[i], self.now);
        self.flush(i);
    }
}

/// A captured conversation exercising every record type the peer can send.
fn conversation() -> Vec<Step> {
    let ms = Duration::from_millis;
    let mut p = Pair::new();
    p.run_for(ms(300));
    p.app(PEER, |n, _| {
        let _ = n.subscribe("home/#");
    });
    p.run_for(ms(100));
    p.app(PEER, |n, _| {
        let _ = n.publish("home/kitchen/temp", b"21.5");
    });
    p.app(PEER, |n, now| {
        let _ = n.publish_reliable(now, "plant/line1/count", &[42], Some(Duration::from_secs(30)));
    });
    p.run_for(ms(500));
    p.app(PEER, |n, _| {
        let _ = n.publish("cam/1/frame", &[0x5a; 2500]);
    });
    p.run_for(ms(200));
    p.app(PEER, |n, now| {
        let _ = n.call(now, NodeId::from_u64(VICTIM), "echo", b"hi", Duration::from_secs(2));
    });
    p.run_for(ms(500));
    p.app(PEER, |n, now| {
        let _ = n.call(now, NodeId::from_u64(VICTIM), "nope", &[], Duration::from_secs(2));
    });
    p.run_for(ms(500));
    let topic = "home/victim/state".to_string();
    p.steps.push(Step::App(p.now, AppOp::PublishReliable { topic: topic.clone(), payload: b"on".to_vec(), ttl_ms: 0 }));
    p.app(VICTIM_IX, |n, now| {
        let _ = n.publish_reliable(now, &topic, b"on", None);
    });
    p.run_for(ms(1000));
    p.app(PEER, |n, now| {
        let _ = n.publish_reliable(now, "plant/line1/log", &[0x33; 3000], None);
    });
    p.run_for(ms(1000));
    p.app(PEER, |n, _| n.close());
    p.run_for(ms(500));
    p.steps
}

/// The conversation as a program for the sealed target, from `from` to `to` (frame indices).
fn program(steps: &[Step]) -> Vec<Op> {
    let psk = Psk::default();
    let mut ops = Vec::new();
    let mut last = Instant::ZERO;
    for step in steps {
        let at = match step {
            Step::Frame(at, _) | Step::App(at, _) => *at,
        };
        let mut gap = at.saturating_duration_since(last).as_millis() as u64;
        last = at;
        while gap > 255 {
            let ms = gap.min(u64::from(u16::MAX));
            ops.push(Op::Wait { ms: ms as u16 });
            gap -= ms;
        }
        match step {
            Step::Frame(_, frame) => {
                let (_, body) = psk.open(frame).expect("the peer's frames open");
                ops.push(Op::Frame { peer: 0, pn: PnChoice::Next, dt_ms: gap as u8, body });
            }
            Step::App(_, app) => {
                if gap > 0 {
                    ops.push(Op::Wait { ms: gap as u16 });
                }
                ops.push(Op::App(app.clone()));
            }
        }
    }
    ops
}

fn frame_op(body: Vec<u8>) -> Op {
    Op::Frame { peer: 0, pn: PnChoice::Next, dt_ms: 1, body }
}

fn record(r: &Record<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    r.emit(&mut out);
    out
}

fn sealed_program(flags: u8, ops: &[Op]) -> Vec<u8> {
    let mut out = vec![flags];
    out.extend(Op::encode_all(ops));
    out
}

fn raw_program(frames: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in frames {
        put_long(&mut out, f);
    }
    out
}

fn write(target: &str, seeds: &[(String, Vec<u8>)]) {
    let dir = Path::new("corpus").join(target);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for (name, bytes) in seeds {
        if seen.insert(bytes.clone()) {
            fs::write(dir.join(name), bytes).unwrap();
        }
    }
    println!("{target}: {} seeds", seen.len());
}

fn main() {
    let v = vectors();
    let frames = ["beacon_frame", "publish_frame", "binary_publish_frame", "reliable_publish_frame"];
    let plaintexts =
        ["beacon_plaintext", "publish_plaintext", "binary_publish_plaintext", "reliable_publish_plaintext"];
    let records = [
        "ack_record",
        "heartbeat_record",
        "fragment_record",
        "subscriptions_record",
        "repair_record",
        "block_repair_record",
    ];
    let records = [&plaintexts[..], &records[..], &["challenge_record", "echo_record"][..]].concat();
    let steps = conversation();
    let psk = Psk::default();
    let captured: Vec<&[u8]> = steps
        .iter()
        .filter_map(|s| match s {
            Step::Frame(_, f) => Some(&f[..]),
            Step::App(..) => None,
        })
        .collect();
    let bodies: Vec<Vec<u8>> = captured.iter().map(|f| psk.open(f).unwrap().1).collect();

    // One seed per distinct record kind the peer sent, plus the spec's.
    let mut by_kind = BTreeMap::new();
    for body in &bodies {
        by_kind.entry(body[0]).or_insert_with(|| body.clone());
    }
    let mut inner_msgs = Vec::new();
    for body in &bodies {
        for r in RecordIter::new(body).flatten() {
            if let Record::Data { header, chunk } = r {
                if header.count == 1 && Inner::parse(chunk).is_ok() {
                    inner_msgs.push(chunk.to_vec());
                }
            }
        }
    }

    let mut header: Vec<(String, Vec<u8>)> = frames.iter().map(|n| (n.to_string(), v[*n].clone())).collect();
    header.extend(captured.iter().take(4).enumerate().map(|(i, f)| (format!("captured_{i}"), f.to_vec())));
    write("header", &header);

    let mut recs: Vec<(String, Vec<u8>)> = records.iter().map(|n| (n.to_string(), v[*n].clone())).collect();
    recs.extend(by_kind.iter().map(|(k, b)| (format!("captured_kind_{k:02x}"), b.clone())));
    recs.push(("all_vectors".into(), records.iter().flat_map(|n| v[*n].clone()).collect()));
    write("records", &recs);

    let mut inner = vec![
        ("request_inner".to_string(), v["request_inner"].clone()),
        ("response_inner".to_string(), v["response_inner"].clone()),
        ("publish_inner".to_string(), Inner::Publish { topic: "home/kitchen/temp", payload: b"21.5" }.encode()),
    ];
    inner.extend(inner_msgs.iter().take(6).enumerate().map(|(i, m)| (format!("captured_{i}"), m.clone())));
    write("inner", &inner);

    // Identity mode's unsealed frames, one valid seed of each (and the wrong suite for each).
    use starling::wire::identity::{self as idw, Announce, CookieReply, HandshakeInit, HandshakeResp};
    let (a, b) = (NodeId::from_u64(PEER_A), NodeId::from_u64(VICTIM));
    let announce = Announce { net_tag: 0x49, sender: a, key: [7; 32], epoch: 3 }.emit();
    let mut init = HandshakeInit::emit_unmacked(0x49, a, b, &[5; idw::MSG1_LEN]);
    init.extend_from_slice(&[1; 32]);
    let mut resp = HandshakeResp::emit_unmacked(0x49, b, a, &[6; idw::MSG2_MAX]);
    resp.extend_from_slice(&[2; 16]);
    let reply = [8u8; idw::COOKIE_REPLY_LEN];
    let header = starling::wire::Header { suite: starling::wire::SUITE_COOKIE, net_tag: 0x49, sender: b, pn: 0 };
    let cookie = CookieReply { header, receiver: a, reply: &reply }.emit();
    write(
        "identity_frames",
        &[("announce".into(), announce), ("init".into(), init), ("resp".into(), resp), ("cookie".into(), cookie)],
    );

    write("state", &[("state_record".into(), v["state_record"].clone())]);

    let key_hex: String = v["network_key"].iter().map(|b| format!("{b:02x}")).collect();
    write(
        "keys",
        &[
            ("key".into(), format!("{key_hex}\n").into_bytes()),
            (
                "key_commented".into(),
                format!("# starling network key\n\n  {}  \n", key_hex.to_uppercase()).into_bytes(),
            ),
            ("node_id".into(), b"0123456789abcdef".to_vec()),
        ],
    );

    let topics: [(&str, &str); 8] = [
        ("home/kitchen/temp", "home/+/temp"),
        ("cam/1", "cam/#"),
        ("$SYS/broker/load", "#"),
        ("$SYS/broker/load", "$SYS/+/load"),
        ("a//b", "a/+/b"),
        ("/", "+/+"),
        ("home", "home/#"),
        ("sport/tennis/player1", "sport/tennis/+/#"),
    ];
    let topic_seeds: Vec<(String, Vec<u8>)> = topics
        .iter()
        .enumerate()
        .map(|(i, (n, f))| (format!("pair_{i}"), [n.as_bytes(), &[0xff], f.as_bytes()].concat()))
        .collect();
    write("topic", &topic_seeds);

    // Replay window: in order, a reorder inside the window, a duplicate, a jump past the window
    // and a number that fell out of it (op byte, then its operand; see fuzz_targets/replay.rs).
    let mut replay = Vec::new();
    for (op, arg) in [(0u8, 1u16), (0, 5), (1, 2), (1, 2), (0, 2000), (1, 1024), (1, 1023), (4, 0)] {
        replay.push(op);
        replay.extend_from_slice(&arg.to_le_bytes());
    }
    write("replay", &[("window".into(), replay)]);

    // Reassembly: limits, then a three-fragment message out of order with a duplicate, an
    // expiry pass and a single-fragment message (see fuzz_targets/reassembly.rs).
    let mut re = vec![0x00, 0x10, 4, 0x00, 0x10];
    for (index, chunk) in [(2u8, &b"c"[..]), (0, b"aa"), (0, b"aa"), (1, b"bb")] {
        re.extend_from_slice(&[2, 1, 1, 7, 3, index]);
        put_short(&mut re, chunk);
    }
    re.extend_from_slice(&[0, 250]);
    re.extend_from_slice(&[2, 0, 2, 8, 1, 0, 2, b'h', b'i']);
    write("reassembly", &[("three_fragments".into(), re)]);

    let vector_frames: Vec<&[u8]> = frames.iter().map(|n| &v[*n][..]).collect();
    let mut raw: Vec<(String, Vec<u8>)> = vec![("vector_frames".into(), raw_program(&vector_frames))];
    raw.extend(frames.iter().map(|n| (n.to_string(), raw_program(&[&v[*n]]))));
    for (i, chunk) in captured.chunks(6).enumerate().take(8) {
        raw.push((format!("captured_{i}"), raw_program(chunk)));
    }
    write("node_psk_raw", &raw);

    let beacon = v["beacon_plaintext"].clone();
    let mut sealed: Vec<(String, Vec<u8>)> = Vec::new();
    let conv = program(&steps);
    // The seed must take the node under test through the same conversation: every frame
    // accepted, the messages delivered, the call answered.
    let mut check = Driver::new(Psk::default(), 0);
    check.run(&conv);
    let s = check.node().stats();
    assert_eq!(s.rx_accepted, captured.len() as u64, "{s:?}");
    assert!(s.messages_delivered >= 4 && s.drop_stream == 0, "{s:?}");
    println!("conversation: {} frames from the peer, {} messages delivered", captured.len(), s.messages_delivered);
    sealed.push(("conversation".into(), sealed_program(0, &conv)));
    sealed.push(("conversation_embedded".into(), sealed_program(2, &conv)));
    // With freshness challenges on: the first frame is held, an Echo releases it.
    let mut fresh = conv.clone();
    fresh.insert(1, Op::Echo { peer: 0, floor: 0, body: Vec::new() });
    sealed.push(("conversation_fresh".into(), sealed_program(1, &fresh)));
    for name in &records {
        sealed.push((
            format!("beacon_then_{name}"),
            sealed_program(0, &[frame_op(beacon.clone()), frame_op(v[*name].clone())]),
        ));
    }
    // RPC through a unicast stream: the spec's request as the first chunk of peer A's stream.
    let data = |chunk: &[u8]| {
        let header = DataHeader { stream: 1, epoch: 1, seq: 0, low: 0, index: 0, count: 1, ttl_ms: 0 };
        record(&Record::Data { header, chunk })
    };
    let echo_request = Inner::Request { call_id: (1 << 32) | 7, to_epoch: 1, method: "echo", payload: &[1] }.encode();
    sealed.push((
        "request_and_respond".into(),
        sealed_program(
            0,
            &[
                frame_op(beacon.clone()),
                frame_op(data(&echo_request)),
                Op::App(AppOp::Respond { ok: true, payload: b"ok".to_vec() }),
                Op::Wait { ms: 300 },
                Op::Replay,
            ],
        ),
    ));
    sealed.push((
        "call_peer".into(),
        sealed_program(
            0,
            &[
                frame_op(beacon.clone()),
                Op::App(AppOp::Call { peer: 0, method: "relay.set".into(), payload: vec![1], timeout_ms: 2000 }),
                Op::Wait { ms: 50 },
                frame_op(data(&v["response_inner"])),
            ],
        ),
    ));
    sealed.push((
        "old_and_replayed".into(),
        sealed_program(
            1,
            &[
                frame_op(beacon.clone()),
                Op::Frame { peer: 0, pn: PnChoice::Skip(2000), dt_ms: 5, body: v["publish_plaintext"].clone() },
                Op::Frame { peer: 0, pn: PnChoice::Old(3), dt_ms: 5, body: v["publish_plaintext"].clone() },
                Op::Replay,
                Op::Echo { peer: 0, floor: 1, body: Vec::new() },
                Op::Raw(v["beacon_frame"].clone()),
                Op::App(AppOp::Close),
                Op::Wait { ms: 2000 },
            ],
        ),
    ));
    write("node_psk_sealed", &sealed);

    // Identity mode (see src/identity.rs for the step codes): flags, then settle (deliver
    // everything in flight, let 20 ms pass) around application steps.
    let settle = |p: &mut Vec<u8>| {
        for _ in 0..3 {
            p.extend(std::iter::repeat_n(0u8, 24));
            p.extend_from_slice(&[5, 20, 0]);
        }
    };
    let mut handshake = vec![0u8];
    settle(&mut handshake);
    let mut traffic = handshake.clone();
    traffic.extend_from_slice(&[6, 0, 4, b'2', b'1', b'.', b'5']); // victim publishes
    settle(&mut traffic);
    traffic.extend_from_slice(&[6, 0x81, 3, 0, b'4', b'2']); // peer publishes reliably
    settle(&mut traffic);
    traffic.extend_from_slice(&[6, 0x82, 2, b'h', b'i', 0xd0, 0x07]); // peer calls the victim
    settle(&mut traffic);
    let mut revoke = traffic.clone();
    revoke.extend_from_slice(&[6, 3]); // the victim revokes the peer
    settle(&mut revoke);
    revoke.extend_from_slice(&[6, 4]); // and restores it
    settle(&mut revoke);
    let mut faults = handshake.clone();
    faults.extend_from_slice(&[6, 0x81, 3, 0, b'4', b'2', 2, 40, 0, 1, 3, 0, 1, 4, 0]);
    settle(&mut faults);
    let mut fresh = traffic.clone();
    fresh[0] = 1;
    // The seed must get through the handshake and carry messages and the call both ways.
    let mut check = starling_fuzz::identity::Pair::new(traffic[0]);
    check.run(&traffic[1..]);
    let (v, p) = (check.node(0).stats(), check.node(1).stats());
    println!(
        "identity traffic: handshakes {}+{}, delivered {}+{}, accepted {}+{}",
        v.handshakes_completed,
        p.handshakes_completed,
        v.messages_delivered,
        p.messages_delivered,
        v.rx_accepted,
        p.rx_accepted
    );
    assert!(v.handshakes_completed + p.handshakes_completed >= 1 && v.messages_delivered >= 1, "{v:?}");
    write(
        "node_identity_pair",
        &[
            ("handshake".into(), handshake),
            ("traffic".into(), traffic),
            ("revoke_and_restore".into(), revoke),
            ("faults".into(), faults),
            ("traffic_fresh".into(), fresh),
        ],
    );
}
