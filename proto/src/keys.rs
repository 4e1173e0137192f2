//! Ed25519 keys and key ids.
//!
//! Private keys are PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`) and public keys SPKI PEM
//! (`-----BEGIN PUBLIC KEY-----`): exactly what `openssl genpkey -algorithm ed25519` and
//! `openssl pkey -pubout` write, so operators can make keys with the tools they already trust.
//! The key id is the SHA-256 of the 32-byte raw public key; it names a key on the wire and in the
//! aggregator's registry without revealing anything a public key does not.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, KeypairBytes,
};
use ed25519_dalek::{Signer, VerifyingKey};
use sha2::{Digest, Sha256};

/// Length of a key id in bytes.
pub const KEY_ID_LEN: usize = 32;

/// File names `write_keypair` uses inside its output directory.
pub const PRIVATE_KEY_FILE: &str = "signing.key";
pub const PUBLIC_KEY_FILE: &str = "signing.pub";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("not a PKCS#8 PEM Ed25519 private key: {0}")]
    BadPrivateKey(String),
    #[error("not an SPKI PEM Ed25519 public key: {0}")]
    BadPublicKey(String),
    #[error("{path}: {message}")]
    BadFile { path: PathBuf, message: String },
    #[error("public key is a small-order (weak) point and can never sign verifiably")]
    WeakPublicKey,
    #[error("key id must be {KEY_ID_LEN} bytes (64 hex digits), got {0}")]
    BadKeyId(String),
    #[error("failed to read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("refusing to overwrite existing {0}")]
    AlreadyExists(PathBuf),
    #[error("failed to write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// SHA-256 of a raw 32-byte Ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub [u8; KEY_ID_LEN]);

impl KeyId {
    pub fn of_raw_public_key(raw: &[u8; 32]) -> Self {
        KeyId(Sha256::digest(raw).into())
    }

    pub fn from_slice(bytes: &[u8]) -> Result<Self, KeyError> {
        <[u8; KEY_ID_LEN]>::try_from(bytes)
            .map(KeyId)
            .map_err(|_| KeyError::BadKeyId(format!("{} bytes", bytes.len())))
    }

    pub fn from_hex(text: &str) -> Result<Self, KeyError> {
        let bytes = hex::decode(text.trim()).map_err(|e| KeyError::BadKeyId(e.to_string()))?;
        Self::from_slice(&bytes)
    }

    pub fn as_bytes(&self) -> &[u8; KEY_ID_LEN] {
        &self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// An Ed25519 public key that is safe to verify with: small-order points are refused on load.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    key: VerifyingKey,
    id: KeyId,
}

impl PublicKey {
    pub fn from_raw(raw: &[u8; 32]) -> Result<Self, KeyError> {
        let key =
            VerifyingKey::from_bytes(raw).map_err(|e| KeyError::BadPublicKey(e.to_string()))?;
        if key.is_weak() {
            return Err(KeyError::WeakPublicKey);
        }
        Ok(PublicKey {
            key,
            id: KeyId::of_raw_public_key(raw),
        })
    }

    pub fn from_spki_pem(pem: &str) -> Result<Self, KeyError> {
        let key = VerifyingKey::from_public_key_pem(pem.trim())
            .map_err(|e| KeyError::BadPublicKey(e.to_string()))?;
        Self::from_raw(key.as_bytes())
    }

    pub fn read_spki_pem_file(path: &Path) -> Result<Self, KeyError> {
        let text = read_to_string(path)?;
        Self::from_spki_pem(&text).map_err(|error| KeyError::BadFile {
            path: path.to_owned(),
            message: explain_pem(&text, "PUBLIC KEY").unwrap_or_else(|| error.to_string()),
        })
    }

    pub fn to_spki_pem(&self) -> String {
        self.key
            .to_public_key_pem(LineEnding::LF)
            .expect("encoding an ed25519 public key cannot fail")
    }

    pub fn raw(&self) -> &[u8; 32] {
        self.key.as_bytes()
    }

