//! `duban-agent keygen`: make the agent's signing key.

use std::path::Path;

use duban_proto::keys::{KeyPairFiles, write_keypair};
use duban_proto::{KeyError, SigningKey};

/// Generates a fresh Ed25519 key and writes it into `dir` (private key mode 0600). Refuses to
/// overwrite an existing key.
pub fn generate_into(dir: &Path) -> Result<KeyPairFiles, KeyError> {
    write_keypair(dir, &SigningKey::generate())
}
