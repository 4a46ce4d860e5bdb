//! Shared test support. Each integration test crate that needs it declares `mod common;`.

#[cfg(feature = "std")]
pub mod mesh;
pub mod sim;