    pub fn key_id(&self) -> KeyId {
        self.id
    }

    pub(crate) fn verifying_key(&self) -> &VerifyingKey {
        &self.key
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.id)
    }
}

/// An Ed25519 signing key with its public half and key id.
pub struct SigningKey {
    key: ed25519_dalek::SigningKey,
    public: PublicKey,
}

impl SigningKey {
    pub fn generate() -> Self {
        Self::from_seed(&rand::random())
    }

    /// A key from 32 seed bytes: for test vectors and reproducible demos only.
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        Self::from_dalek(ed25519_dalek::SigningKey::from_bytes(seed))
    }

    fn from_dalek(key: ed25519_dalek::SigningKey) -> Self {
        let verifying = key.verifying_key();
        let public = PublicKey {
            key: verifying,
            id: KeyId::of_raw_public_key(verifying.as_bytes()),
        };
        SigningKey { key, public }
    }

    pub fn from_pkcs8_pem(pem: &str) -> Result<Self, KeyError> {
        let key = ed25519_dalek::SigningKey::from_pkcs8_pem(pem.trim())
            .map_err(|e| KeyError::BadPrivateKey(e.to_string()))?;
        Ok(Self::from_dalek(key))
    }

    pub fn read_pkcs8_pem_file(path: &Path) -> Result<Self, KeyError> {
        let text = read_to_string(path)?;
        Self::from_pkcs8_pem(&text).map_err(|error| KeyError::BadFile {
            path: path.to_owned(),
            message: explain_pem(&text, "PRIVATE KEY").unwrap_or_else(|| error.to_string()),
        })
    }

    /// PKCS#8 v1 PEM (the private key only), the form `openssl genpkey` writes. ed25519-dalek's
    /// own encoder writes v2 with the public key attached, which OpenSSL 3.0 cannot read.
    pub fn to_pkcs8_pem(&self) -> String {
        let v1 = KeypairBytes {
            secret_key: self.key.to_bytes(),
            public_key: None,
        };
        v1.to_pkcs8_pem(LineEnding::LF)
            .expect("encoding an ed25519 private key cannot fail")
            .to_string()
    }

    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }

    pub fn key_id(&self) -> KeyId {
        self.public.id
    }

    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.key.sign(message).to_bytes()
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey({})", self.public.id)
    }
}

fn read_to_string(path: &Path) -> Result<String, KeyError> {
    let bytes = std::fs::read(path).map_err(|source| KeyError::Read {
        path: path.to_owned(),
        source,
    })?;
    String::from_utf8(bytes).map_err(|_| KeyError::BadFile {
        path: path.to_owned(),
        message: "not a text PEM file (a binary DER key? convert it with `openssl pkey -inform DER -in FILE`)".into(),
    })
}

/// What an algorithm identifier names, for messages.
fn algorithm_name(oid: &str) -> &'static str {
    match oid {
        "1.3.101.112" => "Ed25519",
        "1.3.101.113" => "Ed448",
        "1.3.101.110" => "X25519",
        "1.2.840.113549.1.1.1" => "RSA",
        "1.2.840.10045.2.1" => "EC (ECDSA)",
        _ => "an unknown algorithm",
    }
}

