//! Checks identity mode's test vectors in PROTOCOL.md §11.9 two ways: `snow` driven directly
//! with fixed ephemeral keys and the macs computed from the spec's text, against Starling's own
//! handshake code; and a real `Node` that must answer the spec's HandshakeInit frame.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use blake2::digest::consts::U16;
use blake2::digest::{KeyInit, Mac};
use blake2::{Blake2sMac, Blake2sMac256};
use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::ChaCha20Poly1305;
use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use snow::params::{CipherChoice, DHChoice, HashChoice};
use snow::resolvers::{CryptoResolver, DefaultResolver};
use snow::types::{Cipher, Dh, Hash, Random};
use starling::identity::{AllowEntry, Allowlist, Identity, Permissions};
use starling::noise::{self, Initiator, Responder};
use starling::wire::{Header, MAX_DATAGRAM, SUITE_HS_RESP};
use starling::{Boot, Config, Instant, Node, TopicFilter};

const SPEC: &str = include_str!("../../PROTOCOL.md");

fn vectors() -> BTreeMap<String, Vec<u8>> {
    let start = SPEC.find("<!-- identity-vectors:begin -->").expect("begin marker");
    let end = SPEC.find("<!-- identity-vectors:end -->").expect("end marker");
    let mut out = BTreeMap::new();
    let mut last: Option<String> = None;
    for line in SPEC[start..end].lines().map(str::trim) {
        if let Some((name, value)) = line.split_once('=') {
            out.insert(name.trim().to_owned(), unhex(value));
            last = Some(name.trim().to_owned());
        } else if !line.is_empty() && !line.starts_with("```") && !line.starts_with("<!--") {
            out.get_mut(last.as_ref().expect("a value first")).unwrap().extend(unhex(line));
        }
    }
    out
}

fn unhex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex")).collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn check(v: &BTreeMap<String, Vec<u8>>, name: &str, actual: &[u8]) {
    let expected = v.get(name).unwrap_or_else(|| panic!("PROTOCOL.md lacks {name} = {}", hex(actual)));
    assert_eq!(hex(expected), hex(actual), "vector {name}");
}

const S_I: [u8; 32] = [0x11; 32];
const S_R: [u8; 32] = [0x22; 32];
const SEED_I: [u8; 32] = [0xe1; 32];
const SEED_R: [u8; 32] = [0xe2; 32];
const K_DISC: [u8; 32] = [0x5d; 32];

/// The ephemeral secret Starling draws from a seeded RNG: the first 32 bytes of ChaCha20Rng.
fn ephemeral(seed: [u8; 32]) -> [u8; 32] {
    let mut e = [0u8; 32];
    ChaCha20Rng::from_seed(seed).fill_bytes(&mut e);
    e
}

/// Message 1's payload: `epoch_i = 1`, `counter_i = 5`.
fn payload_i() -> Vec<u8> {
    let mut p = 1u32.to_be_bytes().to_vec();
    p.extend_from_slice(&5u64.to_be_bytes());
    p
}

fn payload_r() -> Vec<u8> {
    let mut p = 2u32.to_be_bytes().to_vec();
    p.push(0x85);
    p.extend_from_slice(&K_DISC);
    p.extend_from_slice(&7u64.to_be_bytes());
    p
}

/// `snow` with default primitives and an RNG that is never needed (ephemeral keys are fixed).
struct NoRng;
impl Random for NoRng {
    fn try_fill_bytes(&mut self, _: &mut [u8]) -> Result<(), snow::Error> {
        Err(snow::Error::Rng)
    }
}
struct Fixed;
impl CryptoResolver for Fixed {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        Some(Box::new(NoRng))
    }
    fn resolve_dh(&self, c: &DHChoice) -> Option<Box<dyn Dh>> {
        DefaultResolver.resolve_dh(c)
    }
    fn resolve_hash(&self, c: &HashChoice) -> Option<Box<dyn Hash>> {
        DefaultResolver.resolve_hash(c)
    }
    fn resolve_cipher(&self, c: &CipherChoice) -> Option<Box<dyn Cipher>> {
        DefaultResolver.resolve_cipher(c)
    }
}

fn mac16(key: &[u8], data: &[u8]) -> [u8; 16] {
    let mut m = <Blake2sMac<U16> as KeyInit>::new_from_slice(key).unwrap();
    m.update(data);
    m.finalize().into_bytes().into()
}

fn prf(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut m = <Blake2sMac256 as KeyInit>::new_from_slice(key).unwrap();
    m.update(data);
    m.finalize().into_bytes().into()
}

