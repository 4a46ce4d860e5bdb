//! Identity mode: two real nodes (the node under test and one peer, both on the allowlist) talk
//! over a network the fuzzer controls: it delivers, drops, duplicates, corrupts and reorders
//! their datagrams, lets time pass, injects raw datagrams, and makes either application publish,
//! subscribe, call or revoke the other's key. This reaches Noise handshakes, cookies, session and
//! multicast key handover and the identity frame checks without the harness reimplementing the
//! handshake: the peer is the real implementation.
//!
//! Invariants after every step, for both nodes: no panic or livelock, `poll_transmit` runs dry,
//! datagrams stay within `max_datagram` and parse as headers, frames sealed under the packet
//! number lease (unicast and multicast suites) carry strictly increasing packet numbers, and every
//! datagram handed in is counted exactly once (unsealed control datagrams in `rx_unsealed`).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use starling::identity::{AllowEntry, Allowlist, Identity, MethodPattern, Permissions};
use starling::wire::{Header, SUITE_MULTICAST, SUITE_UNICAST};
use starling::{Boot, Config, Destination, Instant, Node, TopicFilter};

use crate::Reader;

/// Secrets of the node under test (index 0) and of its peer (index 1).
pub const SECRETS: [[u8; 32]; 2] = [[0x11; 32], [0x22; 32]];

const MAX_BURST: usize = 100_000;
const MAX_SPIN: u32 = 1_000;
const MAX_FLIGHT: usize = 256;

fn identity(i: usize) -> Identity {
    Identity::from_secret(SECRETS[i])
}

/// The allowlist: both nodes, each allowed everything; `only` keeps just that node (a revocation).
pub fn allowlist(only: Option<usize>) -> Allowlist {
    let all = Permissions {
        publish: vec![TopicFilter::new("#").unwrap()],
        subscribe: vec![TopicFilter::new("#").unwrap()],
        call: vec![MethodPattern::new("*").unwrap()],
    };
    let entries = (0..2)
        .filter(|i| only.is_none_or(|o| o == *i))
        .map(|i| AllowEntry { name: ["victim", "peer"][i].into(), key: identity(i).public(), permissions: all.clone() })
        .collect();
    Allowlist { network: "fuzz".into(), entries }
}

fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([192, 0, 2, 20 + i as u8], 4783))
}

/// Two identity-mode nodes and the datagrams in flight between them.
pub struct Pair {
    nodes: [Node; 2],
    now: Instant,
    /// (to, from, bytes), oldest first.
    flight: VecDeque<(usize, usize, Vec<u8>)>,
    last_pn: [Option<u64>; 2],
    buf: Vec<u8>,
}

impl Pair {
    /// Both nodes started at time zero; `flags` bit 0 turns freshness challenges on.
    pub fn new(flags: u8) -> Pair {
        let node = |i: usize| {
            let mut config = Config::new(["victim", "peer"][i], [i as u8 + 1; 32]);
            config.require_fresh = flags & 1 != 0;
            let id = identity(i);
            let boot = Boot::ephemeral(id.node_id());
            let mut n = Node::new_identity(config, id, allowlist(None), boot, Instant::ZERO).expect("a valid node");
            n.subscribe("#").unwrap();
            n.serve("echo").unwrap();
            n
        };
        let mut p = Pair {
            nodes: [node(0), node(1)],
            now: Instant::ZERO,
            flight: VecDeque::new(),
            last_pn: [None; 2],
            buf: vec![0; 1200],
        };
        p.drain(0);
        p.drain(1);
        p
    }

    /// The node under test (0) or the peer (1).
    pub fn node(&self, i: usize) -> &Node {
        &self.nodes[i]
    }

    /// Runs a whole program.
    pub fn run(&mut self, data: &[u8]) {
        let mut r = Reader::new(data);
        while !r.is_empty() {
            self.step(&mut r);
        }
    }

