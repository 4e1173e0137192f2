//! Signing-key rotation without a refused report.
//!
//! `duban-agent rotate-key` writes a new key beside the agent's (`<private_key>.next`, and its
//! public key `<private_key>.next.pub`) and prints the `keys add` line to run at the centre.
//! The running agent (or the next one started) says Hello with the pending key every
//! [`PENDING_CHECK`]; once the centre knows it, the agent switches: the pending key replaces the
//! key file (the old key is kept as `<private_key>.previous`) and new reports are signed with
//! it. Reports already in the outbox keep the old key's signature, which the centre accepts
//! until the old key is revoked: revoke it once the agent has switched and its outbox drained.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use duban_proto::keys::{KeyError, write_new_file};
use duban_proto::{KeyId, SigningKey};

/// How often a pending key is offered to the centre (by a Hello signed with it).
pub const PENDING_CHECK: Duration = Duration::from_secs(10);

/// The agent's signing key, replaced in place when a rotation completes; every clone sees the
/// replacement.
#[derive(Clone)]
pub struct KeyCell(Arc<RwLock<Arc<SigningKey>>>);

impl std::fmt::Debug for KeyCell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyCell({})", self.current().key_id())
    }
}

impl KeyCell {
    pub fn new(key: SigningKey) -> Self {
        KeyCell(Arc::new(RwLock::new(Arc::new(key))))
    }

    /// The key new reports are signed with.
    pub fn current(&self) -> Arc<SigningKey> {
        self.0.read().expect("key lock").clone()
    }

    fn replace(&self, key: Arc<SigningKey>) {
        *self.0.write().expect("key lock") = key;
    }
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Where `rotate-key` puts the pending key.
pub fn pending_path(private_key: &Path) -> PathBuf {
    with_suffix(private_key, ".next")
}

/// Where `rotate-key` puts the pending key's public key.
pub fn pending_public_path(private_key: &Path) -> PathBuf {
    with_suffix(private_key, ".next.pub")
}

/// Where the switch keeps the key it replaced.
pub fn previous_path(private_key: &Path) -> PathBuf {
    with_suffix(private_key, ".previous")
}

/// The pending key, if a rotation is under way.
pub fn read_pending(private_key: &Path) -> Option<Result<SigningKey, KeyError>> {
    let path = pending_path(private_key);
    path.exists()
        .then(|| SigningKey::read_pkcs8_pem_file(&path))
}

/// What `rotate-key` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Started {
    pub key_id: KeyId,
    pub public_key: PathBuf,
    /// Whether a pending key was already there (and is the one reported).
    pub already_pending: bool,
}

/// `rotate-key`: makes the pending key, or finds the one already pending (a second run never
/// replaces a key the centre may already have been told about).
pub fn start(private_key: &Path) -> Result<Started, KeyError> {
    let (next, next_pub) = (pending_path(private_key), pending_public_path(private_key));
    if let Some(pending) = read_pending(private_key) {
        let key = pending?;
        if !next_pub.exists() {
            write_new_file(&next_pub, key.public_key().to_spki_pem().as_bytes(), 0o644)?;
        }
        return Ok(Started {
            key_id: key.key_id(),
            public_key: next_pub,
            already_pending: true,
        });
    }
    let key = SigningKey::generate();
    let _ = std::fs::remove_file(&next_pub);
    write_new_file(&next_pub, key.public_key().to_spki_pem().as_bytes(), 0o644)?;
    // The private key last, whole (a new file renamed into place), with the key file's owner,
    // group and mode, so that the agent's service user reads it as it reads its key: its
    // presence is what starts the rotation.
    let tmp = with_suffix(private_key, ".next.tmp");
    let _ = std::fs::remove_file(&tmp);
    #[cfg(unix)]
    let (mode, owner) = {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        match std::fs::metadata(private_key) {
            Ok(meta) => (
                meta.permissions().mode() & 0o640,
                Some((meta.uid(), meta.gid())),
            ),
            Err(_) => (0o600, None),
        }
    };
    #[cfg(not(unix))]
    let (mode, owner) = (0o600, None::<(u32, u32)>);
    write_new_file(&tmp, key.to_pkcs8_pem().as_bytes(), mode.max(0o600))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode.max(0o600)));
    }
    #[cfg(unix)]
    if let Some((uid, gid)) = owner {
        // As root, the file goes to the key's owner; as the owner, this changes nothing.
        let _ = std::os::unix::fs::chown(&tmp, Some(uid), Some(gid));
    }
    std::fs::rename(&tmp, &next).map_err(|source| KeyError::Write {
        path: next.clone(),
        source,
    })?;
    Ok(Started {
        key_id: key.key_id(),
        public_key: next_pub,
        already_pending: false,
    })
}

/// Makes the pending key the agent's: the old key file is copied to `.previous`, then the
/// pending file is renamed over the key file (one atomic step: a crash leaves either key, never
/// none), and `cell` signs with the new key from now on.
pub fn switch(private_key: &Path, pending: Arc<SigningKey>, cell: &KeyCell) -> std::io::Result<()> {
    let previous = previous_path(private_key);
    std::fs::copy(private_key, &previous)?;
    std::fs::File::open(&previous)?.sync_all()?;
    std::fs::rename(pending_path(private_key), private_key)?;
    if let Some(dir) = private_key.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    let _ = std::fs::remove_file(pending_public_path(private_key));
    cell.replace(pending);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rotation_is_started_once_and_switched_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let old = SigningKey::generate();
        let key_file = dir.path().join("agent.key");
        std::fs::write(&key_file, old.to_pkcs8_pem()).unwrap();
        assert!(read_pending(&key_file).is_none());
        let started = start(&key_file).unwrap();
        assert!(!started.already_pending);
        let again = start(&key_file).unwrap();
        assert!(again.already_pending);
        assert_eq!(
            again.key_id, started.key_id,
            "a second run keeps the pending key"
        );
        let old_id = old.key_id();
        let cell = KeyCell::new(old);
        let clone = cell.clone();
        let pending = read_pending(&key_file).unwrap().unwrap();
        switch(&key_file, Arc::new(pending), &cell).unwrap();
        assert_eq!(
            clone.current().key_id(),
            started.key_id,
            "every clone sees it"
        );
        assert_eq!(
            SigningKey::read_pkcs8_pem_file(&key_file).unwrap().key_id(),
            started.key_id
        );
        assert_eq!(
            SigningKey::read_pkcs8_pem_file(&previous_path(&key_file))
                .unwrap()
                .key_id(),
            old_id
        );
        assert!(read_pending(&key_file).is_none());
        assert!(!pending_public_path(&key_file).exists());
    }
}
