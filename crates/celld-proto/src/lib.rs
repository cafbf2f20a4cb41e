//! The code generated from proto/: celld's own services (proto/celld/v1:
//! messages, clients and servers of Stager, Cell, Scheduler and Apps) and its
//! descriptor set, which gRPC reflection serves; and Diego's messages
//! (proto/diego), wire-compatible with BBS's.

#![allow(clippy::all, clippy::pedantic)]

tonic::include_proto!("celld.v1");

pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("celld_descriptor");

/// Diego's messages, wire-compatible with BBS's and Locket's.
pub mod diego {
    /// BBS's `models` package: the action tree, LRPs, tasks, cells, errors.
    pub mod bbs {
        tonic::include_proto!("diego.bbs");
    }
}
