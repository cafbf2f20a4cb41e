//! Mutual TLS material and the gRPC plumbing every celld role shares.

pub mod grpc;
pub mod tls;
