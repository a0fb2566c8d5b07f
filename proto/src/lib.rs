//! Passage's wire contract, generated from `proto/passage/v1/*.proto`.
//!
//! This crate is the only place generated code lives; every service depends on it.

/// `passage.v1`: sign-in, dispatcher and agent-tunnel messages and services.
pub mod v1 {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("passage.v1");
}

/// Encoded `FileDescriptorSet` of `passage.v1`, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("passage_descriptor");
