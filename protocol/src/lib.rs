//! Starling: brokerless, encrypted publish/subscribe over UDP multicast.
//!
//! The crate is a sans-IO protocol core that runs anywhere (`#![no_std]` + `alloc`), plus, with
//! the default `std` feature, a tokio runtime that drives it over a real multicast socket.
//!
//! # Which `Node` is which
//! - [`runtime::Node`] (feature `std`) is the one a tokio program wants: it owns the sockets and
//!   timers, and its methods are async. Open one with [`runtime::NodeBuilder`]; bring it and
//!   the rest of the async API into scope with `use starling::prelude::*;`.
//! - [`Node`] (also `starling::node::Node`) is the sans-IO state machine underneath: no sockets,
//!   no clock, no threads. Firmware and simulations feed it datagrams and time themselves.
//!   Likewise [`Message`] is the core's borrowed event; [`runtime::Message`] is the owned one a
//!   [`runtime::Subscription`] yields.
//!
//! # Features
//! - `std` (default): the tokio runtime, [`NetworkKey::generate`].
//! - `parity` (default): RaptorQ repair of reliable multicast streams.
//! - `typed`: typed calls and pub/sub over serde and postcard (`runtime::typed`).
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

/// What a tokio program needs, in one `use starling::prelude::*;`: the async
/// [`runtime::Node`] (not the sans-IO [`Node`]), its builder, messages and errors, and the
/// key and id types.
#[cfg(feature = "std")]
pub mod prelude {
    pub use crate::crypto::NetworkKey;
    #[cfg(feature = "typed")]
    pub use crate::runtime::{DecodeError, TypedMessage, TypedSubscription};
    pub use crate::runtime::{
        Error, Interface, Message, Node, NodeBuilder, PeerEvent, Received, Reply, Request, Subscription, Target,
    };
    pub use crate::wire::NodeId;
    pub use crate::{CallError, Config};
}
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
