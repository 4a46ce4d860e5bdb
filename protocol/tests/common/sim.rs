//! A deterministic network simulator for [`starling::Node`]s.
//!
//! Modelled on quinn-proto's test `Pair` and smoltcp's fault injector: there is no real clock and
//! no real socket. Time is virtual ([`Instant`], microseconds), every random choice (link
//! latency jitter, loss, duplication, node ids, node RNG seeds) comes from one seeded
//! [`SplitMix64`], and in-flight datagrams sit in a priority queue ordered by
//! `(deliver_at, seq)`, so a run is a pure function of the seed and the test's commands.
//!
//! # Model
//! - Every node has an address `127.0.0.<i+1>:7400` that survives reboots.
//! - [`Destination::Multicast`] reaches every node that is up when the datagram is sent,
//!   *including the sender* (loopback multicast), and that is still up when it arrives.
//!   [`Destination::Unicast`] reaches the node owning that address.
//! - The [`Link`] applies latency, uniform jitter (which reorders), loss and duplication to every
//!   copy independently; [`Sim::partition`] drops everything between two sets of nodes. The
//!   loopback copy of a multicast is never lost, duplicated or partitioned.
//! - The tap ([`Sim::tap`]) records every datagram a node sent, before the link touches it, so
//!   tests can replay or mutate real frames; [`Sim::inject`] delivers arbitrary bytes.
//! - Nodes are persistent (they keep the latest [`PersistedState`], from `Boot::resume` and from
//!   every `poll_lease`, and resume from it when rebooted) or ephemeral (`Boot::ephemeral`, a new
//!   id every start). [`Sim::crash`] loses the node without a word, [`Sim::reboot`] crashes and
//!   restarts it, [`Sim::close`] closes it gracefully (its Leave is sent) and stops it.
//! - After every input or command the node is flushed in the documented order: lease (stored,
//!   then confirmed), transmits, events (appended to the node's log with their time).
//! - A node may have an application RPC handler ([`Sim::serve`]): it serves the handler's methods
//!   at every start, and each [`Event::Request`] it emits is answered inside the flush (the
//!   event is still logged), as an application answering at once would.
//! - [`Sim::block`] drops one direction only (a node whose every datagram is lost).
#![allow(dead_code)]

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use starling::crypto::NetworkKeys;
use starling::identity::{Allowlist, Identity};
use starling::wire::{self, Header, NodeId, Record, RecordIter, HEADER_LEN, MAX_DATAGRAM};
use starling::{
    Boot, CallId, Config, Destination, Event, Instant, Message, NetworkKey, Node, PeerInfo, PersistedState, PublishId,
    Stats, SubscriptionId,
};

/// Most simulation steps (one datagram delivery or one timer expiry each) in one `run_*` call.
/// A node whose timer never moves forward would otherwise spin forever.
pub const MAX_STEPS: u64 = 2_000_000;

/// Most consecutive timer expiries of one node at the same instant before the sim calls it a
/// livelock (`handle_timeout` must move `poll_timeout` forward).
const MAX_SPIN: u32 = 10_000;

/// Most datagrams one flush may produce; more means `poll_transmit` never runs dry.
pub const MAX_BURST: u32 = 100_000;

/// The network key every node gets unless told otherwise.
pub const DEFAULT_KEY: [u8; 32] = [0x5a; 32];

/// Port every simulated node listens on.
pub const PORT: u16 = 7400;

/// SplitMix64 (Steele, Lea, Flood 2014): tiny, fast, and good enough for fault injection.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator whose whole output is determined by `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`; the modulo bias is irrelevant here).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && ((self.next_u64() >> 11) as f64) / ((1u64 << 53) as f64) < p
    }

    /// 32 random bytes, for a node's `rng_seed`.
    pub fn seed32(&mut self) -> [u8; 32] {
        let mut s = [0u8; 32];
        for chunk in s.chunks_mut(8) {
            chunk.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        s
    }

    /// Fills `buf` with random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let r = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&r[..chunk.len()]);
        }
    }
}

/// How the network treats every datagram copy (loopback excepted).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Link {
    /// Fixed one-way delay.
    pub latency: Duration,
    /// Extra delay, uniform in `0..=jitter`; more jitter than the gap between two datagrams reorders them.
    pub jitter: Duration,
    /// Probability that a copy is lost.
    pub loss: f64,
    /// Probability that a copy is delivered twice (the second copy gets its own jitter).
    pub duplicate: f64,
}

impl Default for Link {
    /// A perfect LAN: 1 ms, no jitter, no loss, no duplicates.
    fn default() -> Self {
        Link { latency: Duration::from_millis(1), jitter: Duration::ZERO, loss: 0.0, duplicate: 0.0 }
    }
}

