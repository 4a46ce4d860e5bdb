//! Checks the test vectors in PROTOCOL.md byte for byte, two ways: against an independent
//! construction from the spec's text (BLAKE2s and ChaCha20-Poly1305 called directly), and against
//! what the `Node` actually emits and accepts.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use blake2::digest::{KeyInit, Mac};
use blake2::Blake2sMac256;
use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::ChaCha20Poly1305;
use starling::crypto::NetworkKeys;
use starling::state::{Boot, PersistedState};
use starling::wire::MAX_DATAGRAM;
use starling::{Config, Event, Instant, NetworkKey, Node, NodeId};

const SPEC: &str = include_str!("../../PROTOCOL.md");

/// `name = hex` lines between the vector markers of PROTOCOL.md.
fn vectors() -> BTreeMap<String, Vec<u8>> {
    let start = SPEC.find("<!-- vectors:begin -->").expect("PROTOCOL.md has a vectors:begin marker");
    let end = SPEC.find("<!-- vectors:end -->").expect("PROTOCOL.md has a vectors:end marker");
    let mut out = BTreeMap::new();
    let mut last: Option<String> = None;
    for line in SPEC[start..end].lines() {
        let line = line.trim();
        if let Some((name, value)) = line.split_once('=') {
            let name = name.trim().to_owned();
            out.insert(name.clone(), unhex(value.trim()));
            last = Some(name);
        } else if !line.is_empty() && !line.starts_with("```") && !line.starts_with("<!--") && !line.starts_with('#') {
            // continuation line of a long value
            let name = last.clone().expect("continuation after a value");
            out.get_mut(&name).unwrap().extend(unhex(line));
        }
    }
    out
}

fn unhex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex in vectors")).collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn prf(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut m = <Blake2sMac256 as KeyInit>::new_from_slice(key).unwrap();
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

fn check(v: &BTreeMap<String, Vec<u8>>, name: &str, actual: &[u8]) {
    let expected = v.get(name).unwrap_or_else(|| panic!("PROTOCOL.md lacks vector {name}; actual: {}", hex(actual)));
    assert_eq!(hex(expected), hex(actual), "vector {name}");
}

const SENDER: u64 = 0x0123_4567_89ab_cdef;

fn spec_node(v: &BTreeMap<String, Vec<u8>>) -> Node {
    let key = NetworkKey::from_bytes(v["network_key"].clone().try_into().unwrap());
    let mut config = Config::new("kitchen", [0; 32]);
    config.beacon_interval = std::time::Duration::from_millis(5000);
    let boot = Boot { node_id: NodeId::from_u64(SENDER), epoch: 1, first_pn: 0, lease_end: 1 << 20 };
    Node::new(config, &key, boot, Instant::ZERO).unwrap()
}

#[test]
fn key_derivation_matches_spec() {
    let v = vectors();
    let k = &v["network_key"];
    check(&v, "net_tag", &prf(k, &[b"starling/v1/net-tag"])[..1]);
    let data = prf(k, &[b"starling/v1/data"]);
    check(&v, "data_key", &data);
    check(&v, "sender_key", &prf(&data, &[b"starling/v1/sender", &SENDER.to_be_bytes()]));
}

#[test]
fn frames_match_spec_construction_and_node_output() {
    let v = vectors();
    let sender_key = &v["sender_key"];
    let aead = ChaCha20Poly1305::new_from_slice(sender_key).unwrap();
    // Build each frame from the spec's description alone.
    let seal = |pn: u64, body: &[u8]| {
        let mut frame = vec![0x10, v["net_tag"][0]];
        frame.extend_from_slice(&SENDER.to_be_bytes());
        frame.extend_from_slice(&pn.to_be_bytes()[2..]);
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&pn.to_be_bytes());
        let mut buf = body.to_vec();
        let tag = aead.encrypt_in_place_detached(&nonce.into(), &frame, &mut buf).unwrap();
        frame.extend_from_slice(&buf);
        frame.extend_from_slice(&tag);
        frame
    };
    check(&v, "beacon_frame", &seal(0, &v["beacon_plaintext"]));
    check(&v, "publish_frame", &seal(1, &v["publish_plaintext"]));
    check(&v, "binary_publish_frame", &seal(2, &v["binary_publish_plaintext"]));

    // The node emits exactly these frames.
    let mut node = spec_node(&v);
    let mut buf = [0u8; MAX_DATAGRAM];
    let t = node.poll_transmit(Instant::ZERO, &mut buf).unwrap().unwrap();
    check(&v, "beacon_frame", &buf[..t.len]);
    node.publish("home/kitchen/temp", b"21.5").unwrap();
    let t = node.poll_transmit(Instant::ZERO, &mut buf).unwrap().unwrap();
    check(&v, "publish_frame", &buf[..t.len]);
    node.publish("cam/1", &[0x00, 0xff, 0x00]).unwrap();
    let t = node.poll_transmit(Instant::ZERO, &mut buf).unwrap().unwrap();
    check(&v, "binary_publish_frame", &buf[..t.len]);
    node.publish_reliable(Instant::ZERO, "home/kitchen/temp", b"21.5", Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let t = node.poll_transmit(Instant::ZERO, &mut buf).unwrap().unwrap();
    check(&v, "reliable_publish_frame", &buf[..t.len]);
    check(&v, "reliable_publish_frame", &seal(3, &v["reliable_publish_plaintext"]));
}

