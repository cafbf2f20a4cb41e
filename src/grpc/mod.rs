//! celld's gRPC listener: generated code for proto/celld/v1 and the services.

#[allow(clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("celld.v1");
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("celld_descriptor");
}