/// One datagram a node sent, as recorded by the tap before the link touched it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    /// When it left the node.
    pub at: Instant,
    /// Index of the sending node.
    pub node: usize,
    /// How many times that node had been started when it sent this (1 for its first boot).
    pub boot: u32,
    /// The sender's address.
    pub src: SocketAddr,
    /// Where the node sent it.
    pub destination: Destination,
    /// The datagram.
    pub bytes: Vec<u8>,
    /// The nodes it was addressed to that were up when it left (the sender itself for the
    /// loopback copy of a multicast), before the link lost, duplicated or partitioned anything.
    pub targets: Vec<usize>,
}

/// An event together with the virtual time the node emitted it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    /// When `poll_event` returned it.
    pub at: Instant,
    /// The event.
    pub event: Event,
}

/// Counters of what the simulated network did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Datagrams that left a node (also the tap's length unless cleared).
    pub sent: u64,
    /// Copies handed to a node's `handle_datagram` (injected ones included).
    pub delivered: u64,
    /// Copies dropped by the link's loss.
    pub lost: u64,
    /// Extra copies created by the link's duplication.
    pub duplicated: u64,
    /// Copies dropped by a partition.
    pub partitioned: u64,
    /// Copies whose destination was down or unknown when they arrived.
    pub undeliverable: u64,
}

/// A record of an opened frame, owned (see [`Sim::open`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rec {
    /// A reliable-stream, fragment or subscription record (type code).
    Other(u8),
    /// A beacon.
    Beacon {
        /// Sender's epoch.
        epoch: u32,
        /// Sender's beacon interval.
        interval_ms: u32,
        /// Sender's name.
        name: String,
    },
    /// A publication.
    Publish {
        /// Topic.
        topic: String,
        /// Payload.
        payload: Vec<u8>,
    },
    /// The sender leaves.
    Leave,
    /// Any other record type.
    Unknown(u8),
    /// A record that did not parse (the rest of the body is ignored).
    Malformed,
}

/// A frame opened with a network key: its header and its records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    /// The cleartext header.
    pub header: Header,
    /// The records of the body, in order.
    pub records: Vec<Rec>,
}

impl Opened {
    /// True if the frame carries a beacon.
    pub fn has_beacon(&self) -> bool {
        self.records.iter().any(|r| matches!(r, Rec::Beacon { .. }))
    }
    /// Number of publish records.
    pub fn publishes(&self) -> usize {
        self.records.iter().filter(|r| matches!(r, Rec::Publish { .. })).count()
    }
}

/// Adjusts a node's configuration before each start.
pub type Configure = Box<dyn Fn(&mut Config)>;

/// A request as the application's RPC handler sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Req<'a> {
    /// When it was emitted.
    pub at: Instant,
    /// The serving node's start count (1 for its first boot).
    pub boot: u32,
    /// The caller.
    pub from: NodeId,
    /// The caller's call id.
    pub call_id: u64,
    /// Method name.
    pub method: &'a str,
    /// Argument bytes.
    pub payload: &'a [u8],
}

