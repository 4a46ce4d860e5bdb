//! Node configuration: every bound the core enforces, with defaults for hosts and a preset for
//! microcontrollers.

use alloc::string::String;
use core::fmt;
use core::time::Duration;

use crate::state::DEFAULT_LEASE_BLOCK;
use crate::stream::StreamLimits;
use crate::wire::{FRAME_OVERHEAD, MAX_DATAGRAM, MAX_NAME_LEN};

/// Configuration of a [`Node`](crate::Node). Build with [`Config::new`], adjust fields, and the
/// node checks it with [`Config::validate`] when created.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// Human-readable node name announced in beacons (at most 32 bytes; need not be unique).
    pub name: String,
    /// Mean time between beacons; each one is jittered by ±25% so nodes do not synchronise.
    pub beacon_interval: Duration,
    /// A peer is considered down after this many of its own beacon intervals of silence.
    pub peer_timeout_factor: u32,
    /// Most peers tracked at once (departed peers are kept as long as room allows, so that
    /// their old frames stay recognisable as replays).
    pub max_peers: usize,
    /// Most local subscriptions.
    pub max_subscriptions: usize,
    /// Most events waiting in [`Node::poll_event`](crate::Node::poll_event); more are dropped and counted.
    pub max_events: usize,
    /// Most bytes of records waiting for [`Node::poll_transmit`](crate::Node::poll_transmit).
    pub max_queued_bytes: usize,
    /// Largest datagram to send, at most 1200.
    pub max_datagram: usize,
    /// Packet numbers reserved per durable lease write.
    pub lease_block: u64,
    /// Seed of the node's random generator (beacon jitter). Supply fresh OS or hardware entropy.
    pub rng_seed: [u8; 32],
    /// Largest message (publication payload plus topic, or RPC payload) in bytes; larger ones
    /// are split into fragments on the wire.
    pub max_message: usize,
    /// Bounds and timers of reliable streams.
    pub streams: StreamLimits,
    /// Most bytes buffered out of order over all receiving streams together (the per-stream
    /// bound is `streams.max_pending_bytes`): many senders cannot add up to more than this.
    pub max_pending_total: usize,
    /// Most RPC calls this node may have in flight.
    pub max_pending_calls: usize,
    /// Most calls a callee remembers to answer retransmissions without running them again.
    pub response_cache_entries: usize,
    /// How long a callee remembers a call.
    pub response_cache_lifetime: Duration,
    /// Retransmission timeout towards a peer before any round trip was measured.
    pub initial_rto: Duration,
    /// How long an incomplete best-effort message waits for its missing fragments.
    pub reassembly_timeout: Duration,
    /// Hold frames from a sender this node has no replay state for until it proves it is alive
    /// (PROTOCOL.md §3.4). Only tests of other layers turn this off.
    pub require_fresh: bool,
    /// How old a held frame may be and still be accepted once its sender proved freshness.
    pub freshness_window: Duration,
    /// Identity mode's session and handshake knobs (ignored in PSK mode).
    pub identity: IdentityConfig,
}

/// Identity mode's knobs (PROTOCOL.md §11).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityConfig {
    /// A session is renewed by a new handshake after this long (WireGuard uses 2 minutes).
    pub rekey_after: Duration,
    /// ... or after this many frames sealed with it.
    pub rekey_after_frames: u64,
    /// A node's multicast key is replaced this often, and at once when the allowlist changes.
    pub group_key_rotation: Duration,
    /// Handshake messages processed per second before the node asks for cookies (under load).
    pub handshakes_per_second: u32,
    /// First retry of an unanswered handshake; later ones back off to 8 times this.
    pub handshake_retry: Duration,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        IdentityConfig {
            rekey_after: Duration::from_secs(120),
            rekey_after_frames: 1 << 24,
            group_key_rotation: Duration::from_secs(600),
            handshakes_per_second: 50,
            handshake_retry: Duration::from_millis(500),
        }
    }
}

impl Config {
    /// Host defaults: 5 s beacons, 256 peers, 64 subscriptions, 256 KiB send queue.
    pub fn new(name: impl Into<String>, rng_seed: [u8; 32]) -> Self {
        Config {
            name: name.into(),
            beacon_interval: Duration::from_secs(5),
            peer_timeout_factor: 3,
            max_peers: 256,
            max_subscriptions: 64,
            max_events: 4096,
            max_queued_bytes: 256 * 1024,
            max_datagram: MAX_DATAGRAM,
            lease_block: DEFAULT_LEASE_BLOCK,
            rng_seed,
            max_message: 64 * 1024,
            streams: StreamLimits::default(),
            max_pending_total: 4 << 20,
            max_pending_calls: 256,
            response_cache_entries: 1024,
            response_cache_lifetime: Duration::from_secs(60),
            initial_rto: Duration::from_millis(200),
            reassembly_timeout: Duration::from_secs(2),
            require_fresh: true,
            freshness_window: Duration::from_secs(2),
            identity: IdentityConfig::default(),
        }
    }

