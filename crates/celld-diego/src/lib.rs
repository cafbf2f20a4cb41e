//! Diego's wire, for a cell that joins a real Diego (BBS, Locket, auctioneer):
//! mutual TLS from the PEM files a rep is given, checked at load so that a bad
//! file fails start-up with its name and its flaw (`tls`); the BBS client,
//! protobuf over HTTPS (`bbs`); the cell's presence held in Locket (`locket`);
//! and the CellPresence JSON that presence carries (`cell_presence`).
//!
//! The messages are celld-proto's `diego::bbs` and `locket`, wire-compatible
//! with BBS's and Locket's at diego-release v2.73.0.

pub mod bbs;
pub mod cell_presence;
pub mod locket;
pub mod tls;

pub use bbs::{BbsClient, BbsError};
pub use cell_presence::{CellCapacity, CellPresence, RootfsProvider};
pub use locket::{Presence, PresenceConfig};
pub use tls::{PemFiles, TlsError, TlsIdentity, Usage};

#[cfg(any(test, feature = "test-certs"))]
pub mod test_certs;

#[cfg(feature = "fakes")]
pub mod fakes;

#[cfg(test)]
mod wire_tests;
