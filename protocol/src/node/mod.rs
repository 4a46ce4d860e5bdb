//! The sans-IO node: discovery, pub/sub, RPC, PSK sealing, replay protection.
//!
//! This file holds the node's state, its inputs and outputs and discovery; `reliable` adds
//! reliable and fragmented publications on top of [`crate::stream`], `rpc` the calls.

mod fresh;
mod identity;
mod reliable;
mod rpc;

#[cfg(feature = "std")]
pub(crate) use reliable::NO_SUBSCRIBERS;
pub use reliable::{PublishFailure, PublishId};
pub use rpc::{CallError, CallId};

use alloc::collections::{BTreeMap, VecDeque};
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;
use core::net::SocketAddr;
use core::time::Duration;

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};

use crate::config::{Config, ConfigError};
use crate::crypto::{NetworkKey, NetworkKeys, SenderKey};
use crate::reassembly::{Reassembler, ReassemblyLimits};
use crate::replay::AgedWindow;
use crate::response_cache::{CacheLimits, ResponseCache};
use crate::rtt::RttEstimator;
use crate::state::{Boot, PersistedState};
use crate::stream::{InStream, OutStream};
use crate::time::Instant;
use crate::topic::{Topic, TopicError, TopicFilter};
use crate::wire::{
    self, Beacon, Header, KeyClass, NodeId, Record, RecordIter, WireError, FRAME_OVERHEAD, HEADER_LEN, MAX_PN,
    SUITE_PSK, SUITE_PSK_UNICAST,
};

/// Where a datagram from [`Node::poll_transmit`] goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// The network's multicast group.
    Multicast,
    /// One peer's unicast address.
    Unicast(SocketAddr),
}

/// A datagram ready in the caller's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit {
    /// Where to send it.
    pub destination: Destination,
    /// Its length: send `buf[..len]`.
    pub len: usize,
}

/// Identifies one local subscription, to route messages and to unsubscribe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SubscriptionId(pub u64);

/// A message delivered to local subscriptions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Topic name it was published on.
    pub topic: String,
    /// Payload bytes, exactly as published (possibly empty, any bytes).
    pub payload: Vec<u8>,
    /// The publishing node (this node's own id for local publications).
    pub from: NodeId,
    /// The local subscriptions whose filter matched.
    pub subscriptions: Vec<SubscriptionId>,
    /// Its sequence number in the publisher's reliable stream; `None` for best effort.
    pub seq: Option<u64>,
}

/// What is known about a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// Its id.
    pub id: NodeId,
    /// Its announced name (empty until its first beacon).
    pub name: String,
    /// The address its last frame came from.
    pub addr: SocketAddr,
    /// Its boot epoch (0 until its first beacon).
    pub epoch: u32,
    /// When its last authenticated frame arrived.
    pub last_heard: Instant,
}

/// Why a peer went down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DownReason {
    /// It announced that it was leaving.
    Left,
    /// Nothing was heard from it for `peer_timeout_factor` beacon intervals.
    Timeout,
    /// Identity mode: its key was removed from the allowlist.
    Revoked,
}

/// What the application must see, from [`Node::poll_event`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A message matched one or more local subscriptions.
    Message(Message),
    /// A peer announced itself for the first time, or came back after being down.
    PeerUp(PeerInfo),
    /// A peer that was up announced a new boot epoch: it restarted.
    PeerRestarted(PeerInfo),
    /// A peer left or timed out.
    PeerDown {
        /// Its id.
        id: NodeId,
        /// Why.
        reason: DownReason,
    },
    /// Another device sends with this node's id: its state was cloned. Nonce safety depends on
    /// unique ids, so the application should stop this node and start it with a new id.
    NodeIdConflict {
        /// Where the other device's frame came from.
        addr: SocketAddr,
    },
    /// Reliable messages from `from` were lost for good (evicted or expired before repair):
    /// sequence numbers `first..end` of its stream will never arrive.
    Gap {
        /// The publisher.
        from: NodeId,
        /// First lost sequence number.
        first: u64,
        /// One past the last lost one.
        end: u64,
    },
    /// A reliable publication finished: every matching subscriber known when it was published
    /// acknowledged it, or the listed ones did not.
    PublishDone {
        /// What [`Node::publish_reliable`] returned.
        id: PublishId,
        /// `Ok` when everyone acknowledged.
        result: Result<(), PublishFailure>,
    },
    /// A peer calls a method this node serves: answer with [`Node::respond`].
    Request {
        /// The caller.
        from: NodeId,
        /// The call, to pass back to `respond`.
        call_id: u64,
        /// Method name.
        method: String,
        /// Argument bytes.
        payload: Vec<u8>,
    },
    /// A call made with [`Node::call`] finished.
    CallDone {
        /// What `call` returned.
        id: CallId,
        /// The reply bytes or why there is none.
        result: Result<Vec<u8>, CallError>,
    },
}