/// An application RPC handler: `Some(Ok(reply))`, `Some(Err(error bytes))`, or `None` to leave
/// the request unanswered (a handler that never finishes).
pub type Handler = Box<dyn FnMut(Req<'_>) -> Option<Result<Vec<u8>, Vec<u8>>>>;

/// The methods a node serves and the handler that answers them.
struct Responder {
    methods: Vec<String>,
    handler: Handler,
}

/// How one node is built: key, persistence, configuration.
pub struct NodeOpts {
    key: Option<NetworkKey>,
    persistent: bool,
    initial_state: Option<PersistedState>,
    configure: Option<Configure>,
    identity: Option<(Identity, Allowlist)>,
}

impl Default for NodeOpts {
    fn default() -> Self {
        NodeOpts { key: None, persistent: true, initial_state: None, configure: None, identity: None }
    }
}

impl NodeOpts {
    /// Persistent, the sim's network key, `Config::new` defaults.
    pub fn new() -> Self {
        Self::default()
    }
    /// Use this network key instead of the sim's.
    pub fn key(mut self, key: NetworkKey) -> Self {
        self.key = Some(key);
        self
    }
    /// No stable storage: `Boot::ephemeral`, a fresh id at every start.
    pub fn ephemeral(mut self) -> Self {
        self.persistent = false;
        self
    }
    /// Start from this stored state instead of none (to clone another node's state file).
    pub fn state(mut self, state: PersistedState) -> Self {
        self.initial_state = Some(state);
        self
    }
    /// Identity mode with this key pair and allowlist (the node id is the identity's).
    pub fn identity(mut self, identity: Identity, allowlist: Allowlist) -> Self {
        self.identity = Some((identity, allowlist));
        self
    }
    /// Adjusts the configuration (after the harness set `name` and a fresh `rng_seed`).
    pub fn config(mut self, f: impl Fn(&mut Config) + 'static) -> Self {
        self.configure = Some(Box::new(f));
        self
    }
}

/// One simulated device: an address, stable storage, an application event log, and the node
/// while it runs.
pub struct SimNode {
    /// Name given at creation, used as `Config::name`.
    pub name: String,
    /// Fixed address.
    pub addr: SocketAddr,
    /// Every event the node emitted, across boots, with its time.
    pub log: Vec<Logged>,
    /// Number of starts so far.
    pub boots: u32,
    /// The latest durably stored state (persistent nodes only).
    pub stored: Option<PersistedState>,
    persistent: bool,
    key: NetworkKey,
    configure: Option<Configure>,
    /// Identity mode: key pair and the allowlist this device holds (survives reboots).
    pub identity: Option<(Identity, Allowlist)>,
    node: Option<Node>,
    /// Stats of previous boots' nodes, kept when they crash or close.
    pub past_stats: Vec<Stats>,
    /// Every id it ran under (an ephemeral node draws a new one at each start).
    pub ids: Vec<NodeId>,
    responder: Option<Responder>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct InFlight {
    at: Instant,
    seq: u64,
    dst: usize,
    src: SocketAddr,
    bytes: Vec<u8>,
}

/// The simulated network and its nodes.
pub struct Sim {
    now: Instant,
    rng: SplitMix64,
    /// The link model; change it at any time, it applies to datagrams sent afterwards.
    pub link: Link,
    /// Delay of the loopback copy of a multicast (default zero: delivered at the next step).
    pub loopback_latency: Duration,
    nodes: Vec<SimNode>,
    queue: BinaryHeap<Reverse<InFlight>>,
    seq: u64,
    blocked: BTreeSet<(usize, usize)>,
    tap: Vec<Sent>,
    net: NetStats,
    /// Copies and bytes the link lost, per (sender, receiver).
    lost_pairs: std::collections::BTreeMap<(usize, usize), (u64, u64)>,
    /// Keep no copy of sent datagrams in the tap (long sweeps would hold gigabytes).
    pub tap_off: bool,
    key: NetworkKey,
    buf: Vec<u8>,
    /// Flush in one strict pass (lease, transmits, events) instead of looping until no new lease
    /// request appears. The strict pass is what the `Node` docs describe; the loop is what a
    /// driver needs so that a lease asked for inside `poll_transmit` does not wait for the next input.
    pub single_pass_flush: bool,
    /// Print every send, loss, delivery and event to stderr (also set by `SIM_TRACE=1`).
    pub trace: bool,
}

impl Sim {
    /// An empty network on a perfect link, at time zero, with every random choice drawn from `seed`.
    pub fn new(seed: u64) -> Self {
        Sim {
            now: Instant::ZERO,
            rng: SplitMix64::new(seed),
            link: Link::default(),
            loopback_latency: Duration::ZERO,
            nodes: Vec::new(),
            queue: BinaryHeap::new(),
            seq: 0,
            blocked: BTreeSet::new(),
            tap: Vec::new(),
            net: NetStats::default(),
            lost_pairs: Default::default(),
            tap_off: false,
            key: NetworkKey::from_bytes(DEFAULT_KEY),
            buf: vec![0u8; MAX_DATAGRAM],
            single_pass_flush: false,
            trace: std::env::var_os("SIM_TRACE").is_some_and(|v| v == "1"),
        }
    }

    /// The sim's network key (the one nodes get by default).
    pub fn network_key(&self) -> &NetworkKey {
        &self.key
    }

    /// Current virtual time.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// The sim's random generator, for tests that want reproducible random choices of their own.
    pub fn rng(&mut self) -> &mut SplitMix64 {
        &mut self.rng
    }

    // ----- nodes -----

    /// Adds a persistent node with default options; it is not started yet.
    pub fn add_node(&mut self, name: &str) -> usize {
        self.add_node_with(name, NodeOpts::new())
    }

    /// Adds a node; it is not started yet.
    pub fn add_node_with(&mut self, name: &str, opts: NodeOpts) -> usize {
        let i = self.nodes.len();
        assert!(i < 254, "at most 254 simulated nodes");
        self.nodes.push(SimNode {
            name: name.to_string(),
            addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, (i + 1) as u8)), PORT),
            log: Vec::new(),
            boots: 0,
            stored: opts.initial_state,
            persistent: opts.persistent,
            key: opts.key.unwrap_or_else(|| self.key.clone()),
            configure: opts.configure,
            identity: opts.identity,
            node: None,
            past_stats: Vec::new(),
            ids: Vec::new(),
            responder: None,
        });
        i
    }

    /// Adds and starts a persistent node with default options.
    pub fn spawn(&mut self, name: &str) -> usize {
        let i = self.add_node(name);
        self.start(i);
        i
    }

    /// Adds and starts `n` persistent nodes named `n0`, `n1`, ...
    pub fn spawn_many(&mut self, n: usize) -> Vec<usize> {
        (0..n).map(|k| self.spawn(&format!("n{k}"))).collect()
    }

    /// Starts (or restarts) node `i` now. A persistent node resumes from its stored state and
    /// stores the new one before the node is created, as `Boot::resume` requires.
    pub fn start(&mut self, i: usize) {
        assert!(self.nodes[i].node.is_none(), "node {i} is already running");
        let fresh_id = loop {
            let v = self.rng.next_u64();
            if v != 0 {
                break NodeId::from_u64(v);
            }
        };
        let seed = self.rng.seed32();
        let now = self.now;
        let sn = &mut self.nodes[i];
        let mut config = Config::new(sn.name.clone(), seed);
        if let Some(f) = &sn.configure {
            f(&mut config);
        }
        // Identity mode: the id is the key's; an ephemeral device picks a random epoch so that
        // peers still see each start as a restart.
        let fresh_id = sn.identity.as_ref().map_or(fresh_id, |(id, _)| id.node_id());
        let boot = if sn.persistent {
            let (boot, state) = Boot::resume(sn.stored, fresh_id, config.lease_block).expect("resume");
            sn.stored = Some(state);
            boot
        } else {
            let mut boot = Boot::ephemeral(fresh_id);
            if sn.identity.is_some() {
                boot.epoch = (seed[0] as u32) << 24 | (seed[1] as u32) << 16 | (seed[2] as u32) << 8 | 1;
            }
            boot
        };
        let mut node = match &sn.identity {
            Some((id, list)) => Node::new_identity(config, id.clone(), list.clone(), boot, now).expect("valid config"),
            None => Node::new(config, &sn.key, boot, now).expect("valid config"),
        };
        if let Some(r) = &sn.responder {
            for m in &r.methods {
                node.serve(m).expect("valid method name");
            }
        }
        sn.ids.push(node.id());
        sn.node = Some(node);
        sn.boots += 1;
        self.flush(i);
    }

    /// Identity mode: gives node `i` a new allowlist (as if its file was edited and reloaded),
    /// kept for its later boots too.
    pub fn set_allowlist(&mut self, i: usize, list: Allowlist) {
        let now = self.now;
        let sn = &mut self.nodes[i];
        if let Some((_, l)) = sn.identity.as_mut() {
            *l = list.clone();
        }
        if let Some(node) = sn.node.as_mut() {
            node.set_allowlist(now, list).expect("valid allowlist");
        }
        self.flush(i);
    }

    /// Loses node `i` at once: no Leave, no flush; in-flight datagrams to it are dropped.
    pub fn crash(&mut self, i: usize) {
        let node = self.nodes[i].node.take().unwrap_or_else(|| panic!("node {i} is not running"));
        self.nodes[i].past_stats.push(node.stats().clone());
    }

    /// Crashes node `i` and starts it again at the same instant.
    pub fn reboot(&mut self, i: usize) {
        self.crash(i);
        self.start(i);
    }

    /// Closes node `i` gracefully: `close()`, send what it queued (its Leave), then stop it.
    pub fn close(&mut self, i: usize) {
        self.node_mut(i).close();
        self.flush(i);
        assert!(self.node(i).is_idle(), "node {i} still holds datagrams after close (lease stall?)");
        self.crash(i);
    }

    /// Whether node `i` is running.
    pub fn is_up(&self, i: usize) -> bool {
        self.nodes[i].node.is_some()
    }

    /// Number of nodes (running or not).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// True when no node was added.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The running node `i`.
    pub fn node(&self, i: usize) -> &Node {
        self.nodes[i].node.as_ref().unwrap_or_else(|| panic!("node {i} is not running"))
    }

    /// The running node `i`, mutably. Call [`flush`](Self::flush) after commanding it directly
    /// (every `run_*` also flushes every node first).
    pub fn node_mut(&mut self, i: usize) -> &mut Node {
        self.nodes[i].node.as_mut().unwrap_or_else(|| panic!("node {i} is not running"))
    }

    /// Everything the sim keeps about node `i`.
    pub fn sim_node(&self, i: usize) -> &SimNode {
        &self.nodes[i]
    }

    /// Id of running node `i`.
    pub fn id(&self, i: usize) -> NodeId {
        self.node(i).id()
    }

    /// Address of node `i`.
    pub fn addr(&self, i: usize) -> SocketAddr {
        self.nodes[i].addr
    }

    /// Index of the node with this address.
    pub fn node_at(&self, addr: SocketAddr) -> Option<usize> {
        self.nodes.iter().position(|n| n.addr == addr)
    }

    /// Peers of running node `i`, sorted by id.
    pub fn peers(&self, i: usize) -> Vec<PeerInfo> {
        self.node(i).peers().collect()
    }

    /// Stats of running node `i`.
    pub fn stats(&self, i: usize) -> Stats {
        self.node(i).stats().clone()
    }

    /// The latest stored state of node `i`.
    pub fn stored_state(&self, i: usize) -> Option<PersistedState> {
        self.nodes[i].stored
    }

    // ----- commands (flushed at once) -----

    /// Subscribes node `i` to `filter`.
    pub fn subscribe(&mut self, i: usize, filter: &str) -> SubscriptionId {
        let id = self.node_mut(i).subscribe(filter).expect("subscribe");
        self.flush(i);
        id
    }

    /// Publishes from node `i`.
    pub fn publish(&mut self, i: usize, topic: &str, payload: &[u8]) {
        self.node_mut(i).publish(topic, payload).expect("publish");
        self.flush(i);
    }

    /// Publishes reliably from node `i`.
    pub fn publish_reliable(&mut self, i: usize, topic: &str, payload: &[u8], ttl: Option<Duration>) -> PublishId {
        let now = self.now;
        let id = self.node_mut(i).publish_reliable(now, topic, payload, ttl).expect("publish_reliable");
        self.flush(i);
        id
    }

    /// Calls `method` on `peer` from node `i`.
    pub fn call(&mut self, i: usize, peer: NodeId, method: &str, payload: &[u8], timeout: Duration) -> CallId {
        let now = self.now;
        let id = self.node_mut(i).call(now, peer, method, payload, timeout).expect("call");
        self.flush(i);
        id
    }

    /// Makes node `i`'s application serve `methods` with `handler`, now (if it runs) and at every
    /// later start; its requests are answered inside every flush. Replaces an earlier handler.
    pub fn serve(
        &mut self,
        i: usize,
        methods: &[&str],
        handler: impl FnMut(Req<'_>) -> Option<Result<Vec<u8>, Vec<u8>>> + 'static,
    ) {
        let methods: Vec<String> = methods.iter().map(|m| m.to_string()).collect();
        if let Some(node) = self.nodes[i].node.as_mut() {
            for m in &methods {
                node.serve(m).expect("valid method name");
            }
        }
        self.nodes[i].responder = Some(Responder { methods, handler: Box::new(handler) });
        if self.is_up(i) {
            self.flush(i);
        }
    }

    // ----- event log -----

    /// Every event node `i` emitted so far (across boots), with its time.
    pub fn events(&self, i: usize) -> &[Logged] {
        &self.nodes[i].log
    }

    /// Takes node `i`'s event log, leaving it empty.
    pub fn take_events(&mut self, i: usize) -> Vec<Logged> {
        std::mem::take(&mut self.nodes[i].log)
    }

    /// Messages node `i` received: (topic, payload, from).
    pub fn messages(&self, i: usize) -> Vec<(String, Vec<u8>, NodeId)> {
        self.full_messages(i).into_iter().map(|m| (m.topic, m.payload, m.from)).collect()
    }

    /// Every `CallDone` node `i` logged: (time, call, result).
    pub fn call_results(&self, i: usize) -> Vec<(Instant, CallId, Result<Vec<u8>, starling::CallError>)> {
        self.nodes[i]
            .log
            .iter()
            .filter_map(|l| match &l.event {
                Event::CallDone { id, result } => Some((l.at, *id, result.clone())),
                _ => None,
            })
            .collect()
    }

    /// Messages node `i` received, whole.
    pub fn full_messages(&self, i: usize) -> Vec<Message> {
        self.nodes[i]
            .log
            .iter()
            .filter_map(|l| match &l.event {
                Event::Message(m) => Some(m.clone()),
                _ => None,
            })
            .collect()
    }

    // ----- network -----

    /// Copies and bytes the link lost from node `from` to node `to` (loss only, not partitions).
    pub fn lost_between(&self, from: usize, to: usize) -> (u64, u64) {
        self.lost_pairs.get(&(from, to)).copied().unwrap_or_default()
    }

    /// Every datagram sent so far.
    pub fn tap(&self) -> &[Sent] {
        &self.tap
    }

    /// Forgets what the tap recorded.
    pub fn clear_tap(&mut self) {
        self.tap.clear();
    }

    /// What the network did so far.
    pub fn net_stats(&self) -> NetStats {
        self.net
    }

    /// Drops everything between any node of `a` and any node of `b`, both ways.
    pub fn partition(&mut self, a: &[usize], b: &[usize]) {
        for &x in a {
            for &y in b {
                if x != y {
                    self.blocked.insert((x, y));
                    self.blocked.insert((y, x));
                }
            }
        }
    }

    /// Drops everything sent by any node of `from` to any node of `to`, in that direction only.
    pub fn block(&mut self, from: &[usize], to: &[usize]) {
        for &x in from {
            for &y in to {
                if x != y {
                    self.blocked.insert((x, y));
                }
            }
        }
    }

    /// Cuts node `i` off from every other node (present and future indices up to 254).
    pub fn isolate(&mut self, i: usize) {
        let others: Vec<usize> = (0..254).filter(|&k| k != i).collect();
        self.partition(&[i], &others);
    }

    /// Removes every partition.
    pub fn heal(&mut self) {
        self.blocked.clear();
    }

    /// Delivers `bytes` to node `dst` as if sent from `src`, at time `at` (not before now).
    /// Injected datagrams bypass the link and are not recorded by the tap.
    pub fn inject(&mut self, dst: usize, src: SocketAddr, bytes: &[u8], at: Instant) {
        let at = at.max(self.now);
        self.push_flight(at, dst, src, bytes.to_vec());
    }

    /// Opens a frame with the sim's network key, as any member could (a unicast frame with the
    /// key of its pair, trying every node of the sim as its receiver).
    pub fn open(&self, bytes: &[u8]) -> Option<Opened> {
        let ids: Vec<NodeId> = self.nodes.iter().flat_map(|n| n.ids.iter().copied()).collect();
        open_frame_among(&self.key, bytes, &ids)
    }

    // ----- running -----

    /// Advances virtual time to `t`, handling every datagram and timer due until then.
    pub fn run_until(&mut self, t: Instant) {
        self.run_until_or(t, |_| false);
    }

    /// Advances virtual time by `d`.
    pub fn run_for(&mut self, d: Duration) {
        let t = self.now + d;
        self.run_until(t);
    }

    /// Runs until `stop(self)` holds after a step (returns that time) or until `deadline`
    /// (returns `None`, with time at the deadline).
    pub fn run_until_or(&mut self, deadline: Instant, mut stop: impl FnMut(&Sim) -> bool) -> Option<Instant> {
        for i in 0..self.nodes.len() {
            self.flush(i);
        }
        if stop(self) {
            return Some(self.now);
        }
        let mut steps = 0u64;
        let mut spin: (Option<(usize, Instant)>, u32) = (None, 0);
        loop {
            steps += 1;
            assert!(steps <= MAX_STEPS, "simulation did not reach {deadline:?} within {MAX_STEPS} steps");
            let next_dgram = self.queue.peek().map(|Reverse(f)| f.at);
            let next_timer = self
                .nodes
                .iter()
                .enumerate()
                .filter_map(|(i, n)| n.node.as_ref().and_then(|n| n.poll_timeout()).map(|t| (t.max(self.now), i)))
                .min();
            let take_dgram = match (next_dgram, next_timer) {
                (None, None) => break,
                (Some(d), Some((t, _))) => d <= t,
                (Some(_), None) => true,
                (None, Some(_)) => false,
            };
            let at = if take_dgram { next_dgram.expect("some") } else { next_timer.expect("some").0 };
            if at > deadline {
                break;
            }
            self.now = at;
            if take_dgram {
                let Reverse(f) = self.queue.pop().expect("peeked");
                self.deliver(f);
            } else {
                let i = next_timer.expect("some").1;
                if spin.0 == Some((i, at)) {
                    spin.1 += 1;
                    assert!(spin.1 < MAX_SPIN, "node {i} livelocks: its timer stays at {at:?} after handle_timeout");
                } else {
                    spin = (Some((i, at)), 0);
                }
                self.node_mut(i).handle_timeout(at);
                self.flush(i);
            }
            if stop(self) {
                return Some(self.now);
            }
        }
        self.now = self.now.max(deadline);
        None
    }

    /// Moves node `i`'s outputs where they belong: lease to storage (then confirmed),
    /// datagrams to the network, events to the log.
    pub fn flush(&mut self, i: usize) {
        for _round in 0..1000 {
            let Some(node) = self.nodes[i].node.as_mut() else { return };
            if let Some(state) = node.poll_lease() {
                self.store_lease(i, state);
            }
            for sent in 0.. {
                assert!(
                    sent < MAX_BURST,
                    "node {i} produced {MAX_BURST} datagrams in one flush: runaway poll_transmit"
                );
                let node = self.nodes[i].node.as_mut().expect("running");
                let Some(t) = node.poll_transmit(self.now, &mut self.buf).expect("buffer is MAX_DATAGRAM") else {
                    break;
                };
                assert!(t.len <= node.config().max_datagram, "datagram of {} bytes", t.len);
                let bytes = self.buf[..t.len].to_vec();
                self.send(i, t.destination, bytes);
            }
            let now = self.now;
            let sn = &mut self.nodes[i];
            let node = sn.node.as_mut().expect("running");
            let first_new = sn.log.len();
            while let Some(event) = node.poll_event() {
                if self.trace {
                    eprintln!("[{:>12}us] event {i} {event:?}", now.as_micros());
                }
                sn.log.push(Logged { at: now, event });
            }
            // The application answers the requests it just received; what that queues is sent
            // by the next round.
            let answered = self.answer_requests(i, first_new);
            if self.single_pass_flush && !answered {
                return;
            }
            // poll_transmit may have asked for a lease (early renewal, or a stall with datagrams
            // still queued): store it now and send again rather than wait for the next input.
            let node = self.nodes[i].node.as_mut().expect("running");
            match node.poll_lease() {
                None if !answered => return,
                None => {}
                Some(state) => self.store_lease(i, state),
            }
        }
        panic!("node {i} kept producing output for 1000 flush rounds");
    }

    /// Runs node `i`'s handler on the requests logged from `log[first..]`; true if any was answered.
    fn answer_requests(&mut self, i: usize, first: usize) -> bool {
        let now = self.now;
        let sn = &mut self.nodes[i];
        let Some(responder) = sn.responder.as_mut() else { return false };
        let node = sn.node.as_mut().expect("running");
        let mut answered = false;
        for l in &sn.log[first..] {
            let Event::Request { from, call_id, method, payload } = &l.event else { continue };
            let req = Req { at: l.at, boot: sn.boots, from: *from, call_id: *call_id, method, payload };
            let Some(result) = (responder.handler)(req) else { continue };
            let result = match &result {
                Ok(b) => Ok(&b[..]),
                Err(b) => Err(&b[..]),
            };
            node.respond(now, *from, *call_id, result);
            answered = true;
        }
        answered
    }

    fn store_lease(&mut self, i: usize, state: PersistedState) {
        let sn = &mut self.nodes[i];
        let node = sn.node.as_mut().expect("running");
        assert_eq!(state.node_id, node.id(), "lease for another id");
        assert!(sn.persistent, "an ephemeral node asked for a lease");
        if let Some(old) = sn.stored {
            assert!(state.lease_end >= old.lease_end, "lease moved backwards: {old:?} -> {state:?}");
        }
        sn.stored = Some(state);
        node.handle_lease_stored(state.lease_end);
    }

    fn send(&mut self, from: usize, destination: Destination, bytes: Vec<u8>) {
        let src = self.nodes[from].addr;
        self.net.sent += 1;
        let targets: Vec<usize> = match destination {
            Destination::Multicast => (0..self.nodes.len()).filter(|&k| self.nodes[k].node.is_some()).collect(),
            Destination::Unicast(addr) => match self.node_at(addr) {
                Some(k) => vec![k],
                None => {
                    self.net.undeliverable += 1;
                    vec![]
                }
            },
        };
        if self.trace {
            let h = Header::parse(&bytes).ok().map(|h| (h.sender, h.pn));
            eprintln!(
                "[{:>12}us] send {from} {destination:?} {h:?} {} bytes -> {targets:?}",
                self.now.as_micros(),
                bytes.len()
            );
        }
        if !self.tap_off {
            self.tap.push(Sent {
                at: self.now,
                node: from,
                boot: self.nodes[from].boots,
                src,
                destination,
                bytes: bytes.clone(),
                targets: targets.clone(),
            });
        }
        for dst in targets {
            if dst == from && destination == Destination::Multicast {
                let at = self.now + self.loopback_latency;
                self.push_flight(at, dst, src, bytes.clone());
                continue;
            }
            if self.blocked.contains(&(from, dst)) {
                self.net.partitioned += 1;
                self.trace_line(format_args!("partitioned {from} -> {dst}"));
                continue;
            }
            if self.rng.chance(self.link.loss) {
                self.net.lost += 1;
                let e = self.lost_pairs.entry((from, dst)).or_default();
                e.0 += 1;
                e.1 += bytes.len() as u64;
                self.trace_line(format_args!("lost {from} -> {dst}"));
                continue;
            }
            let copies = if self.rng.chance(self.link.duplicate) {
                self.net.duplicated += 1;
                2
            } else {
                1
            };
            for _ in 0..copies {
                let at = self.now + self.link.latency + self.jitter();
                self.push_flight(at, dst, src, bytes.clone());
            }
        }
    }

    fn trace_line(&self, what: std::fmt::Arguments<'_>) {
        if self.trace {
            eprintln!("[{:>12}us] {what}", self.now.as_micros());
        }
    }

    fn jitter(&mut self) -> Duration {
        let j = self.link.jitter.as_micros() as u64;
        if j == 0 {
            Duration::ZERO
        } else {
            Duration::from_micros(self.rng.below(j + 1))
        }
    }

    fn push_flight(&mut self, at: Instant, dst: usize, src: SocketAddr, bytes: Vec<u8>) {
        self.seq += 1;
        self.queue.push(Reverse(InFlight { at, seq: self.seq, dst, src, bytes }));
    }

    fn deliver(&mut self, f: InFlight) {
        let now = self.now;
        match self.nodes[f.dst].node.as_mut() {
            Some(node) => {
                self.net.delivered += 1;
                if self.trace {
                    let h = Header::parse(&f.bytes).ok().map(|h| (h.sender, h.pn));
                    eprintln!(
                        "[{:>12}us] deliver {} -> {} {h:?} {} bytes",
                        now.as_micros(),
                        f.src,
                        f.dst,
                        f.bytes.len()
                    );
                }
                node.handle_datagram(now, f.src, &f.bytes);
                self.flush(f.dst);
            }
            None => {
                self.net.undeliverable += 1;
                self.trace_line(format_args!("undeliverable to {} (down)", f.dst));
            }
        }
    }
}

