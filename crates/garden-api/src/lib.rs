//! The Garden wire protocol as Cloud Foundry's Garden clients speak it: the
//! request and response types, error bodies, and a client over a Unix socket or
//! TCP (used by the executor, cellctl, the benchmark and the tests).

pub mod client;
pub mod types;