/// Counters of everything received, sent and dropped. Never reset while the node lives.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Datagrams handed to `handle_datagram`.
    pub rx_datagrams: u64,
    /// Datagrams that authenticated and were processed.
    pub rx_accepted: u64,
    /// Dropped: shorter than header plus tag.
    pub drop_truncated: u64,
    /// Dropped: larger than 1200 bytes.
    pub drop_oversized: u64,
    /// Dropped: unknown version or security suite.
    pub drop_version: u64,
    /// Dropped before any crypto: another network's tag.
    pub drop_foreign_network: u64,
    /// Dropped: authentication failed (wrong key, forged or corrupted).
    pub drop_auth: u64,
    /// Dropped: packet number seen before or too old.
    pub drop_replay: u64,
    /// Dropped: authenticated but its content is malformed.
    pub drop_malformed: u64,
    /// Messages of an accepted frame (a stream message or reassembled fragment) that did not parse:
    /// dropped and counted here, apart from whole frames, so each datagram is counted once.
    pub malformed_messages: u64,
    /// Dropped: a new sender while the peer table is full of live peers.
    pub drop_peer_table_full: u64,
    /// Dropped: frames of a sender that has not proved freshness, beyond what may wait, or that
    /// never did, or older than its proof allows.
    pub drop_unverified: u64,
    /// Frames that waited for their sender's freshness proof and were then accepted.
    pub rx_after_challenge: u64,
    /// Own multicast frames looped back by the network (not an error).
    pub rx_own: u64,
    /// Frames carrying this node's id that it did not send.
    pub node_id_conflicts: u64,
    /// Records of unknown type, skipped.
    pub unknown_records: u64,
    /// Datagrams produced by `poll_transmit`.
    pub tx_datagrams: u64,
    /// Bytes produced by `poll_transmit`.
    pub tx_bytes: u64,
    /// Messages delivered to at least one local subscription.
    pub messages_delivered: u64,
    /// Messages received that matched no local subscription.
    pub messages_unmatched: u64,
    /// Events dropped because the event queue was full.
    pub events_dropped: u64,
    /// Times sending waited for a packet-number lease to be stored.
    pub lease_stalls: u64,
    /// Reliable chunks sent again on request or after silence, and parity repair symbols sent.
    pub retransmissions: u64,
    /// Of those, parity repair symbols (PROTOCOL.md §6.8).
    pub repair_symbols: u64,
    /// Bytes of the records counted in `retransmissions`: what repair cost on the wire.
    pub repair_bytes: u64,
    /// Reliable chunks rebuilt from parity repair symbols instead of being resent.
    pub rebuilt_chunks: u64,
    /// Reliable messages that arrived after their time to live.
    pub expired: u64,
    /// Stream records refused: acks for sequence numbers never sent, streams of an old epoch,
    /// responses to calls never made, inconsistent fragments.
    pub drop_stream: u64,
    /// Reliable sequence numbers given up as lost.
    pub gaps: u64,
    /// Incomplete best-effort messages dropped (a fragment never came, or room ran out).
    pub fragments_lost: u64,
    /// Identity mode: announcements, handshakes and cookies received (not sealed frames).
    pub rx_unsealed: u64,
    /// Identity mode: of those, from keys that are not on the allowlist.
    pub unknown_keys: u64,
    /// Identity mode: dropped, a unicast frame for no session this node holds.
    pub drop_no_session: u64,
    /// Identity mode: dropped, a multicast frame under a key this node was not given.
    pub drop_no_key: u64,
    /// Identity mode: dropped, a multicast frame sealed before this node was given its key (below
    /// the key's packet-number floor).
    pub drop_before_key: u64,
    /// Identity mode: messages and calls refused by the allowlist's permissions.
    pub denied: u64,
    /// Identity mode: handshake messages 1 sent (first tries and retries).
    pub handshakes_sent: u64,
    /// Identity mode: sessions established or confirmed.
    pub handshakes_completed: u64,
    /// Identity mode: unsealed frames refused: malformed, bad mac1, failed Noise, replayed, unexpected.
    pub handshakes_failed: u64,
    /// Identity mode: handshakes refused by the per-address rate limit under load.
    pub handshakes_rate_limited: u64,
    /// Identity mode: cookie replies sent under load.
    pub cookies_sent: u64,
    /// Identity mode: peers cut off by an allowlist change.
    pub revoked: u64,
    /// Identity mode: times this node replaced its multicast key.
    pub group_key_rotations: u64,
    /// Identity mode: unicast records dropped for want of a session (streams resend them).
    pub tx_no_session: u64,
}

impl Stats {
    /// Every counter with its name, for printing.
    pub fn fields(&self) -> [(&'static str, u64); 44] {
        [
            ("rx_datagrams", self.rx_datagrams),
            ("rx_accepted", self.rx_accepted),
            ("drop_truncated", self.drop_truncated),
            ("drop_oversized", self.drop_oversized),
            ("drop_version", self.drop_version),
            ("drop_foreign_network", self.drop_foreign_network),
            ("drop_auth", self.drop_auth),
            ("drop_replay", self.drop_replay),
            ("drop_malformed", self.drop_malformed),
            ("malformed_messages", self.malformed_messages),
            ("drop_peer_table_full", self.drop_peer_table_full),
            ("drop_unverified", self.drop_unverified),
            ("rx_after_challenge", self.rx_after_challenge),
            ("rx_own", self.rx_own),
            ("node_id_conflicts", self.node_id_conflicts),
            ("unknown_records", self.unknown_records),
            ("tx_datagrams", self.tx_datagrams),
            ("tx_bytes", self.tx_bytes),
            ("messages_delivered", self.messages_delivered),
            ("messages_unmatched", self.messages_unmatched),
            ("events_dropped", self.events_dropped),
            ("lease_stalls", self.lease_stalls),
            ("retransmissions", self.retransmissions),
            ("repair_symbols", self.repair_symbols),
            ("repair_bytes", self.repair_bytes),
            ("rebuilt_chunks", self.rebuilt_chunks),
            ("expired", self.expired),
            ("drop_stream", self.drop_stream),
            ("gaps", self.gaps),
            ("fragments_lost", self.fragments_lost),
            ("rx_unsealed", self.rx_unsealed),
            ("unknown_keys", self.unknown_keys),
            ("drop_no_session", self.drop_no_session),
            ("drop_no_key", self.drop_no_key),
            ("drop_before_key", self.drop_before_key),
            ("denied", self.denied),
            ("handshakes_sent", self.handshakes_sent),
            ("handshakes_completed", self.handshakes_completed),
            ("handshakes_failed", self.handshakes_failed),
            ("handshakes_rate_limited", self.handshakes_rate_limited),
            ("cookies_sent", self.cookies_sent),
            ("revoked", self.revoked),
            ("group_key_rotations", self.group_key_rotations),
            ("tx_no_session", self.tx_no_session),
        ]
    }

    /// Total frames dropped for any reason.
    pub fn dropped(&self) -> u64 {
        self.drop_truncated
            + self.drop_oversized
            + self.drop_version
            + self.drop_foreign_network
            + self.drop_auth
            + self.drop_replay
            + self.drop_malformed
            + self.drop_peer_table_full
            + self.drop_unverified
            + self.drop_no_session
            + self.drop_no_key
            + self.drop_before_key
    }
}

/// Why a publication was refused. Nothing was queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PublishError {
    /// The topic name is invalid.
    InvalidTopic(TopicError),
    /// The message exceeds `max_message` (or, for reliable ones, the retention bound).
    TooLarge {
        /// Payload size given.
        size: usize,
        /// Largest payload that fits with this topic.
        max: usize,
    },
    /// The send queue is full; poll_transmit must drain it first.
    QueueFull,
    /// The node is closing.
    Closed,
    /// Identity mode: this node's own allowlist entry does not let it publish on the topic, so
    /// every member would drop the message (PROTOCOL.md §11.5). Nothing was sent or delivered.
    NotPermitted,
}

impl fmt::Display for PublishError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PublishError::InvalidTopic(e) => write!(f, "invalid topic: {e}"),
            PublishError::TooLarge { size, max } => {
                write!(f, "payload of {size} bytes is too large; the limit for this topic is {max} bytes (max_message)")
            }
            PublishError::QueueFull => f.write_str("send queue is full; retry after the node has sent what it holds"),
            PublishError::Closed => f.write_str("node is closed"),
            PublishError::NotPermitted => f.write_str(
                "this node's allowlist entry does not permit publishing on this topic: every member would drop it",
            ),
        }
    }
}

impl core::error::Error for PublishError {}

/// Why a subscription was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SubscribeError {
    /// The filter is invalid.
    InvalidFilter(TopicError),
    /// `max_subscriptions` are already active.
    TooMany {
        /// The configured limit.
        max: usize,
    },
    /// The node is closing.
    Closed,
}