    fn step(&mut self, r: &mut Reader<'_>) {
        match r.u8() % 8 {
            0 => {
                if let Some((to, from, bytes)) = self.flight.pop_front() {
                    self.deliver(to, from, &bytes);
                }
            }
            1 => {
                self.flight.pop_front();
            }
            2 => {
                let (at, x) = (r.u16(), r.u8() | 1);
                if let Some((to, from, mut bytes)) = self.flight.pop_front() {
                    if !bytes.is_empty() {
                        let i = usize::from(at) % bytes.len();
                        bytes[i] ^= x;
                    }
                    self.deliver(to, from, &bytes);
                }
            }
            3 => {
                if let Some((to, from, bytes)) = self.flight.front().cloned() {
                    self.deliver(to, from, &bytes);
                }
            }
            4 => {
                if let Some(f) = self.flight.pop_front() {
                    self.flight.push_back(f);
                }
            }
            5 => self.advance(Duration::from_millis(r.u16().into())),
            6 => self.app(r),
            _ => {
                let to = usize::from(r.u8() % 2);
                let bytes = r.long().to_vec();
                self.deliver(to, 1 - to, &bytes);
            }
        }
        for i in 0..2 {
            let s = self.nodes[i].stats();
            let held = self.nodes[i].held_frames() as u64;
            let counted = s.rx_accepted + s.dropped() + s.rx_own + s.node_id_conflicts + s.rx_unsealed + held;
            // Announce, handshake and cookie datagrams are counted in rx_unsealed.
            assert_eq!(counted, s.rx_datagrams, "node {i}: a datagram counted twice or never: {s:?}");
        }
    }

    fn app(&mut self, r: &mut Reader<'_>) {
        let op = r.u8();
        let i = usize::from(op >> 7);
        let now = self.now;
        let other = self.nodes[1 - i].id();
        let n = &mut self.nodes[i];
        match op % 6 {
            0 => {
                let _ = n.publish("home/kitchen/temp", r.short());
            }
            1 => {
                let _ = n.publish_reliable(now, "plant/line1/count", r.long(), None);
            }
            2 => {
                let _ = n.call(now, other, "echo", r.short(), Duration::from_millis(r.u16().into()));
            }
            3 => {
                let _ = n.set_allowlist(now, allowlist(Some(i)));
            }
            4 => {
                let _ = n.set_allowlist(now, allowlist(None));
            }
            _ => n.close(),
        }
        self.drain(i);
    }

    fn deliver(&mut self, to: usize, from: usize, bytes: &[u8]) {
        let before = self.nodes[to].stats().rx_datagrams;
        self.nodes[to].handle_datagram(self.now, addr(from), bytes);
        assert_eq!(self.nodes[to].stats().rx_datagrams, before + 1);
        self.drain(to);
    }

    /// Lets `dt` pass, firing both nodes' timers in time order.
    pub fn advance(&mut self, dt: Duration) {
        let target = self.now + dt;
        let (mut last, mut spins) = (None, 0);
        loop {
            let next = (0..2).filter_map(|i| self.nodes[i].poll_timeout().map(|t| (t, i))).min();
            let Some((t, i)) = next.filter(|(t, _)| *t <= target) else { break };
            let t = t.max(self.now);
            if last == Some((t, i)) {
                spins += 1;
                assert!(
                    spins < MAX_SPIN,
                    "livelock: node {i}'s handle_timeout({t:?}) leaves its timer there; pending calls {}, held {}, {:?}",
                    self.nodes[i].pending_calls(),
                    self.nodes[i].held_frames(),
                    self.nodes[i].stats()
                );
            } else {
                spins = 0;
            }
            last = Some((t, i));
            self.now = t;
            self.nodes[i].handle_timeout(t);
            self.drain(i);
        }
        self.now = target;
    }

    fn drain(&mut self, i: usize) {
        if let Some(s) = self.nodes[i].poll_lease() {
            self.nodes[i].handle_lease_stored(s.lease_end);
        }
        let max = self.nodes[i].config().max_datagram;
        let mut sent = 0;
        while let Some(t) = self.nodes[i].poll_transmit(self.now, &mut self.buf).expect("a big enough buffer") {
            sent += 1;
            assert!(sent <= MAX_BURST, "node {i}: poll_transmit never runs dry");
            assert!(t.len <= max, "node {i} sent {} bytes", t.len);
            let frame = self.buf[..t.len].to_vec();
            let h = Header::parse(&frame).unwrap_or_else(|e| panic!("node {i} sent an unparsable header: {e}"));
            assert_eq!(h.sender, self.nodes[i].id(), "node {i} sent under another id");
            if h.suite == SUITE_UNICAST || h.suite == SUITE_MULTICAST {
                if let Some(last) = self.last_pn[i] {
                    assert!(h.pn > last, "node {i}: packet number {} after {last}: nonce reuse", h.pn);
                }
                self.last_pn[i] = Some(h.pn);
            }
            let to = match t.destination {
                Destination::Multicast => 1 - i,
                Destination::Unicast(a) if a == addr(1 - i) => 1 - i,
                Destination::Unicast(_) => continue,
            };
            if self.flight.len() < MAX_FLIGHT {
                self.flight.push_back((to, i, frame));
            }
        }
        while self.nodes[i].poll_event().is_some() {}
    }
}
