//! How the agent reaches its receiver: the address, TLS (the receiver's CA,
//! the name its certificate must carry) and the machine's credential, which
//! goes with every request.

use lifeline_proto::client::Connection;
use lifeline_proto::v1::history_client::HistoryClient;
use lifeline_proto::v1::replication_client::ReplicationClient;
use lifeline_proto::MAX_MESSAGE;
use tonic::transport::Channel;

use crate::config::AgentConfig;

#[derive(Clone)]
pub struct Remote {
    conn: Connection,
}

impl Remote {
    /// From the agent's configuration: `receiver` (an `https://` URL),
    /// `token_file`, `ca`, `tls_name`.
    pub fn from_config(cfg: &AgentConfig) -> anyhow::Result<Remote> {
        let endpoint = cfg.receiver();
        let Some(token_file) = &cfg.token_file else {
            anyhow::bail!(
                "no credential: give --token-file FILE (`lifeline-receiver machine add NAME` on the receiver writes it)"
            );
        };
        let Some(ca) = &cfg.ca else {
            anyhow::bail!(
                "no --ca: give the receiver's CA certificate (ca.crt, written by `lifeline-receiver machine add`)"
            );
        };
        let conn =
            Connection::from_files(&endpoint, token_file, ca, cfg.tls_name.as_deref()).map_err(anyhow::Error::msg)?;
        if let Some(m) = &cfg.machine {
            if m != conn.machine() {
                anyhow::bail!(
                    "--machine {m} but the credential in {} is machine {}'s; drop --machine or use that machine's credential",
                    token_file.display(),
                    conn.machine()
                );
            }
        }
        Ok(Remote { conn })
    }

    pub fn endpoint(&self) -> &str {
        self.conn.endpoint()
    }

    /// The machine the credential is for.
    pub fn machine(&self) -> &str {
        self.conn.machine()
    }

    /// Opens a connection (TLS handshake included).
    pub async fn connect(&self) -> anyhow::Result<ReplicationClient<Channel>> {
        let channel = self.conn.channel().await.map_err(anyhow::Error::msg)?;
        Ok(ReplicationClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE))
    }

    /// A connection to the machine's history (read-only).
    pub async fn history(&self) -> anyhow::Result<HistoryClient<Channel>> {
        let channel = self.conn.channel().await.map_err(anyhow::Error::msg)?;
        Ok(HistoryClient::new(channel).max_decoding_message_size(MAX_MESSAGE))
    }

    /// `msg` with the machine's credential.
    pub fn request<T>(&self, msg: T) -> tonic::Request<T> {
        self.conn.request(msg)
    }

    /// Attaches the machine's credential to a request.
    pub fn identify<T>(&self, req: &mut tonic::Request<T>) {
        self.conn.identify(req);
    }
}