/// Says why `text` is not the Ed25519 key `want` names ("PUBLIC KEY" or "PRIVATE KEY"), when
/// it can tell: not PEM at all, another kind of PEM block, or a key of another algorithm.
fn explain_pem(text: &str, want: &str) -> Option<String> {
    use ed25519_dalek::pkcs8::spki::der::pem;
    let hint = if want == "PUBLIC KEY" {
        "an Ed25519 public key (-----BEGIN PUBLIC KEY-----), as `duban-agent keygen` writes in signing.pub"
    } else {
        "an Ed25519 private key (-----BEGIN PRIVATE KEY-----), as `duban-agent keygen` writes in signing.key"
    };
    let Some(start) = text.find("-----BEGIN ") else {
        return Some(format!(
            "not a PEM file (it has no -----BEGIN line); expected {hint}"
        ));
    };
    let (label, der) = match pem::decode_vec(text[start..].trim().as_bytes()) {
        Ok(decoded) => decoded,
        Err(error) => return Some(format!("a damaged PEM block ({error}); expected {hint}")),
    };
    if label != want {
        let what = match label {
            "PRIVATE KEY" | "ENCRYPTED PRIVATE KEY" | "RSA PRIVATE KEY" | "EC PRIVATE KEY" => {
                "a private key"
            }
            "PUBLIC KEY" | "RSA PUBLIC KEY" => "a public key",
            "CERTIFICATE" => "a certificate",
            "CERTIFICATE REQUEST" => "a certificate request",
            _ => "another kind of PEM block",
        };
        return Some(format!(
            "this is {what} (-----BEGIN {label}-----); expected {hint}"
        ));
    }
    let oid = if want == "PUBLIC KEY" {
        ed25519_dalek::pkcs8::spki::SubjectPublicKeyInfoRef::try_from(der.as_slice())
            .ok()?
            .algorithm
            .oid
    } else {
        ed25519_dalek::pkcs8::PrivateKeyInfo::try_from(der.as_slice())
            .ok()?
            .algorithm
            .oid
    };
    let oid = oid.to_string();
    (oid != "1.3.101.112").then(|| {
        format!(
            "this is {} key (algorithm {oid}); duban signs with Ed25519 only: expected {hint}",
            match algorithm_name(&oid) {
                "an unknown algorithm" => "a key of an unknown algorithm".to_owned(),
                name => format!("an {name}"),
            }
        )
    })
}

/// Paths of a key pair written by [`write_keypair`].
#[derive(Debug, Clone)]
pub struct KeyPairFiles {
    pub private_key: PathBuf,
    pub public_key: PathBuf,
    pub key_id: KeyId,
}

/// Writes `key` into `dir` as [`PRIVATE_KEY_FILE`] (mode 0600) and [`PUBLIC_KEY_FILE`], creating
/// `dir` if needed. Refuses to overwrite either file: losing a registered key is worse than an
/// error.
pub fn write_keypair(dir: &Path, key: &SigningKey) -> Result<KeyPairFiles, KeyError> {
    let private_key = dir.join(PRIVATE_KEY_FILE);
    let public_key = dir.join(PUBLIC_KEY_FILE);
    for path in [&private_key, &public_key] {
        if path.exists() {
            return Err(KeyError::AlreadyExists(path.clone()));
        }
    }
    std::fs::create_dir_all(dir).map_err(|source| KeyError::Write {
        path: dir.to_owned(),
        source,
    })?;
    write_new_file(&private_key, key.to_pkcs8_pem().as_bytes(), 0o600)?;
    write_new_file(
        &public_key,
        key.public_key().to_spki_pem().as_bytes(),
        0o644,
    )?;
    Ok(KeyPairFiles {
        private_key,
        public_key,
        key_id: key.key_id(),
    })
}

