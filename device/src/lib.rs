//! The application logic of a Starling device, without any hardware or OS: the firmware
//! (`node-esp/`) and the host twin (`examples/esp-twin.rs`) both run it, so the host tests
//! exercise what the board does.
//!
//! # Map
//! - [`provision`]: the provisioning blob (Wi-Fi, network key or identity and allowlist, name,
//!   intervals): encode, decode and the reasons a blob is refused.
//! - [`app`]: the [`Device`] state machine: which readings to publish when, and the RPC methods
//!   (`info`, `gpio.set`, `config.get`, `reboot`), over a [`Board`] that supplies the readings.
//! - [`lease`]: the packet-number lease log on NOR flash, so nonces are never reused across
//!   reboots, and the boot a device starts from it (an identity fixes the node id).
//! - [`retry`]: the backoff between retries of what failed.
#![no_std]
#![warn(missing_docs)]

extern crate alloc;

pub mod app;
pub mod lease;
pub mod provision;
pub mod retry;

pub use app::{core_config, Board, Device, Memory, Reading, IDENTITY_MAX_PEERS, METHODS};
pub use provision::{Membership, ProvisionError, Provisioning};
