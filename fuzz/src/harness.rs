//! Drives a node under test through a program of [`Op`]s and checks, after every step, what must
//! hold whatever the input:
//!
//! - no panic, and `poll_transmit` runs dry and `handle_timeout` moves `poll_timeout` forward
//!   (no livelock);
//! - every datagram handed in is counted exactly once: accepted, dropped for one reason, looped
//!   back, an id conflict, or held for a freshness proof (PROTOCOL.md §2.6, §3.4);
//! - every datagram the node sends is at most `max_datagram` bytes, carries its own id, opens
//!   under its own key, parses as well-formed records, and has a packet number above all of its
//!   previous ones (a nonce is never reused, PROTOCOL.md §3.3);
//! - delivered messages carry valid topic names, and the peer table respects its bound.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use starling::wire::{Header, Record, RecordIter, MAX_PN};
use starling::{Config, Destination, Event, Instant, Node, NodeId, Stats, SubscriptionId, Topic};

use crate::ops::{AppOp, Op, PnChoice};
use crate::{PEER_A, PEER_B, VICTIM};

/// Most datagrams one drain may produce before the harness calls it a runaway.
const MAX_BURST: usize = 100_000;
/// Most timer expiries at one instant before the harness calls it a livelock.
const MAX_SPIN: u32 = 1_000;

/// How frames are sealed and opened in one security mode. The PSK mode is [`crate::psk::Psk`];
/// identity mode adds its own implementation (sessions set up inside `node` and `seal`).
pub trait Mode {
    /// Creates the node under test with id [`VICTIM`] at time zero.
    fn node(&self, config: Config) -> Node;
    /// Seals `body` (plaintext records) as the frame `sender` sends with packet number `pn`.
    fn seal(&self, sender: NodeId, pn: u64, body: &[u8]) -> Vec<u8>;
    /// Opens a frame the node under test sent: its header and plaintext body, or `None` if it
    /// does not authenticate.
    fn open_own(&self, frame: &[u8]) -> Option<(Header, Vec<u8>)>;
}

/// The configuration of the node under test. `flags` bit 0 turns on freshness challenges,
/// bit 1 selects the small embedded bounds (so the fuzzer reaches "table full" paths quickly).
pub fn victim_config(flags: u8) -> Config {
    let mut config = if flags & 2 != 0 { Config::embedded("victim", [9; 32]) } else { Config::new("victim", [9; 32]) };
    config.require_fresh = flags & 1 != 0;
    config
}

/// The address fixed peer `i` sends from.
pub fn peer_addr(i: usize) -> SocketAddr {
    SocketAddr::from(([192, 0, 2, 10 + i as u8], 4783))
}

/// A node under test and everything the harness remembers about it.
pub struct Driver<M: Mode> {
    mode: M,
    node: Node,
    now: Instant,
    peers: [NodeId; 2],
    next_pn: [u64; 2],
    /// The latest challenge nonce the node sent to each peer.
    challenges: [Option<u64>; 2],
    last_frame: Option<(usize, Vec<u8>)>,
    subs: Vec<SubscriptionId>,
    requests: VecDeque<(NodeId, u64)>,
    last_tx_pn: Option<u64>,
    buf: Vec<u8>,
}

impl<M: Mode> Driver<M> {
    /// A node configured by `flags` ([`victim_config`]), subscribed to `#` and serving `echo`.
    pub fn new(mode: M, flags: u8) -> Self {
        let config = victim_config(flags);
        let max = config.max_datagram;
        let mut node = mode.node(config);
        node.subscribe("#").expect("a valid filter");
        node.serve("echo").expect("a valid method");
        let mut d = Driver {
            mode,
            node,
            now: Instant::ZERO,
            peers: [NodeId::from_u64(PEER_A), NodeId::from_u64(PEER_B)],
            next_pn: [0; 2],
            challenges: [None; 2],
            last_frame: None,
            subs: Vec::new(),
            requests: VecDeque::new(),
            last_tx_pn: None,
            buf: vec![0; max],
        };
        d.drain();
        d
    }

    /// The node under test.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// Runs a whole program.
    pub fn run(&mut self, ops: &[Op]) {
        for op in ops {
            self.step(op);
        }
    }

    /// Runs one step and checks the invariants.
    pub fn step(&mut self, op: &Op) {
        match op {
            Op::Frame { peer, pn, dt_ms, body } => {
                let i = usize::from(*peer % 2);
                self.advance(Duration::from_millis((*dt_ms).into()));
                let next = self.next_pn[i];
                let pn = match pn {
                    PnChoice::Next => next,
                    PnChoice::Skip(n) => next + u64::from(*n),
                    PnChoice::Old(n) => next.saturating_sub(1 + u64::from(*n)),
                }
                .min(MAX_PN);
                self.next_pn[i] = self.next_pn[i].max(pn + 1);
                let frame = self.mode.seal(self.peers[i], pn, body);
                self.deliver(i, frame);
            }
            Op::Wait { ms } => self.advance(Duration::from_millis((*ms).into())),
            Op::App(app) => {
                self.app(app);
                self.drain();
            }
            Op::Raw(bytes) => self.deliver(0, bytes.clone()),
            Op::Echo { peer, floor, body } => {
                let i = usize::from(*peer % 2);
                let mut plain = Vec::new();
                let nonce = self.challenges[i].unwrap_or(0);
                Record::Echo { nonce, floor: *floor }.emit(&mut plain);
                plain.extend_from_slice(body);
                let pn = self.next_pn[i].min(MAX_PN);
                self.next_pn[i] = pn + 1;
                let frame = self.mode.seal(self.peers[i], pn, &plain);
                self.deliver(i, frame);
            }
            Op::Replay => {
                if let Some((i, frame)) = self.last_frame.clone() {
                    self.deliver(i, frame);
                }
            }
        }
        self.check_state();
    }

