//! How the agent reaches its receiver: the address, TLS (the receiver's CA,
//! the name its certificate must carry) and the machine's credential, which
//! goes with every request.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use lifeline_core::credential::{Credential, BEARER};
use lifeline_proto::v1::replication_client::ReplicationClient;
use lifeline_proto::MAX_MESSAGE;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::config::AgentConfig;

#[derive(Clone)]
pub struct Remote {
    endpoint: String,
    tls: ClientTlsConfig,
    authorization: MetadataValue<Ascii>,
    machine: String,
}

impl Remote {
    /// From the agent's configuration: `receiver` (an `https://` URL),
    /// `token_file`, `ca`, `tls_name`.
    pub fn from_config(cfg: &AgentConfig) -> anyhow::Result<Remote> {
        let endpoint = cfg.receiver();
        if !endpoint.starts_with("https://") {
            anyhow::bail!(
                "receiver address {endpoint} must start with https:// (the receiver only speaks TLS)"
            );
        }
        let Some(token_file) = &cfg.token_file else {
            anyhow::bail!(
                "no credential: give --token-file FILE (`lifeline-receiver machine add NAME` on the receiver writes it)"
            );
        };
        let cred = read_credential(token_file)?;
        if let Some(m) = &cfg.machine {
            if m != cred.machine() {
                anyhow::bail!(
                    "--machine {m} but the credential in {} is machine {}'s; drop --machine or use that machine's credential",
                    token_file.display(),
                    cred.machine()
                );
            }
        }
        let Some(ca) = &cfg.ca else {
            anyhow::bail!("no --ca: give the receiver's CA certificate (ca.crt, written by `lifeline-receiver machine add`)");
        };
        let pem = std::fs::read_to_string(ca)
            .with_context(|| format!("cannot read the receiver's CA certificate {}", ca.display()))?;
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(pem))
            .domain_name(cfg.tls_name.clone().unwrap_or_else(|| "lifeline-receiver".into()));
        let authorization = format!("{BEARER}{}", cred.token()).parse().context("credential is not ASCII")?;
        Ok(Remote { endpoint, tls, authorization, machine: cred.machine().to_owned() })
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The machine the credential is for.
    pub fn machine(&self) -> &str {
        &self.machine
    }

    /// Opens a connection (TLS handshake included).
    pub async fn connect(&self) -> anyhow::Result<ReplicationClient<Channel>> {
        let channel = Endpoint::from_shared(self.endpoint.clone())?
            .tls_config(self.tls.clone())?
            .connect_timeout(Duration::from_secs(2))
            .initial_stream_window_size(Some(lifeline_proto::STREAM_WINDOW))
            .initial_connection_window_size(Some(lifeline_proto::CONNECTION_WINDOW))
            .tcp_nodelay(true)
            // A link that went dead is noticed within 5 s (an HTTP/2 ping
            // unanswered for 3 s), instead of TCP's minutes of retries; the
            // agent then reconnects as soon as the link is back.
            .http2_keep_alive_interval(Duration::from_secs(2))
            .keep_alive_timeout(Duration::from_secs(3))
            .keep_alive_while_idle(true)
            .connect()
            .await
            .map_err(|e| anyhow::anyhow!("{}", error_chain(&e)))?;
        Ok(ReplicationClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE))
    }

    /// Attaches the machine's credential to a request.
    pub fn identify<T>(&self, req: &mut tonic::Request<T>) {
        req.metadata_mut().insert("authorization", self.authorization.clone());
    }
}

fn read_credential(path: &Path) -> anyhow::Result<Credential> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read the credential {}", path.display()))?;
    Credential::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// tonic's transport errors say "transport error" and hide the cause (a
/// certificate the CA did not sign, a refused connection) in their sources.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