#[test]
fn stream_and_rpc_records_match_spec() {
    use starling::wire::{stream, Ack, DataHeader, FragmentHeader, Heartbeat, Inner, Record, RecordIter};
    let v = vectors();
    let inner = Inner::Publish { topic: "home/kitchen/temp", payload: b"21.5" }.encode();
    let records: Vec<(&str, Record)> = vec![
        (
            "reliable_publish_plaintext",
            Record::Data {
                header: DataHeader {
                    stream: stream::MULTICAST,
                    epoch: 1,
                    seq: 0,
                    low: 0,
                    index: 0,
                    count: 1,
                    ttl_ms: 30_000,
                },
                chunk: &inner,
            },
        ),
        (
            "ack_record",
            Record::Ack(Ack { target: SENDER, stream: stream::MULTICAST, epoch: 1, next: 5, missing: vec![(7, 2)] }),
        ),
        ("heartbeat_record", Record::Heartbeat(Heartbeat { stream: stream::UNICAST, epoch: 2, low: 3, next: 300 })),
        (
            "fragment_record",
            Record::Fragment { header: FragmentHeader { msg_id: 9, index: 1, count: 2 }, chunk: &[0xaa, 0xbb] },
        ),
        ("subscriptions_record", Record::Subscriptions(vec!["home/+/temp", "cam/#"])),
        ("challenge_record", Record::Challenge(0x0102_0304_0506_0708)),
        ("echo_record", Record::Echo { nonce: 0x0102_0304_0506_0708, floor: 1000 }),
    ];
    for (name, record) in &records {
        let mut out = Vec::new();
        record.emit(&mut out);
        check(&v, name, &out);
        assert_eq!(RecordIter::new(&v[*name]).next(), Some(Ok(record.clone())), "{name} parses back");
    }
    let request = Inner::Request { call_id: (1 << 32) | 7, to_epoch: 2, method: "relay.set", payload: &[1] };
    check(&v, "request_inner", &request.encode());
    assert_eq!(Inner::parse(&v["request_inner"]), Ok(request));
    let response = Inner::Response { call_id: (1 << 32) | 7, status: 0, payload: b"ok" };
    check(&v, "response_inner", &response.encode());
    assert_eq!(Inner::parse(&v["response_inner"]), Ok(response));
}

/// A parity repair symbol (PROTOCOL.md §6.8) is RFC 6330's: the vector's symbol is the first
/// repair symbol of the ten-byte message `repair_message` in four-byte chunks, and with any two
/// of the three chunks it rebuilds the third.
#[test]
fn repair_record_matches_spec_and_rebuilds_any_lost_chunk() {
    use starling::wire::{stream, Record, RecordIter, RepairHeader};
    let v = vectors();
    let msg = &v["repair_message"];
    let chunks: Vec<&[u8]> = msg.chunks(4).collect();
    let symbols = starling::parity::encode(chunks.iter().copied(), msg.len() as u32, 4, 0, 1);
    let (esi, symbol) = &symbols[0];
    let header =
        RepairHeader { stream: stream::MULTICAST, epoch: 1, first: 5, len: 10, symbol: 4, esi: *esi, ttl_ms: 0 };
    let mut out = Vec::new();
    Record::Repair { header, symbol }.emit(&mut out);
    check(&v, "repair_record", &out);
    let Some(Ok(Record::Repair { header: parsed, symbol: bytes })) = RecordIter::new(&v["repair_record"]).next() else {
        panic!("repair_record parses")
    };
    assert_eq!((parsed, bytes), (header, &symbol[..]));
    for lost in 0..3 {
        let held = chunks.iter().enumerate().filter(|(i, _)| *i != lost).map(|(i, c)| (i as u32, *c));
        let rebuilt = starling::parity::decode(10, 4, held, [(*esi, bytes)].into_iter());
        assert_eq!(rebuilt.as_deref(), Some(&msg[..]), "chunk {lost} lost");
    }
}

