//! The receiver's TLS identity.
//!
//! Unless given a certificate (`--tls-cert`/`--tls-key`), the receiver makes
//! its own on first start under `<store>/tls/`: a private CA (`ca.crt`, which
//! agents trust with `--ca`, and `ca.key`) and a server certificate signed by
//! it for the names in [`server_names`]. The CA outlives the server
//! certificate: when the receiver is asked to answer to a new name, only the
//! server certificate is made again, and agents keep trusting it.
//!
//! Every server certificate carries the name `lifeline-receiver`, which is
//! what agents check by default, so an agent can reach the receiver by any
//! address (IP, NAT, tunnel) and still verify it.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Context;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

use lifeline_store::private::{create_private_dir_all, write_private, write_public};
use lifeline_store::StoreLayout;

/// The name every generated server certificate carries and agents verify.
pub const DEFAULT_NAME: &str = "lifeline-receiver";

/// PEM files of the identity the server presents.
pub struct Identity {
    pub cert_pem: String,
    pub key_pem: String,
    /// The CA agents must trust, when the receiver made its own.
    pub ca_path: Option<PathBuf>,
}

/// The names a generated server certificate holds: the default one, the
/// host's name, loopback, and `extra`.
pub fn server_names(extra: &[String]) -> Vec<String> {
    let mut names = vec![DEFAULT_NAME.to_string(), "localhost".into(), "127.0.0.1".into(), "::1".into()];
    let host = rustix::system::uname().nodename().to_string_lossy().into_owned();
    names.push(host);
    names.extend(extra.iter().cloned());
    names.sort();
    names.dedup();
    names
}

/// Loads the identity under `<store>/tls/`, making whatever is missing (or a
/// new server certificate when `names` changed).
pub fn load_or_create(store: &StoreLayout, extra_names: &[String]) -> anyhow::Result<Identity> {
    let dir = store.tls_dir();
    create_private_dir_all(&dir)?;
    let (ca_crt, ca_key) = (store.ca_cert(), dir.join("ca.key"));
    let (crt, key, names_file) = (dir.join("receiver.crt"), dir.join("receiver.key"), dir.join("receiver.names"));
    let names = server_names(extra_names);
    let ca_params = ca_params()?;
    let ca_keypair = if ca_key.exists() {
        let pem = fs::read_to_string(&ca_key).with_context(|| format!("reading {}", ca_key.display()))?;
        KeyPair::from_pem(&pem).with_context(|| {
            format!(
                "{} is not a private key; move tls/ away to make a new CA (agents must then get the new ca.crt)",
                ca_key.display()
            )
        })?
    } else {
        let kp = KeyPair::generate()?;
        let cert = ca_params.self_signed(&kp)?;
        write_private(&ca_key, &kp.serialize_pem())?;
        write_public(&ca_crt, &cert.pem())?;
        tracing::info!("made a new certificate authority {} for agents to trust (--ca)", ca_crt.display());
        kp
    };
    let current = fs::read_to_string(&names_file).unwrap_or_default();
    if !(crt.exists() && key.exists() && current == names.join("\n")) {
        let kp = KeyPair::generate()?;
        let mut params = CertificateParams::new(names.clone())?;
        params.distinguished_name.push(DnType::CommonName, DEFAULT_NAME);
        let issuer = Issuer::from_params(&ca_params, &ca_keypair);
        let cert = params.signed_by(&kp, &issuer)?;
        write_private(&key, &kp.serialize_pem())?;
        write_public(&crt, &cert.pem())?;
        write_public(&names_file, &names.join("\n"))?;
        tracing::info!("made the server certificate {} for {}", crt.display(), names.join(", "));
    }
    Ok(Identity { cert_pem: fs::read_to_string(&crt)?, key_pem: fs::read_to_string(&key)?, ca_path: Some(ca_crt) })
}

/// Loads a certificate and key given by the operator.
pub fn load(cert: &Path, key: &Path) -> anyhow::Result<Identity> {
    Ok(Identity {
        cert_pem: fs::read_to_string(cert)
            .with_context(|| format!("cannot read the certificate {}", cert.display()))?,
        key_pem: fs::read_to_string(key).with_context(|| format!("cannot read the private key {}", key.display()))?,
        ca_path: None,
    })
}

impl Identity {
    pub fn server_config(&self) -> tonic::transport::ServerTlsConfig {
        tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(&self.cert_pem, &self.key_pem))
    }
}

/// The CA's parameters (its distinguished name must be the same each time:
/// the server certificate names it as its issuer).
fn ca_params() -> anyhow::Result<CertificateParams> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, "Lifeline receiver CA");
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    Ok(p)
}