#[test]
fn handshake_and_frames_match_the_spec() {
    let v = vectors();
    let (i, r) = (Identity::from_secret(S_I), Identity::from_secret(S_R));
    check(&v, "S_i", &i.public().0);
    check(&v, "S_r", &r.public().0);
    check(&v, "id_i", &i.node_id().to_bytes());
    check(&v, "id_r", &r.node_id().to_bytes());
    let net_tag = prf(b"starling/v1/identity-net-tag", b"home")[0];
    check(&v, "net_tag", &[net_tag]);
    check(&v, "e_i", &ephemeral(SEED_I));
    check(&v, "e_r", &ephemeral(SEED_R));

    // Starling's handshake code, with the seeds.
    let pro = noise::prologue("home");
    let mut msg1 = Vec::new();
    let init = Initiator::start(&i, &r.public(), &pro, SEED_I, &payload_i(), &mut msg1).unwrap();
    check(&v, "msg1", &msg1);
    let resp = Responder::read(&r, &pro, SEED_R, &msg1).unwrap();
    let mut msg2 = Vec::new();
    let kr = resp.finish(&payload_r(), &mut msg2).unwrap();
    check(&v, "msg2", &msg2);
    let (ki, got) = init.finish(&msg2).unwrap();
    assert_eq!(got, payload_r());
    check(&v, "handshake_hash", &ki.hash);
    check(&v, "i_to_r", &ki.send);
    check(&v, "r_to_i", &ki.recv);
    check(&v, "session_tag", &[ki.hash[0]]);
    assert_eq!((kr.send, kr.recv), (ki.recv, ki.send));

    // The same handshake with snow alone and the listed ephemeral keys.
    let params: snow::params::NoiseParams = noise::PATTERN.parse().unwrap();
    let (e_i, e_r) = (v["e_i"].clone(), v["e_r"].clone());
    let mut hi = snow::Builder::with_resolver(params.clone(), Box::new(Fixed))
        .local_private_key(&S_I)
        .unwrap()
        .remote_public_key(&r.public().0)
        .unwrap()
        .prologue(&pro)
        .unwrap()
        .fixed_ephemeral_key_for_testing_only(&e_i)
        .build_initiator()
        .unwrap();
    let mut hr = snow::Builder::with_resolver(params, Box::new(Fixed))
        .local_private_key(&S_R)
        .unwrap()
        .prologue(&pro)
        .unwrap()
        .fixed_ephemeral_key_for_testing_only(&e_r)
        .build_responder()
        .unwrap();
    let mut buf = [0u8; 256];
    let n = hi.write_message(&payload_i(), &mut buf).unwrap();
    assert_eq!(hex(&buf[..n]), hex(&v["msg1"]), "msg1 from snow alone");
    let mut p = [0u8; 256];
    hr.read_message(&buf[..n], &mut p).unwrap();
    let n = hr.write_message(&payload_r(), &mut buf).unwrap();
    assert_eq!(hex(&buf[..n]), hex(&v["msg2"]), "msg2 from snow alone");
    hi.read_message(&buf[..n], &mut p).unwrap();
    assert_eq!(hex(hi.get_handshake_hash()), hex(&v["handshake_hash"]));

    // Frames, built from the text of §11.2-11.3.
    let mut announce = vec![0x11, net_tag];
    announce.extend_from_slice(&i.node_id().to_bytes());
    announce.extend_from_slice(&[0; 6]);
    announce.extend_from_slice(&i.public().0);
    announce.extend_from_slice(&1u32.to_be_bytes());
    announce.resize(176, 0); // padded to the size of a HandshakeInit
    check(&v, "announce_frame", &announce);
    let mut init_frame = vec![0x12, net_tag];
    init_frame.extend_from_slice(&i.node_id().to_bytes());
    init_frame.extend_from_slice(&[0; 6]);
    init_frame.extend_from_slice(&r.node_id().to_bytes());
    init_frame.extend_from_slice(&v["msg1"]);
    init_frame.extend_from_slice(&[0; 12]);
    let mac1 = mac16(&prf(b"starling/v1/mac1", &r.public().0), &init_frame);
    init_frame.extend_from_slice(&mac1);
    init_frame.extend_from_slice(&[0; 16]);
    check(&v, "init_frame", &init_frame);
    let mut unicast = vec![0x15, v["session_tag"][0]];
    unicast.extend_from_slice(&i.node_id().to_bytes());
    unicast.extend_from_slice(&[0, 0, 0, 0, 0, 1]);
    let mut body = vec![0x0c, 0x00];
    let mut nonce = [0u8; 12];
    nonce[11] = 1;
    let tag = ChaCha20Poly1305::new_from_slice(&v["i_to_r"])
        .unwrap()
        .encrypt_in_place_detached(&nonce.into(), &unicast, &mut body)
        .unwrap();
    unicast.extend_from_slice(&body);
    unicast.extend_from_slice(&tag);
    check(&v, "unicast_frame", &unicast);

    // A real node answers the spec's HandshakeInit with a HandshakeResp.
    let all = Permissions {
        publish: vec![TopicFilter::new("#").unwrap()],
        subscribe: vec![TopicFilter::new("#").unwrap()],
        call: vec![],
    };
    let list = Allowlist {
        network: "home".into(),
        entries: vec![
            AllowEntry { name: "i".into(), key: i.public(), permissions: all.clone() },
            AllowEntry { name: "r".into(), key: r.public(), permissions: all },
        ],
    };
    let mut node =
        Node::new_identity(Config::new("r", [3; 32]), r.clone(), list, Boot::ephemeral(r.node_id()), Instant::ZERO)
            .unwrap();
    let mut out = vec![0u8; MAX_DATAGRAM];
    while node.poll_transmit(Instant::ZERO, &mut out).unwrap().is_some() {}
    let from: SocketAddr = "127.0.0.1:5000".parse().unwrap();
    node.handle_datagram(Instant::ZERO, from, &init_frame);
    assert_eq!(node.stats().handshakes_failed, 0, "{:?}", node.stats());
    let t = node.poll_transmit(Instant::ZERO, &mut out).unwrap().expect("an answer");
    assert_eq!(Header::parse(&out[..t.len]).unwrap().suite, SUITE_HS_RESP);
    assert!(t.len <= init_frame.len(), "an answer of {} bytes to {}: no amplification", t.len, init_frame.len());
    assert_eq!(t.destination, starling::Destination::Unicast(from));
}
