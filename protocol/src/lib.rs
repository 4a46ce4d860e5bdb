//! Starling: brokerless, encrypted publish/subscribe over UDP multicast.
//!
//! The crate is a sans-IO protocol core that runs anywhere (`#![no_std]` + `alloc`), plus, with
//! the default `std` feature, a tokio runtime that drives it over a real multicast socket.
//!
//! # Map
//! - [`node`]: the [`Node`] state machine: discovery, pub/sub, sealing, replay protection.
//! - [`wire`]: wire format v1, header and records (PROTOCOL.md §2).
//! - [`crypto`]: network key, derived keys, per-sender AEAD (PROTOCOL.md §3).
//! - [`identity`]: identity mode's keys and allowlist (PROTOCOL.md §11).
//! - [`noise`]: identity mode's Noise IK handshakes, macs and cookies.
//! - [`stream`]: reliable streams (PROTOCOL.md §6); [`parity`]: their RaptorQ repair symbols.
//! - [`replay`]: the sliding anti-replay window.
//! - [`state`]: what a node persists between boots (id, epoch, packet-number lease).
//! - [`topic`]: MQTT-style topic names and filters.
//! - [`config`]: every bound the core enforces.
//! - [`time`]: the core's own [`Instant`]; the core never reads a clock.
//! - `runtime` (feature `std`): the tokio driver and async API.
#![no_std]
#![warn(missing_docs)]

extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

pub mod config;
pub mod crypto;
pub mod hex;
pub mod identity;
pub mod node;
pub mod noise;
pub mod parity;
pub mod reassembly;
pub mod replay;
pub mod response_cache;
pub mod rtt;
pub mod state;
pub mod stream;
pub mod time;
pub mod topic;
pub mod wire;

#[cfg(feature = "std")]
pub mod runtime;
#[cfg(test)]
mod test_rng;

pub use config::{Config, ConfigError};
pub use crypto::{KeyParseError, NetworkKey};
pub use node::{
    BufferTooSmall, CallError, CallId, Destination, DownReason, Event, Message, Node, PeerInfo, PublishError,
    PublishFailure, PublishId, Stats, SubscribeError, SubscriptionId, Transmit,
};
pub use state::{Boot, PersistedState, StateError};
pub use time::Instant;
pub use topic::{Topic, TopicError, TopicFilter};
pub use wire::NodeId;
