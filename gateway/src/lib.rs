//! Library side of the `starling` tool: payload rendering, key and duration parsing, shared by the
//! CLI and its tests. The MQTT bridge will live here too.
//!
//! # Map
//! - [`render`]: how messages are shown (text, automatic hex for binary, hexdump, JSON lines).
//! - [`args`]: parsing of keys, payloads and durations with errors that say what to do.
//! - [`bridge`]: the MQTT bridge.
//! - [`identity_cmd`]: device key pairs and allowlist editing (identity mode).
//! - [`own_broker`]: the broker the gateway runs when none is configured.
//! - [`provision`]: `starling provision`, the provisioning blob for devices.
//! - [`signals`]: Ctrl-C and SIGTERM, so service managers stop nodes cleanly.
//! - [`twin`]: `starling twin`, the firmware's application on the host.
//! - [`watch`]: `starling watch`, the live monitor (model, decoding, terminal UI, plain mode).
#![warn(missing_docs)]

pub mod args;
pub mod bridge;
pub mod identity_cmd;
pub mod own_broker;
pub mod provision;
pub mod render;
pub mod signals;
pub mod twin;
pub mod watch;
