//! How a local client (the `lifeline-agent` CLI, the tray GUI) reaches the
//! agent's control socket: gRPC over a Unix socket. Lives here, not in the
//! agent, so that the GUI depends only on the protocol crate.

use std::path::Path;

use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::control::v1::agent_control_client::AgentControlClient;

/// A client of the control socket at `path`. The error says what to do
/// (start the agent, or pass the right socket), since its callers show it
/// to a person.
pub async fn client(path: &Path) -> anyhow::Result<AgentControlClient<Channel>> {
    let path = path.to_path_buf();
    let shown = path.display().to_string();
    // The URI is a placeholder: the connector below ignores it and dials the
    // socket (HTTP/2 still needs an authority).
    let channel = Endpoint::from_static("http://agent.control")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot reach the agent's control socket {shown}: {e} (is lifeline-agent running? \
                 pass --control if it uses another socket)"
            )
        })?;
    Ok(AgentControlClient::new(channel))
}