impl fmt::Display for SubscribeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SubscribeError::InvalidFilter(e) => write!(f, "invalid topic filter: {e}"),
            SubscribeError::TooMany { max } => write!(f, "already {max} subscriptions (max_subscriptions)"),
            SubscribeError::Closed => f.write_str("node is closed"),
        }
    }
}

impl core::error::Error for SubscribeError {}

/// The caller's buffer for [`Node::poll_transmit`] is too small.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferTooSmall {
    /// Bytes the buffer must hold (the configured `max_datagram`).
    pub needed: usize,
}

impl fmt::Display for BufferTooSmall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "transmit buffer too small: {} bytes needed", self.needed)
    }
}

impl core::error::Error for BufferTooSmall {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PeerStatus {
    /// Frames authenticated but no beacon yet: no PeerUp emitted.
    Unannounced,
    Up,
    /// Left or timed out; kept so its old frames remain replays.
    Down,
}

struct Peer {
    name: String,
    addr: SocketAddr,
    epoch: u32,
    interval: Duration,
    last_heard: Instant,
    replay: AgedWindow,
    /// Its PSK-mode sender key (identity mode keeps keys per session instead).
    key: Option<SenderKey>,
    status: PeerStatus,
    /// Packet number of its Leave: older frames still in flight must not bring it back.
    left_pn: Option<u64>,
    /// Its subscription filters, as it last announced them.
    filters: Vec<TopicFilter>,
    /// Its multicast stream of reliable publications, as received here.
    in_mcast: Option<InStream>,
    /// Its unicast stream to this node (RPC).
    in_ucast: Option<InStream>,
    /// This node's unicast stream to it (RPC).
    out_ucast: Option<OutStream>,
    /// Round-trip estimate towards it.
    rtt: RttEstimator,
    /// Frames with a lower packet number may be replays from before it proved freshness.
    floor: u64,
    /// Set while it has not yet answered our freshness challenge; its frames wait here.
    verify: Option<fresh::Verify>,
    /// What its beacons say it rebuilds from repair symbols (PROTOCOL.md §6.8, §6.9).
    parity: crate::stream::ParityUse,
}

impl Peer {
    fn info(&self, id: NodeId) -> PeerInfo {
        PeerInfo { id, name: self.name.clone(), addr: self.addr, epoch: self.epoch, last_heard: self.last_heard }
    }
}

/// Timers of the node; `poll_timeout` is the earliest armed one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timer {
    Beacon = 0,
    Liveness = 1,
    /// Streams, calls, reassembly and cache expiry: the earliest of them.
    Messaging = 2,
    /// Identity mode: handshakes, rekeying, key rotation.
    Identity = 3,
}

const TIMER_COUNT: usize = 4;

#[derive(Debug, Default)]
struct Timers([Option<Instant>; TIMER_COUNT]);

impl Timers {
    fn set(&mut self, t: Timer, at: Option<Instant>) {
        self.0[t as usize] = at;
    }
    fn get(&self, t: Timer) -> Option<Instant> {
        self.0[t as usize]
    }
    fn earliest(&self) -> Option<Instant> {
        self.0.iter().flatten().min().copied()
    }
}

/// Where a queued record goes: the group, or one peer. A peer's address and pairwise key are
/// looked up when the frame is sealed, never taken from a frame that could be forged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum To {
    Group,
    Peer(NodeId),
}

struct Queued {
    to: To,
    record: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lifecycle {
    Running,
    Closing,
}

/// How a frame is sealed: where it goes, its suite and tag, and its key.
pub(crate) struct Sealer {
    destination: Destination,
    suite: u8,
    tag: u8,
    key: SenderKey,
}

/// Validates every record of an opened body, so a frame is taken whole or not at all: each must
/// parse, and each must be allowed under the class of key the frame opened under (the table of
/// PROTOCOL.md §2.7, [`Record::allowed_in`]).
fn records_valid(body: &[u8], class: KeyClass) -> bool {
    RecordIter::new(body).all(|r| r.as_ref().is_ok_and(|r| record_is_valid(r) && r.allowed_in(class)))
}

/// Checks what the record parser leaves to the node: a Publish topic must be a valid name.
fn record_is_valid(r: &Record<'_>) -> bool {
    match r {
        Record::Publish { topic, .. } => Topic::new(topic).is_ok(),
        _ => true,
    }
}

/// Delay before an early beacon that answers a new peer, so that a newcomer learns everyone fast.
/// Lowest retransmission timeout: a host timer's granularity and then some. Round trips on a
/// LAN are far below RFC 6298's 1 s floor. A multicast receiver batches its acks for up to
/// `ack_delay`, longer than this: a heartbeat that comes first only makes it ack at once.
const MIN_RTO: Duration = Duration::from_millis(2);

/// How long a node that just started asks the mesh to beacon (PROTOCOL.md §4): at 30% loss
/// each way an ask and its answer both get through about half the time, so it asks often.
const SOLICIT_PERIOD: Duration = Duration::from_millis(1000);
/// Time between soliciting beacons.
const SOLICIT_INTERVAL: Duration = Duration::from_millis(150);

const EARLY_BEACON_MAX_DELAY: Duration = Duration::from_millis(100);
/// Least time between two early beacons of one node: bounds the answer rate to four per second.
const EARLY_BEACON_MIN_GAP: Duration = Duration::from_millis(250);

/// A Starling node as a deterministic state machine: no sockets, clocks or OS randomness.
///
/// # Driving it
/// - **Inputs** (`handle_*`): hand every received datagram to [`handle_datagram`](Self::handle_datagram)
///   and call [`handle_timeout`](Self::handle_timeout) when the deadline from
///   [`poll_timeout`](Self::poll_timeout) passes.
/// - **Commands**: [`publish`](Self::publish), [`subscribe`](Self::subscribe),
///   [`unsubscribe`](Self::unsubscribe), [`close`](Self::close).
/// - **Outputs** (`poll_*`), after every input or command, in this order:
///   1. [`poll_lease`](Self::poll_lease): store the returned state durably, then call
///      [`handle_lease_stored`](Self::handle_lease_stored);
///   2. [`poll_transmit`](Self::poll_transmit) until it returns `None`, sending each datagram;
///   3. [`poll_event`](Self::poll_event) until `None`, handing events to the application;
///   4. [`poll_timeout`](Self::poll_timeout) for the next wake-up.
/// - **Getters**: [`id`](Self::id), [`peers`](Self::peers), [`stats`](Self::stats), ...
pub struct Node {
    config: Config,
    /// The security mode and its state: PSK keys or identity mode's sessions, never both.
    security: Security,
    boot: Boot,
    next_pn: u64,
    lease_end: u64,
    lease_request: Option<PersistedState>,
    lease_requested_end: Option<u64>,
    /// Boxed: a `Peer` is about 850 bytes and B-tree nodes hold 11 slots, so unboxed a mesh of
    /// 16 peers would reserve room for 33 (28 KiB instead of 14 KiB on a microcontroller).
    peers: BTreeMap<NodeId, alloc::boxed::Box<Peer>>,
    subs: Vec<(SubscriptionId, TopicFilter)>,
    next_sub: u64,
    queue: VecDeque<Queued>,
    queued_bytes: usize,
    events: VecDeque<Event>,
    timers: Timers,
    last_early_beacon: Option<Instant>,
    /// When this node last asked a peer for its beacon by unicast (PROTOCOL.md §4).
    last_solicit: Option<Instant>,
    /// When the node was created, and whether its beacons still carry a Solicit.
    started: Instant,
    soliciting: bool,
    scratch: Vec<u8>,
    rng: ChaCha20Rng,
    stats: Stats,
    lifecycle: Lifecycle,
    out_mcast: OutStream,
    next_publish: u32,
    next_fragmented: u32,
    reassembly: Reassembler<NodeId>,
    calls: BTreeMap<CallId, rpc::PendingCall>,
    next_call: u32,
    served: Vec<String>,
    cache: ResponseCache<NodeId>,
    freshness: fresh::Freshness,
}

/// How a node seals and opens frames: one of the two modes (PROTOCOL.md §3, §11), each owning
/// only its own state, so no code path can use one mode's keys in the other.
enum Security {
    /// PSK mode: the keys derived from the network key, and this node's own sender key.
    Psk { keys: NetworkKeys, own_key: SenderKey },
    /// Identity mode: sessions, multicast keys, allowlist. Boxed: large, and one per node.
    Identity(alloc::boxed::Box<identity::IdentityState>),
}

impl Security {
    fn is_identity(&self) -> bool {
        matches!(self, Security::Identity(_))
    }
    fn identity(&self) -> Option<&identity::IdentityState> {
        match self {
            Security::Identity(s) => Some(s),
            Security::Psk { .. } => None,
        }
    }
    fn identity_mut(&mut self) -> Option<&mut identity::IdentityState> {
        match self {
            Security::Identity(s) => Some(s),
            Security::Psk { .. } => None,
        }
    }
}

impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.boot.node_id)
            .field("epoch", &self.boot.epoch)
            .field("peers", &self.peers.len())
            .finish_non_exhaustive()
    }
}

