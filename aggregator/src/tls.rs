//! The process's one rustls crypto provider (ring), for clients that take the process default.

/// Installs ring as the process-wide rustls provider; a second call is harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
