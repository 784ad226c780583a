//! What the receiver does for the console at start: its TLS acceptor from
//! the receiver's identity, and the first provider admin of a store that has
//! no user yet.

use std::sync::Arc;

use anyhow::Context;
use lifeline_store::db::console::Role;
use lifeline_store::private::write_private;
use lifeline_store::{Db, StoreLayout};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// The login of the first provider admin.
pub const FIRST_LOGIN: &str = "admin";

/// HTTPS with the receiver's certificate (PEM), HTTP/1.1 only.
pub fn tls_acceptor(cert_pem: &str, key_pem: &str) -> anyhow::Result<TlsAcceptor> {
    let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("the console's certificate is not PEM")?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).context("the console's private key is not PEM")?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the console's certificate and key do not go together")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Where the first admin's password is kept for the operator (readable by
/// root only) until it is changed.
pub fn first_login_file(store: &StoreLayout) -> std::path::PathBuf {
    store.root().join("console-first-login")
}

/// Makes the first provider admin when the store has no console user, with
/// a random password written to [`first_login_file`]: its login and
/// password, to tell the operator. `None`: there were users already.
pub fn first_admin(store: &StoreLayout) -> anyhow::Result<Option<(String, String)>> {
    let mut db = Db::open(store.root())?;
    if db.user_count()? > 0 {
        return Ok(None);
    }
    let password = readable_password();
    db.add_user(FIRST_LOGIN, &password, None, Role::ProviderAdmin, "receiver start")?;
    write_private(
        &first_login_file(store),
        &format!("login: {FIRST_LOGIN}\npassword: {password}\n(change it under Account; this file goes then)\n"),
    )?;
    Ok(Some((FIRST_LOGIN.to_string(), password)))
}

/// 20 characters from an alphabet without look-alikes: about 110 bits.
pub fn readable_password() -> String {
    const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyzABCDEFGHJKMNPQRSTUVWXYZ23456789";
    let mut raw = [0u8; 20];
    getrandom::fill(&mut raw).expect("the kernel's random source failed");
    raw.iter().map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char).collect()
}