    /// Hands one datagram to the node, as if from peer `i`'s address.
    pub fn deliver(&mut self, i: usize, frame: Vec<u8>) {
        let before = self.node.stats().rx_datagrams;
        self.node.handle_datagram(self.now, peer_addr(i), &frame);
        assert_eq!(self.node.stats().rx_datagrams, before + 1, "every datagram is counted as received");
        self.last_frame = Some((i, frame));
        self.drain();
    }

    /// Lets `dt` pass, firing every timer that falls due on the way, in order.
    pub fn advance(&mut self, dt: Duration) {
        let target = self.now + dt;
        let mut last = None;
        let mut spins = 0;
        while let Some(t) = self.node.poll_timeout() {
            if t > target {
                break;
            }
            let t = t.max(self.now);
            if last == Some(t) {
                spins += 1;
                assert!(spins < MAX_SPIN, "livelock: handle_timeout({t:?}) leaves poll_timeout at {t:?}");
            } else {
                spins = 0;
            }
            last = Some(t);
            self.now = t;
            self.node.handle_timeout(t);
            self.drain();
        }
        self.now = target;
    }

    fn app(&mut self, app: &AppOp) {
        let now = self.now;
        match app {
            AppOp::Publish { topic, payload } => {
                let _ = self.node.publish(topic, payload);
            }
            AppOp::PublishReliable { topic, payload, ttl_ms } => {
                let ttl = (*ttl_ms > 0).then(|| Duration::from_millis((*ttl_ms).into()));
                let _ = self.node.publish_reliable(now, topic, payload, ttl);
            }
            AppOp::Subscribe(filter) => {
                if let Ok(id) = self.node.subscribe(filter) {
                    self.subs.push(id);
                }
            }
            AppOp::Unsubscribe(n) => {
                if !self.subs.is_empty() {
                    let id = self.subs.remove(usize::from(*n) % self.subs.len());
                    self.node.unsubscribe(id);
                }
            }
            AppOp::Call { peer, method, payload, timeout_ms } => {
                let peer = self.peers[usize::from(*peer % 2)];
                let timeout = Duration::from_millis((*timeout_ms).into());
                let _ = self.node.call(now, peer, method, payload, timeout);
            }
            AppOp::Respond { ok, payload } => {
                if let Some((to, call_id)) = self.requests.pop_front() {
                    let result = if *ok { Ok(&payload[..]) } else { Err(&payload[..]) };
                    self.node.respond(now, to, call_id, result);
                }
            }
            AppOp::Serve(method) => {
                let _ = self.node.serve(method);
            }
            AppOp::Close => self.node.close(),
        }
    }

    /// Polls every output in the documented order and checks each datagram and event.
    pub fn drain(&mut self) {
        if let Some(s) = self.node.poll_lease() {
            self.node.handle_lease_stored(s.lease_end);
        }
        let mut sent = 0;
        loop {
            let t = match self.node.poll_transmit(self.now, &mut self.buf) {
                Ok(Some(t)) => t,
                Ok(None) => break,
                Err(e) => panic!("a max_datagram buffer was refused: {e:?}"),
            };
            sent += 1;
            assert!(sent <= MAX_BURST, "poll_transmit never runs dry");
            let frame = self.buf[..t.len].to_vec();
            self.check_sent(&frame, t.destination);
        }
        while let Some(event) = self.node.poll_event() {
            match event {
                Event::Message(m) => {
                    assert!(Topic::new(&m.topic).is_ok(), "delivered on an invalid topic {:?}", m.topic);
                    assert!(!m.subscriptions.is_empty(), "a message delivered to no subscription");
                }
                Event::Request { from, call_id, .. } if self.requests.len() < 64 => {
                    self.requests.push_back((from, call_id));
                }
                _ => {}
            }
        }
    }

    fn check_sent(&mut self, frame: &[u8], destination: Destination) {
        let max = self.node.config().max_datagram;
        assert!(frame.len() <= max, "sent {} bytes, more than max_datagram {max}", frame.len());
        let (header, body) = self.mode.open_own(frame).expect("every frame the node sends opens under its key");
        assert_eq!(header.sender, NodeId::from_u64(VICTIM), "sent under another id");
        if let Some(last) = self.last_tx_pn {
            assert!(header.pn > last, "packet number {} reused or reordered after {last}: nonce reuse", header.pn);
        }
        self.last_tx_pn = Some(header.pn);
        for record in RecordIter::new(&body) {
            let record = record.unwrap_or_else(|e| panic!("sent a malformed record ({e}) in {body:02x?}"));
            match record {
                Record::Publish { topic, .. } => {
                    assert!(Topic::new(topic).is_ok(), "sent a publish on an invalid topic {topic:?}");
                }
                Record::Challenge(nonce) => {
                    if let Destination::Unicast(addr) = destination {
                        if let Some(i) = (0..2).find(|&i| peer_addr(i) == addr) {
                            self.challenges[i] = Some(nonce);
                        }
                    }
                }
                _ => {}
            }
        }
    }

    fn check_state(&self) {
        let s = self.node.stats();
        assert!(counters_add_up(s, self.node.held_frames()), "a datagram counted twice or never: {s:?}");
        assert!(self.node.peers().count() <= self.node.config().max_peers, "peer table over its bound");
    }
}

/// The accounting invariant: every datagram handed to the node is accepted, dropped for one
/// reason, its own looped back, an id conflict, or still held for a freshness proof.
pub fn counters_add_up(s: &Stats, held: usize) -> bool {
    s.rx_datagrams == s.rx_accepted + s.dropped() + s.rx_own + s.node_id_conflicts + held as u64
}