impl Node {
    /// Creates a node; its first beacon is queued at once.
    ///
    /// `boot` comes from [`Boot::resume`] (after its state was stored durably) or
    /// [`Boot::ephemeral`].
    pub fn new(config: Config, key: &NetworkKey, boot: Boot, now: Instant) -> Result<Node, ConfigError> {
        let keys = NetworkKeys::derive(key);
        let own_key = keys.sender_key(boot.node_id);
        Node::build(config, boot, now, move |_, _| Security::Psk { keys, own_key })
    }

    /// A node of the mode `security` makes (from the configuration and the node's seeded RNG).
    fn build(
        config: Config,
        boot: Boot,
        now: Instant,
        security: impl FnOnce(&Config, &mut ChaCha20Rng) -> Security,
    ) -> Result<Node, ConfigError> {
        config.validate()?;
        let mut rng = ChaCha20Rng::from_seed(config.rng_seed);
        let security = security(&config, &mut rng);
        let scratch = Vec::with_capacity(config.max_datagram);
        let reassembly = Reassembler::new(ReassemblyLimits {
            max_message: config.max_message + 512,
            max_partial: 16,
            max_bytes: config.streams.max_pending_bytes,
            timeout: config.reassembly_timeout,
        });
        let cache = ResponseCache::new(CacheLimits {
            max_entries: config.response_cache_entries,
            max_bytes: config.streams.max_retained_bytes,
            lifetime: config.response_cache_lifetime,
        });
        let mut node = Node {
            security,
            boot,
            next_pn: boot.first_pn,
            lease_end: boot.lease_end.min(MAX_PN + 1),
            lease_request: None,
            lease_requested_end: None,
            peers: BTreeMap::new(),
            subs: Vec::new(),
            next_sub: 1,
            queue: VecDeque::new(),
            queued_bytes: 0,
            events: VecDeque::new(),
            last_early_beacon: None,
            last_solicit: None,
            started: now,
            soliciting: true,
            scratch,
            rng,
            stats: Stats::default(),
            lifecycle: Lifecycle::Running,
            timers: Timers::default(),
            out_mcast: OutStream::new(wire::stream::MULTICAST, boot.epoch),
            next_publish: 1,
            next_fragmented: 0,
            reassembly,
            calls: BTreeMap::new(),
            next_call: 0,
            served: Vec::new(),
            cache,
            freshness: fresh::Freshness::new(now, boot.first_pn),
            config,
        };
        // Announce at once, ahead of anything the application sends, so receivers learn the
        // name and epoch before the first message.
        node.send_beacon();
        let next = now + node.next_beacon_delay();
        node.timers.set(Timer::Beacon, Some(next));
        Ok(node)
    }

