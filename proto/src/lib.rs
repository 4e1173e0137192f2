//! The duban wire contract.
//!
//! - [`pb`]: the generated protobuf messages and the tonic client and server for
//!   `duban.report.v1.ReportService`. Only the edges of the system (the aggregator's server and
//!   the agent's delivery) touch these types.
//! - [`envelope`]: signing and verifying the DSSE-style envelope around a report.
//! - [`keys`]: Ed25519 keys in the PEM formats openssl writes, and the key id.
//! - [`period`]: report periods (`2018Q1`, `2018-03`, `2018S1`, `2018`).
//! - [`reasons`]: the reason codes' names, and which ones a client retries.
//!
//! The contract itself is documented for third parties in `docs/PROTOCOL.md`.

pub mod envelope;
pub mod keys;
pub mod period;
pub mod reasons;

/// Generated code for package `duban.report.v1`.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("duban.report.v1");
}

/// The encoded `FileDescriptorSet` of every duban proto, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/duban_descriptor.bin"));

pub use envelope::{PAYLOAD_TYPE, VerifyError};
pub use keys::{KeyError, KeyId, PublicKey, SigningKey};