    /// Small bounds for microcontrollers with tens of kilobytes of RAM to spare.
    pub fn embedded(name: impl Into<String>, rng_seed: [u8; 32]) -> Self {
        Config {
            max_peers: 32,
            max_subscriptions: 16,
            max_events: 32,
            max_queued_bytes: 8 * 1024,
            lease_block: 1 << 14,
            max_message: 4 * 1024,
            streams: StreamLimits {
                max_retained_messages: 32,
                max_retained_bytes: 16 * 1024,
                max_pending_chunks: 16,
                max_pending_bytes: 8 * 1024,
                // Boards keep no copies for block repair (and run without the parity codec).
                parity_keep_bytes: 0,
                ..StreamLimits::default()
            },
            max_pending_total: 16 * 1024,
            max_pending_calls: 8,
            response_cache_entries: 16,
            ..Config::new(name, rng_seed)
        }
    }

    /// Checks every field; the error names the field and how to fix it.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |field, problem| Err(ConfigError { field, problem });
        if self.name.len() > MAX_NAME_LEN {
            return err("name", "must be at most 32 bytes of UTF-8");
        }
        if self.beacon_interval < Duration::from_millis(10) || self.beacon_interval > Duration::from_secs(3600) {
            return err("beacon_interval", "must be between 10 ms and 1 hour");
        }
        if self.peer_timeout_factor < 2 {
            return err("peer_timeout_factor", "must be at least 2, or one lost beacon marks a peer down");
        }
        if self.identity.rekey_after < Duration::from_secs(1) || self.identity.rekey_after_frames < 16 {
            return err("identity.rekey_after", "must be at least 1 s and 16 frames");
        }
        if self.identity.group_key_rotation < Duration::from_secs(1) {
            return err("identity.group_key_rotation", "must be at least 1 s");
        }
        if self.identity.handshakes_per_second == 0 {
            return err("identity.handshakes_per_second", "must be at least 1, or no handshake would ever run");
        }
        if self.identity.handshake_retry < Duration::from_millis(10) {
            return err("identity.handshake_retry", "must be at least 10 ms");
        }
        if self.max_peers == 0 {
            return err("max_peers", "must be at least 1");
        }
        if self.max_events == 0 {
            return err("max_events", "must be at least 1");
        }
        if !(FRAME_OVERHEAD + 64..=MAX_DATAGRAM).contains(&self.max_datagram) {
            return err("max_datagram", "must be between 96 and 1200 bytes");
        }
        if self.max_queued_bytes < self.max_datagram {
            return err("max_queued_bytes", "must be at least max_datagram, or no message could ever be queued");
        }
        if self.lease_block < 16 {
            return err("lease_block", "must be at least 16 packet numbers");
        }
        if self.max_message == 0 || self.max_message > 16 * 1024 * 1024 {
            return err("max_message", "must be between 1 byte and 16 MiB");
        }
        if self.streams.max_retained_bytes < self.max_message {
            return err(
                "streams.max_retained_bytes",
                "must be at least max_message, or large reliable messages could never be sent",
            );
        }
        // A receiver delivers a message only once all its chunks are buffered: a window
        // smaller than the largest message could never deliver it.
        let largest = self.max_message + crate::topic::MAX_TOPIC_LEN + 16;
        if self.streams.max_pending_bytes < largest {
            return err(
                "streams.max_pending_bytes",
                "must hold the largest message (max_message + 271 bytes of topic and framing) so receivers can reassemble it",
            );
        }
        if self.max_pending_total < self.streams.max_pending_bytes {
            return err(
                "max_pending_total",
                "must be at least streams.max_pending_bytes, or one sender could never fill its window",
            );
        }
        if self.streams.max_retained_messages == 0 || self.streams.max_pending_chunks == 0 {
            return err("streams", "retention and receive windows must hold at least one message");
        }
        if self.max_pending_calls == 0 {
            return err("max_pending_calls", "must be at least 1");
        }
        Ok(())
    }
}

/// A configuration field has a value the node cannot work with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigError {
    /// The field's name, as in [`Config`].
    pub field: &'static str,
    /// What is wrong and what values would work.
    pub problem: &'static str,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "configuration field `{}` {}", self.field, self.problem)
    }
}

impl core::error::Error for ConfigError {}