/// Opens `bytes` as a member of the network of `key` would, without any replay check.
pub fn open_frame(key: &NetworkKey, bytes: &[u8]) -> Option<Opened> {
    open_frame_among(key, bytes, &[])
}

/// Opens a multicast frame, or a unicast frame addressed to one of `receivers`.
pub fn open_frame_among(key: &NetworkKey, bytes: &[u8], receivers: &[NodeId]) -> Option<Opened> {
    let keys = NetworkKeys::derive(key);
    let header = Header::parse(bytes).ok()?;
    if header.net_tag != keys.net_tag() {
        return None;
    }
    let mut buf = bytes.to_vec();
    match header.suite {
        wire::SUITE_PSK => keys.sender_key(header.sender).open(header.pn, &mut buf, HEADER_LEN).ok()?,
        wire::SUITE_PSK_UNICAST => receivers.iter().find_map(|&r| {
            let mut b = bytes.to_vec();
            keys.pair_key(header.sender, r).open(header.pn, &mut b, HEADER_LEN).ok()?;
            buf = b;
            Some(())
        })?,
        _ => return None,
    }
    let body = &buf[HEADER_LEN..buf.len() - wire::TAG_LEN];
    let records = RecordIter::new(body)
        .map(|r| match r {
            Ok(Record::Beacon(b)) => {
                Rec::Beacon { epoch: b.epoch, interval_ms: b.interval_ms, name: b.name.to_string() }
            }
            Ok(Record::Publish { topic, payload }) => {
                Rec::Publish { topic: topic.to_string(), payload: payload.to_vec() }
            }
            Ok(Record::Leave) => Rec::Leave,
            Ok(Record::Unknown { kind }) => Rec::Unknown(kind),
            Ok(other) => {
                let mut bytes = Vec::new();
                other.emit(&mut bytes);
                Rec::Other(bytes[0])
            }
            Err(_) => Rec::Malformed,
        })
        .collect();
    Some(Opened { header, records })
}

