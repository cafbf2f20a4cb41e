//! The code generated from proto/: celld's own services (proto/celld/v1:
//! messages, clients and servers of Stager, Cell, Scheduler and Apps) and its
//! descriptor set, which gRPC reflection serves; and Diego's messages
//! (proto/diego), wire-compatible with BBS's.

#![allow(clippy::all, clippy::pedantic)]

tonic::include_proto!("celld.v1");

pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("celld_descriptor");

/// Diego's messages, wire-compatible with BBS's and Locket's.
pub mod diego {
    /// BBS's `models` package: the action tree, LRPs, tasks, cells, errors,
    /// and the bodies of the BBS routes a cell calls.
    pub mod bbs {
        tonic::include_proto!("diego.bbs");
    }
}

/// Locket's gRPC service (`models.Locket`: Lock, Fetch, Release, FetchAll),
/// client and server, wire-compatible with cloudfoundry/locket's.
pub mod locket {
    tonic::include_proto!("models");
}