/// A block repair symbol (PROTOCOL.md §6.9): members zero-padded to the longest, the record as
/// the spec writes it, and any one lost member rebuilt from the other two and the symbol.
#[test]
fn block_repair_record_matches_spec_and_rebuilds_any_lost_member() {
    use starling::wire::{stream, BlockRepairHeader, Record, RecordIter};
    let v = vectors();
    let members = [&v["block_member_0"], &v["block_member_1"], &v["block_member_2"]];
    let symbol = members.iter().map(|m| m.len()).max().unwrap();
    let padded: Vec<Vec<u8>> = members
        .iter()
        .map(|m| {
            let mut p = m.to_vec();
            p.resize(symbol, 0);
            p
        })
        .collect();
    let len = (3 * symbol) as u32;
    let symbols = starling::parity::encode(padded.iter().map(|p| &p[..]), len, symbol as u16, 0, 1);
    let (esi, bytes) = &symbols[0];
    let header = BlockRepairHeader {
        stream: stream::MULTICAST,
        epoch: 1,
        first: 16,
        members: 0b1101,
        symbol: symbol as u16,
        esi: *esi,
        lens: members.iter().map(|m| m.len() as u16).collect(),
    };
    let mut out = Vec::new();
    Record::BlockRepair { header: header.clone(), symbol: bytes }.emit(&mut out);
    check(&v, "block_repair_record", &out);
    let Some(Ok(Record::BlockRepair { header: parsed, symbol: sym })) =
        RecordIter::new(&v["block_repair_record"]).next()
    else {
        panic!("block_repair_record parses")
    };
    assert_eq!(parsed.member_seqs().collect::<Vec<_>>(), [16, 18, 19]);
    assert_eq!((parsed, sym), (header, &bytes[..]));
    for lost in 0..3 {
        let held = padded.iter().enumerate().filter(|(i, _)| *i != lost).map(|(i, p)| (i as u32, &p[..]));
        let rebuilt = starling::parity::decode(len, symbol as u16, held, [(*esi, sym)].into_iter()).unwrap();
        assert_eq!(&rebuilt[lost * symbol..lost * symbol + members[lost].len()], &members[lost][..], "member {lost}");
    }
}

#[test]
fn node_accepts_vector_frames() {
    let v = vectors();
    let key = NetworkKey::from_bytes(v["network_key"].clone().try_into().unwrap());
    let boot = Boot { node_id: NodeId::from_u64(1), epoch: 1, first_pn: 0, lease_end: 1 << 20 };
    // The vector frames' sender cannot answer a freshness challenge: this test is about decoding.
    let mut config = Config::new("rx", [1; 32]);
    config.require_fresh = false;
    let mut rx = Node::new(config, &key, boot, Instant::ZERO).unwrap();
    rx.subscribe("#").unwrap();
    let from: SocketAddr = "127.0.0.1:4000".parse().unwrap();
    for name in ["beacon_frame", "publish_frame", "binary_publish_frame"] {
        rx.handle_datagram(Instant::from_millis(1), from, &v[name]);
    }
    let events: Vec<Event> = std::iter::from_fn(|| rx.poll_event()).collect();
    assert!(matches!(&events[0], Event::PeerUp(p) if p.name == "kitchen" && p.id == NodeId::from_u64(SENDER)));
    let msgs: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::Message(m) => Some((m.topic.as_str(), m.payload.as_slice())),
            _ => None,
        })
        .collect();
    assert_eq!(msgs, [("home/kitchen/temp", &b"21.5"[..]), ("cam/1", &[0x00, 0xff, 0x00][..])]);
    assert_eq!(rx.stats().rx_accepted, 3);
}

const RECEIVER: u64 = 0xfedc_ba98_7654_3210;