/// Seals `body` (raw record bytes) as a frame from `sender` with packet number `pn`, as a member
/// holding `key` could: for tests that forge authentic frames with arbitrary content.
pub fn seal_frame(key: &NetworkKey, sender: NodeId, pn: u64, body: &[u8]) -> Vec<u8> {
    let keys = NetworkKeys::derive(key);
    let mut buf = vec![0u8; HEADER_LEN + body.len() + wire::TAG_LEN];
    Header { suite: wire::SUITE_PSK, net_tag: keys.net_tag(), sender, pn }.emit(&mut buf);
    buf[HEADER_LEN..HEADER_LEN + body.len()].copy_from_slice(body);
    keys.sender_key(sender).seal(pn, &mut buf, HEADER_LEN);
    buf
}

/// Seals `body` as a unicast frame from `sender` to `receiver`, as a member holding `key` could.
pub fn seal_unicast_frame(key: &NetworkKey, sender: NodeId, receiver: NodeId, pn: u64, body: &[u8]) -> Vec<u8> {
    let keys = NetworkKeys::derive(key);
    let mut buf = vec![0u8; HEADER_LEN + body.len() + wire::TAG_LEN];
    Header { suite: wire::SUITE_PSK_UNICAST, net_tag: keys.net_tag(), sender, pn }.emit(&mut buf);
    buf[HEADER_LEN..HEADER_LEN + body.len()].copy_from_slice(body);
    keys.pair_key(sender, receiver).seal(pn, &mut buf, HEADER_LEN);
    buf
}

/// Checks the accounting invariant: every datagram handed to the node is counted exactly once,
/// as accepted, dropped (one reason), looped back, or an id conflict.
pub fn counters_add_up(s: &Stats) -> bool {
    s.rx_datagrams == s.rx_accepted + s.dropped() + s.rx_own + s.node_id_conflicts + s.rx_unsealed
}