/// Writes a file that must not exist yet, with `mode` (Unix), and syncs it.
pub fn write_new_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), KeyError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let result = options.open(path).and_then(|mut file| {
        file.write_all(contents)?;
        file.sync_all()
    });
    result.map_err(|source| match source.kind() {
        std::io::ErrorKind::AlreadyExists => KeyError::AlreadyExists(path.to_owned()),
        _ => KeyError::Write {
            path: path.to_owned(),
            source,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_round_trip_keeps_the_key_id() {
        let key = SigningKey::from_seed(&[7; 32]);
        let again = SigningKey::from_pkcs8_pem(&key.to_pkcs8_pem()).unwrap();
        assert_eq!(again.key_id(), key.key_id());
        let public = PublicKey::from_spki_pem(&key.public_key().to_spki_pem()).unwrap();
        assert_eq!(public.key_id(), key.key_id());
        assert_eq!(
            KeyId::from_hex(&key.key_id().to_string()).unwrap(),
            key.key_id()
        );
    }

    const RSA_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQCga+6LQy7RGUU6UKkgsVhwr/f3
9nAYAPvh8qAJ2zPyhOUjkg6F8CsA6Bb6w9enZDNwQ+9eQWKacvyy7sk/g8XQDp1J
8hyCKi3x+NNxWgoi9VYb8LHuSa3jGeFpuWTa0iqqdZxNOoCykbTuAoMA3cy6Xa4X
d78aZr/0ZoODZjfm2QIDAQAB
-----END PUBLIC KEY-----
";
    const EC_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgxw9xoANe1C3k9diH
LJ8T/iOH36GXtgUUYY79QfBYWZKhRANCAAQBEYsUTLPaDgCIeiimTJwivss+ptDT
Ezd0PpwQlJOtTdvvougyC0RHd3F7JzGVdOCH3wFyf8/LtJCuL7jgtPGR
-----END PRIVATE KEY-----
";

    #[test]
    fn a_wrong_key_file_is_explained_in_plain_words() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let key = SigningKey::from_seed(&[5; 32]);
        let cases = [
            (
                write("rsa.pub", RSA_PUBLIC),
                true,
                "this is an RSA key (algorithm 1.2.840.113549.1.1.1); duban signs with Ed25519 only",
            ),
            (
                write("notes.txt", "just some notes\n"),
                true,
                "not a PEM file (it has no -----BEGIN line)",
            ),
            (
                write("signing.key", &key.to_pkcs8_pem()),
                true,
                "this is a private key (-----BEGIN PRIVATE KEY-----)",
            ),
            (
                write("ec.key", EC_PRIVATE),
                false,
                "this is an EC (ECDSA) key (algorithm 1.2.840.10045.2.1)",
            ),
            (
                write("signing.pub", &key.public_key().to_spki_pem()),
                false,
                "this is a public key (-----BEGIN PUBLIC KEY-----)",
            ),
        ];
        for (path, public, expected) in cases {
            let error = if public {
                PublicKey::read_spki_pem_file(&path).unwrap_err()
            } else {
                SigningKey::read_pkcs8_pem_file(&path)
                    .map(|_| ())
                    .unwrap_err()
            }
            .to_string();
            assert!(
                error.starts_with(&format!("{}: {expected}", path.display())),
                "{error}"
            );
        }
        std::fs::write(dir.path().join("der"), [0x30, 0x82, 0xff, 0xfe]).unwrap();
        let error = PublicKey::read_spki_pem_file(&dir.path().join("der"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("not a text PEM file"), "{error}");
    }

    #[test]
    fn key_id_is_sha256_of_raw_public_key() {
        let key = SigningKey::from_seed(&[1; 32]);
        let expected: [u8; 32] = Sha256::digest(key.public_key().raw()).into();
        assert_eq!(key.key_id().0, expected);
    }

    #[test]
    fn write_keypair_sets_mode_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::generate();
        let files = write_keypair(dir.path(), &key).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&files.private_key)
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let loaded = SigningKey::read_pkcs8_pem_file(&files.private_key).unwrap();
        assert_eq!(loaded.key_id(), key.key_id());
        let err = write_keypair(dir.path(), &SigningKey::generate()).unwrap_err();
        assert!(matches!(err, KeyError::AlreadyExists(_)), "{err}");
        // The first key is untouched.
        let still = SigningKey::read_pkcs8_pem_file(&files.private_key).unwrap();
        assert_eq!(still.key_id(), key.key_id());
    }

    #[test]
    fn garbage_is_a_clear_error() {
        let err = SigningKey::from_pkcs8_pem("hello").unwrap_err();
        assert!(err.to_string().contains("PKCS#8"), "{err}");
        let err =
            PublicKey::from_spki_pem("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----")
                .unwrap_err();
        assert!(err.to_string().contains("SPKI"), "{err}");
    }
}