    // ----- getters -----

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.boot.node_id
    }

    /// This boot's epoch.
    pub fn epoch(&self) -> u32 {
        self.boot.epoch
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Counters of traffic and drops.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Peers currently up (announced and not timed out).
    pub fn peers(&self) -> impl Iterator<Item = PeerInfo> + '_ {
        self.peers.iter().filter(|(_, p)| p.status == PeerStatus::Up).map(|(id, p)| p.info(*id))
    }

    /// One peer, if it is up.
    pub fn peer(&self, id: NodeId) -> Option<PeerInfo> {
        self.peers.get(&id).filter(|p| p.status == PeerStatus::Up).map(|p| p.info(id))
    }

    /// The announced name of a peer still in the table, up or down (a message may be handled
    /// after its sender already left).
    pub fn peer_name(&self, id: NodeId) -> Option<&str> {
        self.peers.get(&id).map(|p| p.name.as_str()).filter(|n| !n.is_empty())
    }

    /// The subscription filters a peer that is up last announced (empty before its first
    /// Subscriptions record), so a monitor can show topics before anything is published on them.
    pub fn peer_filters(&self, id: NodeId) -> Option<&[TopicFilter]> {
        self.peers.get(&id).filter(|p| p.status == PeerStatus::Up).map(|p| p.filters.as_slice())
    }

    /// The smoothed round-trip time towards a peer, once a unicast exchange (call, response,
    /// ack) has measured it.
    pub fn peer_rtt(&self, id: NodeId) -> Option<Duration> {
        self.peers.get(&id).and_then(|p| p.rtt.srtt())
    }

    /// The methods this node serves, in the order they were first served.
    pub fn served_methods(&self) -> impl Iterator<Item = &str> + '_ {
        self.served.iter().map(String::as_str)
    }

    /// Largest payload that [`publish`](Self::publish) sends as one Publish record in one
    /// datagram on a topic of `topic_len` bytes; larger ones (up to `max_message`) go as fragments.
    pub fn max_payload(&self, topic_len: usize) -> usize {
        let room = self.config.max_datagram - FRAME_OVERHEAD;
        // record: type byte, body length varint, topic length varint, topic, payload
        let fixed = 1 + wire::varint_len(topic_len) + topic_len;
        let mut max = room.saturating_sub(fixed + 1);
        while max > 0 && fixed + wire::varint_len(fixed - 1 + max) + max > room {
            max -= 1;
        }
        max
    }

    /// True when nothing waits to be sent and every reliable message and response was
    /// acknowledged: a closing driver lingers until this holds (or its patience ends).
    pub fn is_idle(&self) -> bool {
        self.queue.is_empty()
            && self.out_mcast.retained_messages() == 0
            && self.peers.values().all(|p| p.out_ucast.as_ref().is_none_or(|s| s.retained_messages() == 0))
    }

    // ----- commands -----

    /// Publishes `payload` on `topic`, best effort: sent once to the group, no retransmission
    /// (a message larger than one datagram goes as fragments and is lost if any fragment is).
    /// Local subscriptions that match receive it too.
    pub fn publish(&mut self, topic: &str, payload: &[u8]) -> Result<(), PublishError> {
        if self.lifecycle != Lifecycle::Running {
            return Err(PublishError::Closed);
        }
        let topic = Topic::new(topic).map_err(PublishError::InvalidTopic)?;
        if !self.may_publish_own(&topic) {
            return Err(PublishError::NotPermitted);
        }
        if payload.len() > self.config.max_message {
            return Err(PublishError::TooLarge { size: payload.len(), max: self.config.max_message });
        }
        let record = Record::Publish { topic: topic.as_str(), payload };
        if record.encoded_len() > self.config.max_datagram - FRAME_OVERHEAD {
            self.publish_fragmented(topic, payload)?;
            let id = self.id();
            self.deliver(id, topic, payload, None);
            return Ok(());
        }
        if self.queued_bytes + record.encoded_len() > self.config.max_queued_bytes {
            return Err(PublishError::QueueFull);
        }
        self.enqueue(To::Group, &record);
        let id = self.id();
        self.deliver(id, topic, payload, None);
        Ok(())
    }

    /// Subscribes to `filter` (MQTT syntax, `+` and `#` wildcards).
    pub fn subscribe(&mut self, filter: &str) -> Result<SubscriptionId, SubscribeError> {
        if self.lifecycle != Lifecycle::Running {
            return Err(SubscribeError::Closed);
        }
        let filter = TopicFilter::new(filter).map_err(SubscribeError::InvalidFilter)?;
        if self.subs.len() >= self.config.max_subscriptions {
            return Err(SubscribeError::TooMany { max: self.config.max_subscriptions });
        }
        let id = SubscriptionId(self.next_sub);
        self.next_sub += 1;
        self.subs.push((id, filter));
        self.announce_subscriptions();
        Ok(id)
    }

    /// Ends a subscription. Returns false if it did not exist.
    pub fn unsubscribe(&mut self, id: SubscriptionId) -> bool {
        let before = self.subs.len();
        self.subs.retain(|(s, _)| *s != id);
        let removed = self.subs.len() != before;
        if removed && self.lifecycle == Lifecycle::Running {
            self.announce_subscriptions();
        }
        removed
    }

    /// Announces departure so peers see `PeerDown` at once. Send what `poll_transmit` returns,
    /// then drop the node. Later commands fail with `Closed`.
    pub fn close(&mut self) {
        if self.lifecycle == Lifecycle::Running {
            self.lifecycle = Lifecycle::Closing;
            // Acknowledge what arrived, so publishers waiting for this node are not left hanging.
            // The acks travel to the group in the same datagram as the Leave, ahead of it: a
            // publisher must not see the departure before the acknowledgement.
            // A unicast stream's acks go to its sender alone (PROTOCOL.md §2.7); so do all of
            // them in identity mode, where only a pairwise session vouches for an ack.
            let group = if self.security.is_identity() { None } else { Some(To::Group) };
            let mut acks = Vec::new();
            for (id, p) in self.peers.iter_mut() {
                let mcast_to = group.unwrap_or(To::Peer(*id));
                for (s, to) in [(p.in_mcast.as_mut(), mcast_to), (p.in_ucast.as_mut(), To::Peer(*id))] {
                    if let Some(s) = s {
                        let mut bytes = Vec::new();
                        Record::Ack(s.final_ack()).emit(&mut bytes);
                        acks.push((to, bytes));
                    }
                }
            }
            for (to, bytes) in acks {
                self.enqueue_bytes(to, bytes);
            }
            self.enqueue(To::Group, &Record::Leave);
            self.timers = Timers::default();
        }
    }

    // ----- inputs -----

    /// Handles one received datagram from `from`. Never panics on any input: bad frames are
    /// dropped and counted in [`stats`](Self::stats).
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) {
        self.stats.rx_datagrams += 1;
        // Cheap checks first: no crypto for what can be refused by looking.
        let header = match Header::parse(datagram) {
            Ok(h) => h,
            Err(e) => {
                match e {
                    WireError::Oversized => self.stats.drop_oversized += 1,
                    WireError::UnsupportedVersion => self.stats.drop_version += 1,
                    _ => self.stats.drop_truncated += 1,
                }
                return;
            }
        };
        let opened = if self.security.is_identity() {
            self.open_identity(now, from, &header, datagram)
        } else {
            self.open_psk(now, from, &header, datagram)
        };
        if !opened {
            return;
        }
        let body_end = self.scratch.len() - wire::TAG_LEN;
        let peer = self.peers.get_mut(&header.sender).expect("present: open_* ensures it");
        // A frame sent before the peer's Leave but delivered after it is still a valid message,
        // but says nothing about the peer being alive.
        let stale = peer.left_pn.is_some_and(|left| header.pn < left);
        if !stale {
            peer.last_heard = now;
            // Only the sender's newest frame moves its address: a late (or replayed) older
            // frame from elsewhere cannot redirect what we send it. (Identity mode keeps the
            // address its session proved, `identity.rs`.)
            if self.security.is_identity() || peer.replay.highest() == Some(header.pn) {
                peer.addr = from;
            }
            if peer.status == PeerStatus::Down {
                peer.status = PeerStatus::Unannounced;
                peer.left_pn = None;
            }
        }
        let scratch = core::mem::take(&mut self.scratch);
        let body = &scratch[HEADER_LEN..body_end];
        if self.peers[&header.sender].verify.is_some() && !self.verify(now, &header, body) {
            self.answer_challenges(now, header.sender, body);
            self.hold(now, header.sender, header.pn, body);
        } else {
            self.stats.rx_accepted += 1;
            for record in RecordIter::new(body).flatten() {
                self.handle_record(now, &header, stale, record);
            }
            if !stale {
                self.solicit_if_unannounced(now, header.sender);
            }
        }
        self.scratch = scratch;
        self.service(now, Some(header.sender));
        self.update_timers();
    }

    /// Handles expired timers. Calling it early or more than once is harmless.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.timers.get(Timer::Beacon).is_some_and(|t| t <= now) {
            self.soliciting &= now < self.started + SOLICIT_PERIOD;
            self.send_beacon();
            let next = now + self.next_beacon_delay();
            self.timers.set(Timer::Beacon, Some(next));
        }
        if self.timers.get(Timer::Liveness).is_some_and(|t| t <= now) {
            let factor = self.config.peer_timeout_factor;
            let mut down = Vec::new();
            for (id, p) in self.peers.iter_mut() {
                if p.status != PeerStatus::Down && p.last_heard + p.interval * factor <= now {
                    if p.status == PeerStatus::Up {
                        down.push(*id);
                    }
                    p.status = PeerStatus::Down;
                }
            }
            for id in down {
                self.peer_down(id, DownReason::Timeout);
            }
        }
        if self.timers.get(Timer::Identity).is_some_and(|t| t <= now) {
            self.identity_on_timeout(now);
        }
        if self.timers.get(Timer::Messaging).is_some_and(|t| t <= now) {
            self.retry_challenges(now);
            self.expire_calls(now);
            self.stats.fragments_lost += self.reassembly.expire(now) as u64;
            self.cache.expire(now);
            self.service(now, None);
        }
        self.update_timers();
    }

    /// Reports that storing the state from [`poll_lease`](Self::poll_lease) failed; the node asks
    /// again on its next send. Until a lease is stored, sending beyond the current one waits.
    pub fn handle_lease_failed(&mut self) {
        self.lease_requested_end = None;
    }

    /// Confirms that the state returned by [`poll_lease`](Self::poll_lease) is stored durably;
    /// packet numbers below its `lease_end` may now be used.
    pub fn handle_lease_stored(&mut self, lease_end: u64) {
        if self.lease_requested_end == Some(lease_end) {
            self.lease_end = self.lease_end.max(lease_end);
            self.lease_requested_end = None;
        }
    }

    // ----- outputs -----

    /// State to store durably before more packet numbers can be used. At most one request is
    /// outstanding; it is asked for early (half a block ahead) so sending never waits in practice.
    pub fn poll_lease(&mut self) -> Option<PersistedState> {
        self.lease_request.take()
    }

    /// True when [`poll_lease`](Self::poll_lease) has a request waiting (sending may have just
    /// asked for one): drivers poll the lease again before they sleep.
    pub fn has_lease_request(&self) -> bool {
        self.lease_request.is_some()
    }

    /// Writes the next datagram into `buf` (which must hold `max_datagram` bytes), to be sent at
    /// `now`. Several queued records for the same destination are packed into one datagram,
    /// sealed once.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Result<Option<Transmit>, BufferTooSmall> {
        let max = self.config.max_datagram;
        if buf.len() < max {
            return Err(BufferTooSmall { needed: max });
        }
        if let Some(t) = self.poll_raw(buf) {
            return Ok(Some(t));
        }
        loop {
            let Some(first) = self.queue.front() else {
                return Ok(None);
            };
            let to = first.to;
            // Identity mode seals publications and discovery under different multicast keys.
            let split = self.security.is_identity() && to == To::Group;
            let data = split && identity::is_data(&first.record);
            if self.next_pn >= self.lease_end {
                self.stats.lease_stalls += 1;
                self.request_lease();
                return Ok(None);
            }
            let mut len = HEADER_LEN;
            while let Some(q) = self.queue.front() {
                if q.to != to
                    || len + q.record.len() + wire::TAG_LEN > max
                    || (split && identity::is_data(&q.record) != data)
                {
                    break;
                }
                let q = self.queue.pop_front().expect("front exists");
                buf[len..len + q.record.len()].copy_from_slice(&q.record);
                len += q.record.len();
                self.queued_bytes -= q.record.len();
            }
            if len == HEADER_LEN {
                // Cannot happen: records are size-checked when queued. Never spin on one that won't fit.
                if let Some(q) = self.queue.pop_front() {
                    self.queued_bytes -= q.record.len();
                }
                continue;
            }
            let sealer = if self.security.is_identity() {
                match self.identity_sealer(now, to, data) {
                    Some(sealer) => sealer,
                    None => continue, // no session yet: dropped, a handshake is under way
                }
            } else {
                match self.psk_sealer(to) {
                    Some(sealer) => sealer,
                    None => continue, // the peer was forgotten meanwhile: streams resend
                }
            };
            let pn = self.next_pn;
            // Note when this packet number goes out, to answer freshness challenges exactly.
            self.freshness.mark(now, pn, self.config.freshness_window);
            self.next_pn += 1;
            len += wire::TAG_LEN;
            let Sealer { destination, suite, tag, key } = sealer;
            Header { suite, net_tag: tag, sender: self.id(), pn }.emit(buf);
            key.seal(pn, &mut buf[..len], HEADER_LEN);
            self.stats.tx_datagrams += 1;
            self.stats.tx_bytes += len as u64;
            if self.next_pn + self.config.lease_block / 2 >= self.lease_end {
                self.request_lease();
            }
            return Ok(Some(Transmit { destination, len }));
        }
    }

    /// The next event for the application.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.earliest()
    }

    // ----- internals -----

    /// PSK mode: multicast frames are sealed with this node's key, unicast frames with the key of
    /// the pair, to the address the peer last proved. `None` for a peer no longer known.
    fn psk_sealer(&self, to: To) -> Option<Sealer> {
        let Security::Psk { keys, own_key } = &self.security else { return None };
        let tag = keys.net_tag();
        match to {
            To::Group => {
                Some(Sealer { destination: Destination::Multicast, suite: SUITE_PSK, tag, key: own_key.clone() })
            }
            To::Peer(id) => {
                let addr = self.peers.get(&id)?.addr;
                let key = keys.pair_key(self.id(), id);
                Some(Sealer { destination: Destination::Unicast(addr), suite: SUITE_PSK_UNICAST, tag, key })
            }
        }
    }

    /// PSK mode: checks and opens a frame into `self.scratch`, learning a new sender. Returns
    /// true when the frame is authentic, fresh and well formed.
    fn open_psk(&mut self, now: Instant, from: SocketAddr, header: &Header, datagram: &[u8]) -> bool {
        let unicast = match header.suite {
            SUITE_PSK => false,
            SUITE_PSK_UNICAST => true,
            _ => {
                self.stats.drop_version += 1;
                return false;
            }
        };
        let Security::Psk { keys, .. } = &self.security else { return false };
        if header.net_tag != keys.net_tag() {
            self.stats.drop_foreign_network += 1;
            return false;
        }
        if header.sender == self.id() {
            self.handle_own_id(from, *header, datagram);
            return false;
        }
        let known = match self.peers.get(&header.sender) {
            Some(peer) => {
                let max_age = self.config.freshness_window;
                if header.pn < peer.floor || peer.replay.check(header.pn, now, max_age).is_err() {
                    self.stats.drop_replay += 1;
                    return false;
                }
                true
            }
            None => {
                if self.peers.len() >= self.config.max_peers && self.evictable().is_none() {
                    self.stats.drop_peer_table_full += 1;
                    return false;
                }
                false
            }
        };
        // One AEAD attempt, never more: with the sender's key for multicast, the pair's for unicast.
        let fresh_key = (!known).then(|| keys.sender_key(header.sender));
        let pair_key = unicast.then(|| keys.pair_key(header.sender, self.id()));
        let key = match (&pair_key, &fresh_key) {
            (Some(k), _) | (None, Some(k)) => k,
            (None, None) => match &self.peers[&header.sender].key {
                Some(k) => k,
                None => return false,
            },
        };
        self.scratch.clear();
        self.scratch.extend_from_slice(datagram);
        if key.open(header.pn, &mut self.scratch, HEADER_LEN).is_err() {
            self.stats.drop_auth += 1;
            return false;
        }
        let body_end = self.scratch.len() - wire::TAG_LEN;
        // Validate every record before acting on any, so a frame is taken whole or not at all.
        let class = if unicast { KeyClass::Pairwise } else { KeyClass::Group };
        if !records_valid(&self.scratch[HEADER_LEN..body_end], class) {
            self.stats.drop_malformed += 1;
            return false;
        }
        if let Some(key) = fresh_key {
            if self.peers.len() >= self.config.max_peers {
                if let Some(victim) = self.evictable() {
                    self.evict(victim);
                }
            }
            self.insert_peer(now, from, header.sender, Some(key));
            if self.config.require_fresh {
                self.challenge(now, header.sender);
            }
        }
        let peer = self.peers.get_mut(&header.sender).expect("present: found or inserted above");
        // Accepting cannot fail: checked above and nothing ran in between.
        let _ = peer.replay.accept(header.pn, now, self.config.freshness_window);
        true
    }

    fn insert_peer(&mut self, now: Instant, from: SocketAddr, id: NodeId, key: Option<SenderKey>) {
        self.peers.insert(
            id,
            alloc::boxed::Box::new(Peer {
                name: String::new(),
                addr: from,
                epoch: 0,
                interval: self.config.beacon_interval,
                last_heard: now,
                replay: AgedWindow::new(),
                key,
                status: PeerStatus::Unannounced,
                left_pn: None,
                filters: Vec::new(),
                in_mcast: None,
                in_ucast: None,
                out_ucast: None,
                rtt: RttEstimator::new(self.config.initial_rto, MIN_RTO, Duration::from_secs(5)),
                floor: 0,
                verify: None,
                parity: crate::stream::ParityUse::NONE,
            }),
        );
    }

    fn handle_own_id(&mut self, from: SocketAddr, header: Header, datagram: &[u8]) {
        if header.pn < self.next_pn {
            // Our own multicast, looped back by the network.
            self.stats.rx_own += 1;
            return;
        }
        // A packet number we never used: another device holds our id (cloned state).
        self.scratch.clear();
        self.scratch.extend_from_slice(datagram);
        let Security::Psk { own_key, .. } = &self.security else { return };
        if own_key.open(header.pn, &mut self.scratch, HEADER_LEN).is_err() {
            self.stats.drop_auth += 1;
            return;
        }
        self.stats.node_id_conflicts += 1;
        self.push_event(Event::NodeIdConflict { addr: from });
    }

    /// Acts on one record of an authenticated frame whose records were all validated.
    fn handle_record(&mut self, now: Instant, header: &Header, stale: bool, record: Record<'_>) {
        let sender = header.sender;
        match record {
            Record::Beacon(_) if stale => {}
            Record::Beacon(b) => self.handle_beacon(now, sender, b),
            Record::Solicit if stale => {}
            // A newcomer asks: answer soon (rate-limited), even if we know it already, since
            // our earlier answer may have been lost.
            Record::Solicit => self.schedule_early_beacon(now),
            Record::Publish { topic, payload } => {
                if let Ok(topic) = Topic::new(topic) {
                    self.deliver(sender, topic, payload, None);
                }
            }
            Record::Leave => {
                if let Some(p) = self.peers.get_mut(&sender) {
                    let was_up = p.status == PeerStatus::Up;
                    p.status = PeerStatus::Down;
                    p.left_pn = Some(header.pn);
                    if was_up {
                        self.peer_down(sender, DownReason::Left);
                    }
                }
            }
            Record::Data { header: h, chunk } => self.handle_data(now, sender, &h, chunk),
            // Identity mode's multicast acks come under the sender's discovery key, which every
            // member holds: they ask for repairs but acknowledge nothing (PROTOCOL.md §6.3).
            Record::Ack(ack) => self.handle_ack(now, sender, &ack, header.suite != wire::SUITE_MULTICAST),
            Record::Heartbeat(hb) => self.handle_heartbeat(now, sender, &hb),
            Record::Repair { header: h, symbol } => self.handle_repair(now, sender, &h, symbol),
            Record::BlockRepair { header: h, symbol } => self.handle_block_repair(now, sender, &h, symbol),
            Record::Fragment { header: h, chunk } => self.handle_fragment(now, sender, &h, chunk),
            Record::Subscriptions(filters) => self.handle_subscriptions(now, sender, &filters),
            Record::Challenge(nonce) => self.echo(now, sender, nonce),
            Record::Echo { .. } => {} // only meaningful while verifying, handled there
            Record::GroupKey { .. } | Record::KeyRequest => self.handle_key_record(now, header, record),
            Record::Unknown { .. } => self.stats.unknown_records += 1,
        }
    }

    fn handle_beacon(&mut self, now: Instant, sender: NodeId, b: Beacon<'_>) {
        let Some(p) = self.peers.get_mut(&sender) else { return };
        // Identity mode names peers from the allowlist, never from what they announce.
        if !self.security.is_identity() {
            p.name = b.name.to_string();
        }
        p.interval = Duration::from_millis(u64::from(b.interval_ms.max(10)));
        p.parity = crate::stream::ParityUse {
            messages: b.features & wire::feature::PARITY != 0,
            blocks: b.features & wire::feature::BLOCK_PARITY != 0,
        };
        let event = match p.status {
            PeerStatus::Up if b.epoch > p.epoch => {
                p.epoch = b.epoch;
                // A new incarnation: its streams start afresh, and so does ours to it.
                p.in_mcast = None;
                p.in_ucast = None;
                self.reassembly.forget(sender);
                self.cache.forget(sender);
                Some(Event::PeerRestarted(self.peers[&sender].info(sender)))
            }
            PeerStatus::Up => None,
            PeerStatus::Unannounced | PeerStatus::Down => {
                p.epoch = p.epoch.max(b.epoch);
                p.status = PeerStatus::Up;
                Some(Event::PeerUp(p.info(sender)))
            }
        };
        // Filters known from before (or announced ahead of this beacon) count at once.
        self.join_waiting(now, sender);
        if let Some(e) = event {
            let restarted = matches!(e, Event::PeerRestarted(_));
            self.push_event(e);
            self.schedule_early_beacon(now);
            // Calls waiting for this peer go now. Our stream to a restarted peer goes on
            // numbering from where it was (the new incarnation starts at our `low`), but what
            // it held for the old incarnation is dropped, and calls the old one received end.
            if restarted {
                self.callee_restarted(now, sender);
            } else {
                self.resend_calls(now, sender);
            }
        }
    }

    /// Answers a newcomer with a beacon soon, so it learns the mesh in well under one interval.
    /// Early beacons are at least [`EARLY_BEACON_MIN_GAP`] apart: a burst of arrivals is answered
    /// by one beacon per gap, and a newcomer is never left waiting for the regular one.
    fn schedule_early_beacon(&mut self, now: Instant) {
        if self.lifecycle != Lifecycle::Running {
            return;
        }
        let delay = Duration::from_micros(self.rng.next_u64() % (EARLY_BEACON_MAX_DELAY.as_micros() as u64));
        let mut at = now + delay;
        if let Some(last) = self.last_early_beacon {
            at = at.max(last + EARLY_BEACON_MIN_GAP);
        }
        if self.timers.get(Timer::Beacon).is_none_or(|t| at < t) {
            self.timers.set(Timer::Beacon, Some(at));
            self.last_early_beacon = Some(at);
        }
    }

    fn deliver(&mut self, from: NodeId, topic: Topic<'_>, payload: &[u8], seq: Option<u64>) {
        if !self.may_publish(from, &topic) || (from != self.id() && !self.may_receive_self(&topic)) {
            self.stats.denied += 1;
            return;
        }
        let subscriptions: Vec<SubscriptionId> =
            self.subs.iter().filter(|(_, f)| f.matches(&topic)).map(|(id, _)| *id).collect();
        if subscriptions.is_empty() {
            self.stats.messages_unmatched += 1;
            return;
        }
        self.stats.messages_delivered += 1;
        self.push_event(Event::Message(Message {
            topic: topic.as_str().to_string(),
            payload: payload.to_vec(),
            from,
            subscriptions,
            seq,
        }));
    }

    fn send_beacon(&mut self) {
        let interval_ms = u32::try_from(self.config.beacon_interval.as_millis()).unwrap_or(u32::MAX);
        let features = match (crate::parity::ENABLED, self.config.streams.parity_keep_bytes > 0) {
            (true, true) => wire::feature::PARITY | wire::feature::BLOCK_PARITY,
            (true, false) => wire::feature::PARITY,
            (false, _) => 0,
        };
        let beacon = Beacon { epoch: self.boot.epoch, interval_ms, name: &self.config.name, features };
        let record = Record::Beacon(beacon);
        let mut bytes = Vec::with_capacity(record.encoded_len());
        record.emit(&mut bytes);
        // Just started: ask everyone to beacon, so a node publishing at once knows its
        // subscribers. Repeated while soliciting, since answers and asks may be lost.
        if self.soliciting {
            Record::Solicit.emit(&mut bytes);
        }
        // Subscriptions ride along, so a newcomer learns whom reliable publications wait for.
        if !self.subs.is_empty() {
            self.subscriptions_record().emit(&mut bytes);
        }
        // Beacons are small and periodic: queue them even past the byte bound rather than go silent.
        self.enqueue_bytes(To::Group, bytes);
        // Identity mode: members without our multicast key learn our public key from this.
        self.announce();
    }

    /// Until when this node solicits beacons (it just started and is learning the mesh), if
    /// it still does.
    pub(super) fn soliciting_until(&self) -> Option<Instant> {
        self.soliciting.then_some(self.started + SOLICIT_PERIOD)
    }

    /// The next beacon's delay: every [`SOLICIT_INTERVAL`] while soliciting (just started),
    /// else the configured interval; both jittered.
    fn next_beacon_delay(&mut self) -> Duration {
        if self.soliciting {
            self.jittered(SOLICIT_INTERVAL.min(self.config.beacon_interval))
        } else {
            self.jittered(self.config.beacon_interval)
        }
    }

    fn enqueue(&mut self, to: To, record: &Record<'_>) {
        let mut bytes = Vec::with_capacity(record.encoded_len());
        record.emit(&mut bytes);
        self.enqueue_bytes(to, bytes);
    }

    fn push_event(&mut self, e: Event) {
        if self.events.len() >= self.config.max_events {
            self.stats.events_dropped += 1;
        } else {
            self.events.push_back(e);
        }
    }

    fn request_lease(&mut self) {
        if self.lease_requested_end.is_some() || self.lease_end > MAX_PN {
            return;
        }
        let Some(end) = self.lease_end.checked_add(self.config.lease_block).filter(|&e| e <= MAX_PN + 1) else {
            return;
        };
        self.lease_requested_end = Some(end);
        self.lease_request = Some(PersistedState { node_id: self.id(), epoch: self.boot.epoch, lease_end: end });
    }

    /// Forgets `id` to make room (see [`evictable`](Self::evictable)); frames it had waiting are
    /// dropped and counted, and a publication waiting to identify it no longer does.
    fn evict(&mut self, id: NodeId) {
        if let Some(p) = self.peers.remove(&id) {
            if let Some(v) = p.verify {
                self.stats.drop_unverified += v.held_frames() as u64;
                self.out_mcast.unidentified_lost(id);
            }
        }
    }

    /// The peer to forget for a newcomer when the table is full: the departed one heard from
    /// least recently, else the sender still unverified the longest (PROTOCOL.md §3.4). An
    /// unverified sender may be a replay of a dead node's frames: a flood of those must not fill
    /// the table and lock out live newcomers, so they make room for each other.
    fn evictable(&self) -> Option<NodeId> {
        let oldest = |pick: &dyn Fn(&Peer) -> bool| {
            self.peers.iter().filter(|(_, p)| pick(p)).min_by_key(|(_, p)| p.last_heard).map(|(id, _)| *id)
        };
        oldest(&|p| p.status == PeerStatus::Down).or_else(|| oldest(&|p| p.verify.is_some()))
    }

    fn update_timers(&mut self) {
        let factor = self.config.peer_timeout_factor;
        let next = self
            .peers
            .values()
            .filter(|p| p.status != PeerStatus::Down)
            .map(|p| p.last_heard + p.interval * factor)
            .min();
        self.timers.set(Timer::Liveness, next);
        self.timers.set(Timer::Messaging, self.messaging_timeout());
        self.timers.set(Timer::Identity, self.identity_timeout());
    }

    fn peer_down(&mut self, id: NodeId, reason: DownReason) {
        self.out_mcast.receiver_gone(id);
        self.push_event(Event::PeerDown { id, reason });
    }

    /// `d` scaled by a random factor in [0.75, 1.25).
    fn jittered(&mut self, d: Duration) -> Duration {
        let permille = 750 + self.rng.next_u64() % 500;
        Duration::from_micros((d.as_micros() as u64).saturating_mul(permille) / 1000)
    }
}
