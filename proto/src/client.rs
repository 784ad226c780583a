//! How a machine reaches its receiver: the address, TLS (the receiver's CA
//! and the name its certificate carries) and the machine's credential, which
//! goes with every request. Shared by the agent's replication and the imaging
//! client.

use std::path::Path;
use std::time::Duration;

use lifeline_core::credential::{Credential, BEARER};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

/// Where and how to connect; cheap to clone.
#[derive(Clone)]
pub struct Connection {
    endpoint: String,
    tls: ClientTlsConfig,
    authorization: MetadataValue<Ascii>,
    machine: String,
}

/// The certificate name the receiver's own CA issues (`lifeline-receiver`
/// unless it was started with another `--tls-name`).
pub const DEFAULT_TLS_NAME: &str = "lifeline-receiver";

impl Connection {
    /// From files: the credential `token_file` (written by `lifeline-receiver
    /// machine add`) and the receiver's CA certificate `ca`. Errors say which
    /// file is wrong and what to do.
    pub fn from_files(
        endpoint: &str,
        token_file: &Path,
        ca: &Path,
        tls_name: Option<&str>,
    ) -> Result<Connection, String> {
        if !endpoint.starts_with("https://") {
            return Err(format!("receiver address {endpoint} must start with https:// (the receiver only speaks TLS)"));
        }
        let text = std::fs::read_to_string(token_file)
            .map_err(|e| format!("cannot read the credential {}: {e}", token_file.display()))?;
        let cred = Credential::parse(&text).map_err(|e| format!("{}: {e}", token_file.display()))?;
        let pem = std::fs::read_to_string(ca)
            .map_err(|e| format!("cannot read the receiver's CA certificate {}: {e}", ca.display()))?;
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(pem))
            .domain_name(tls_name.unwrap_or(DEFAULT_TLS_NAME));
        let authorization =
            format!("{BEARER}{}", cred.token()).parse().map_err(|_| "credential is not ASCII".to_string())?;
        Ok(Connection { endpoint: endpoint.to_string(), tls, authorization, machine: cred.machine().to_string() })
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The machine the credential is for.
    pub fn machine(&self) -> &str {
        &self.machine
    }

    /// Open a channel (TLS handshake included).
    pub async fn channel(&self) -> Result<Channel, String> {
        Endpoint::from_shared(self.endpoint.clone())
            .and_then(|e| e.tls_config(self.tls.clone()))
            .map_err(|e| error_chain(&e))?
            .connect_timeout(Duration::from_secs(2))
            .initial_stream_window_size(Some(crate::STREAM_WINDOW))
            .initial_connection_window_size(Some(crate::CONNECTION_WINDOW))
            .tcp_nodelay(true)
            // A link that went dead is noticed within 5 s (an HTTP/2 ping
            // unanswered for 3 s), instead of TCP's minutes of retries.
            .http2_keep_alive_interval(Duration::from_secs(2))
            .keep_alive_timeout(Duration::from_secs(3))
            .keep_alive_while_idle(true)
            .connect()
            .await
            .map_err(|e| format!("cannot reach the receiver at {}: {}", self.endpoint, error_chain(&e)))
    }

    /// Attach the machine's credential to a request.
    pub fn identify<T>(&self, req: &mut tonic::Request<T>) {
        req.metadata_mut().insert("authorization", self.authorization.clone());
    }

    /// A request carrying the credential.
    pub fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        self.identify(&mut r);
        r
    }
}

/// tonic's transport errors say "transport error" and hide the cause (a
/// certificate the CA did not sign, a refused connection) in their sources.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
