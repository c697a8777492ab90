//! Shared support for integration tests and benchmarks.
//!
//! Include it from a test binary with `mod support;` and use
//! [`emulator::Emulator`] (a push-service emulator over real HTTPS) and
//! [`ca::TestCa`] (the throw-away CA behind it). See `emulator.rs` for the API.

// Each test binary compiles this module separately and uses only part of it;
// without this every binary would warn about the parts it leaves unused.
#![allow(dead_code)]

pub mod ca;
pub mod emulator;
