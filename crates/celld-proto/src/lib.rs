//! The code generated from proto/celld/v1 (messages, clients and servers of
//! Stager, Cell, Scheduler and Apps) and its descriptor set, which gRPC
//! reflection serves.

#![allow(clippy::all, clippy::pedantic)]

tonic::include_proto!("celld.v1");

pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("celld_descriptor");
