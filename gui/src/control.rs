//! The GUI's only link to the agent: its control socket. No root needed here;
//! the socket's owner and mode decide who may switch backup off.

use std::path::{Path, PathBuf};
use std::time::Duration;

use lifeline_proto::control::v1::agent_control_client::AgentControlClient;
use lifeline_proto::control::v1::{
    AgentStatus, DeletedFile, RecentDeletionsRequest, RestoreDeletedRequest, SetCaptureRequest, SetPausedRequest,
    StatusRequest, SyncRequest,
};
use tonic::transport::Channel;

use crate::state::Action;

/// A call that takes longer than this means a stuck agent; the GUI must not
/// freeze waiting for it.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// A restore streams a file back from the receiver: longer.
const RESTORE_TIMEOUT: Duration = Duration::from_secs(120);

/// A connection to the control socket, made on first use and dropped on any
/// error, so an agent restarted meanwhile is found again on the next poll.
pub struct Agent {
    socket: PathBuf,
    client: Option<AgentControlClient<Channel>>,
}

impl Agent {
    pub fn new(socket: &Path) -> Agent {
        Agent { socket: socket.to_path_buf(), client: None }
    }

    /// The agent's status, or why it cannot be had (said for a person).
    pub async fn status(&mut self) -> Result<AgentStatus, String> {
        self.call(|mut c| async move { c.status(StatusRequest {}).await }).await
    }

    /// Carries out a menu action that needs the agent; returns the status it
    /// answers with. (OpenWindow and Quit are the caller's.)
    pub async fn act(&mut self, action: Action) -> Result<AgentStatus, String> {
        match action {
            Action::SetBackup(enabled) => {
                self.call(move |mut c| async move { c.set_capture(SetCaptureRequest { enabled }).await }).await
            }
            Action::SetPaused(paused) => {
                self.call(move |mut c| async move { c.set_paused(SetPausedRequest { paused }).await }).await
            }
            Action::SyncNow => self.call(|mut c| async move { c.sync(SyncRequest {}).await }).await,
            Action::OpenWindow | Action::Quit => self.status().await,
        }
    }

    /// Files removed lately that the receiver keeps, newest first (the
    /// agent asks the receiver).
    pub async fn recent_deletions(&mut self, limit: u32) -> Result<Vec<DeletedFile>, String> {
        let found = self.call(move |mut c| async move { c.recent_deletions(RecentDeletionsRequest { limit }).await });
        found.await.map(|d| d.files)
    }

    /// Brings `file` back under a new name next to where it was; answers
    /// where.
    pub async fn restore_deleted(&mut self, file: &DeletedFile) -> Result<String, String> {
        let req = RestoreDeletedRequest { raw_path: file.raw_path.clone(), removed_ns: file.removed_ns };
        let restored = self.call_for(RESTORE_TIMEOUT, move |mut c| async move { c.restore_deleted(req).await });
        restored.await.map(|r| r.restored_to)
    }

    async fn call<T, F, Fut>(&mut self, f: F) -> Result<T, String>
    where
        F: FnOnce(AgentControlClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.call_for(CALL_TIMEOUT, f).await
    }

    async fn call_for<T, F, Fut>(&mut self, timeout: Duration, f: F) -> Result<T, String>
    where
        F: FnOnce(AgentControlClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let client = match &self.client {
            Some(c) => c.clone(),
            None => {
                let c = tokio::time::timeout(CALL_TIMEOUT, lifeline_proto::control_client::client(&self.socket))
                    .await
                    .map_err(|_| format!("the agent's control socket {} does not answer", self.socket.display()))?
                    .map_err(|e| format!("{e:#}"))?;
                self.client = Some(c.clone());
                c
            }
        };
        let result = tokio::time::timeout(timeout, f(client)).await;
        match result {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(status)) => {
                // A refusal (e.g. no eBPF to switch) leaves the connection
                // fine; anything else may be a dead agent: reconnect next time.
                if status.code() != tonic::Code::FailedPrecondition {
                    self.client = None;
                }
                Err(status.message().to_string())
            }
            Err(_) => {
                self.client = None;
                Err(format!("the agent did not answer within {timeout:?}"))
            }
        }
    }
}
