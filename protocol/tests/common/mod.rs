//! Shared test support. Each integration test crate that needs it declares `mod common;`.

pub mod sim;