/// PSK unicast frames (suite 7) are sealed with the key of the pair: built from the spec's text,
/// accepted by the node they are addressed to, refused by any other member (PROTOCOL.md §3.1).
#[test]
fn unicast_frames_are_sealed_for_their_receiver() {
    let v = vectors();
    let mut ids = SENDER.to_be_bytes().to_vec();
    ids.extend_from_slice(&RECEIVER.to_be_bytes());
    let pair = prf(&v["data_key"], &[b"starling/v1/pair", &ids]);
    check(&v, "pair_key", &pair);
    let pn = 4u64;
    let mut frame = vec![0x17, v["net_tag"][0]];
    frame.extend_from_slice(&SENDER.to_be_bytes());
    frame.extend_from_slice(&pn.to_be_bytes()[2..]);
    let mut nonce = [0u8; 12];
    nonce[4..].copy_from_slice(&pn.to_be_bytes());
    let mut buf = v["challenge_record"].clone();
    let aead = ChaCha20Poly1305::new_from_slice(&pair).unwrap();
    let tag = aead.encrypt_in_place_detached(&nonce.into(), &frame, &mut buf).unwrap();
    frame.extend_from_slice(&buf);
    frame.extend_from_slice(&tag);
    check(&v, "unicast_frame", &frame);

    let key = NetworkKey::from_bytes(v["network_key"].clone().try_into().unwrap());
    let from: SocketAddr = "127.0.0.1:4000".parse().unwrap();
    let node = |id: u64| {
        let mut config = Config::new("rx", [1; 32]);
        config.require_fresh = false;
        let boot = Boot { node_id: NodeId::from_u64(id), epoch: 1, first_pn: 0, lease_end: 1 << 20 };
        Node::new(config, &key, boot, Instant::ZERO).unwrap()
    };
    // Its receiver opens it and answers the Challenge with an Echo, by unicast, for the sender alone.
    let mut rx = node(RECEIVER);
    let mut out = [0u8; MAX_DATAGRAM];
    while rx.poll_transmit(Instant::ZERO, &mut out).unwrap().is_some() {}
    rx.handle_datagram(Instant::from_millis(1), from, &frame);
    assert_eq!(rx.stats().rx_accepted, 1);
    let t = rx.poll_transmit(Instant::from_millis(1), &mut out).unwrap().expect("an echo");
    assert_eq!(t.destination, starling::Destination::Unicast(from));
    assert_eq!(out[0], 0x17);
    let mut echo = out[..t.len].to_vec();
    let back = NetworkKeys::derive(&key).pair_key(NodeId::from_u64(RECEIVER), NodeId::from_u64(SENDER));
    let echo_pn = starling::wire::Header::parse(&echo).unwrap().pn;
    back.open(echo_pn, &mut echo, 16).expect("sealed for the pair (receiver, sender)");
    // Any other member refuses it: a call captured on its way to one node cannot run on another.
    let mut other = node(1);
    other.handle_datagram(Instant::from_millis(1), from, &frame);
    assert_eq!((other.stats().rx_accepted, other.stats().drop_auth), (0, 1));
}

#[test]
fn state_record_matches_spec() {
    let v = vectors();
    let s = PersistedState { node_id: NodeId::from_u64(SENDER), epoch: 1, lease_end: 1 << 20 };
    check(&v, "state_record", &s.encode());
    assert_eq!(PersistedState::decode(&v["state_record"]), Ok(s));
}

#[test]
fn payload_limit_matches_spec_section_2_4() {
    let v = vectors();
    let mut node = spec_node(&v);
    let topic = "home/kitchen/temp";
    assert_eq!(node.max_payload(topic.len()), 1147);
    node.publish(topic, &[0xa5; 1147]).unwrap();
    let mut buf = [0u8; MAX_DATAGRAM];
    let _beacon = node.poll_transmit(Instant::ZERO, &mut buf).unwrap().unwrap();
    let t = node.poll_transmit(Instant::ZERO, &mut buf).unwrap().unwrap();
    assert_eq!(t.len, MAX_DATAGRAM, "a maximal publish fills the datagram exactly");
    // above max_message nothing is sent, and the error names the limit
    let max = node.config().max_message;
    let err = node.publish(topic, &vec![0u8; max + 1]).unwrap_err();
    assert_eq!(err, starling::PublishError::TooLarge { size: max + 1, max });
    assert!(err.to_string().contains(&max.to_string()), "{err}");
    // and every topic length leaves a payload that fits exactly
    for len in 1..=255 {
        let max = node.max_payload(len);
        let t = "t".repeat(len);
        node.publish(&t, &vec![1u8; max]).unwrap();
        let t = node.poll_transmit(Instant::ZERO, &mut buf).unwrap().unwrap();
        assert!(t.len <= MAX_DATAGRAM && t.len >= MAX_DATAGRAM - 1, "topic {len}: {}", t.len);
    }
}
