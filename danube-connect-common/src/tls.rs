//! TLS set-up shared by the runtime and the development broker.

/// Makes rustls' `ring` provider the process-wide default, unless a default is already set.
///
/// Libraries that build TLS configs without naming a provider (tonic's client and server TLS,
/// so `danube-client` and the dev broker) ask rustls for the process default. rustls can pick
/// one by itself only when exactly one of its `ring` / `aws-lc-rs` features is enabled; in a
/// binary or test that links crates enabling both, it panics instead. Calling this before
/// TLS is configured avoids that. Calling it again is harmless.
pub fn install_default_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Another thread may have installed one meanwhile; either way a default now exists.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_default_provider_exists_afterwards_and_a_second_call_is_harmless() {
        install_default_crypto_provider();
        install_default_crypto_provider();
        assert!(rustls::crypto::CryptoProvider::get_default().is_some());
    }
}
