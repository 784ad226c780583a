//! Deltas for reconciliation: where the ranges that changed are unknown (the
//! agent was off, capture was switched off, kernel events were lost) and the
//! receiver holds an older copy of a file, the dispatcher fetches the
//! signature of that copy (`GetSignature`) and sends an rsync-style delta
//! against it (`FileDelta` ops) instead of the whole file; see
//! `dispatcher::BatchBuilder` and `receiver/src/delta.rs`.
//!
//! The dispatcher runs on the scheduler's own thread, which is not a tokio
//! worker: it fetches the signature with `Handle::block_on` on the agent's
//! runtime. That blocks the scheduler for the fetch (the receiver hashes its
//! copy: about a second per GiB), as sending a big file whole blocks it on
//! the network already; changes captured meanwhile wait in the queue's
//! channel, and ops dispatched before are on their way. Keeping the dispatch
//! synchronous keeps its one invariant simple: ops leave in the order the
//! coalescer produced them, each delta's pieces in a row.
//!
//! A delta is worth it from [`DELTA_MIN_SIZE`] bytes: below that the round
//! trip for the signature costs about what the file does.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use lifeline_delta::{Signature, MAX_BLOCK_LEN, MAX_STRONG_LEN, MIN_BLOCK_LEN, MIN_STRONG_LEN};
use lifeline_proto::v1::replication_client::ReplicationClient;
use lifeline_proto::v1::SignatureRequest;
use prost::Message;
use tonic::transport::Channel;

use crate::remote::Remote;
use crate::status::Counters;

/// Files smaller than this are sent whole (see `bench/reconcile.py`).
pub const DELTA_MIN_SIZE: u64 = 256 << 10;

/// Longest wait for the next message of a signature (the receiver sends
/// one at least every 64 MiB it hashes).
const MESSAGE_TIMEOUT: Duration = Duration::from_secs(60);

/// Largest signature accepted: 20 bytes per block, so 1 TiB in 256 KiB blocks
/// is 80 MiB. A receiver claiming more is not believed.
const MAX_SIGNATURE: u64 = 512 << 20;

/// How the dispatcher reaches the receiver for signatures.
#[derive(Clone)]
pub struct DeltaOptions {
    pub remote: Remote,
    /// The agent's runtime, to run the request from the scheduler's thread.
    pub handle: tokio::runtime::Handle,
    /// Files below this size are sent whole.
    pub min_size: u64,
}

impl std::fmt::Debug for DeltaOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeltaOptions")
            .field("receiver", &self.remote.endpoint())
            .field("min_size", &self.min_size)
            .finish()
    }
}

/// The signature of the mirror's copy and the token naming that version.
pub struct BaseSignature {
    pub sig: Signature,
    pub token: Vec<u8>,
}

/// Fetches signatures, keeping one connection for all of them.
pub struct DeltaSource {
    opts: DeltaOptions,
    counters: Arc<Counters>,
    client: Option<ReplicationClient<Channel>>,
}

impl DeltaSource {
    pub fn new(opts: DeltaOptions, counters: Arc<Counters>) -> DeltaSource {
        DeltaSource { opts, counters, client: None }
    }

    pub fn min_size(&self) -> u64 {
        self.opts.min_size
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The signature of the mirror's file at wire path `wire` (blocking).
    pub fn fetch(&mut self, wire: &[u8]) -> anyhow::Result<BaseSignature> {
        let handle = self.opts.handle.clone();
        let r = handle.block_on(self.fetch_async(wire));
        if r.is_err() {
            // A broken connection is not reused; a refusal costs one reconnect.
            self.client = None;
        }
        r
    }

    async fn fetch_async(&mut self, wire: &[u8]) -> anyhow::Result<BaseSignature> {
        if self.client.is_none() {
            self.client = Some(self.opts.remote.connect().await?);
        }
        let mut client = self.client.clone().expect("connected");
        let mut req = tonic::Request::new(SignatureRequest { path: wire.to_vec(), block_len: 0, strong_len: 0 });
        self.opts.remote.identify(&mut req);
        let mut stream = tokio::time::timeout(MESSAGE_TIMEOUT, client.get_signature(req))
            .await
            .context("the receiver did not answer")??
            .into_inner();
        let mut sig: Option<(Signature, u64, Vec<u8>)> = None;
        loop {
            let msg = tokio::time::timeout(MESSAGE_TIMEOUT, stream.message())
                .await
                .context("the receiver stopped sending the signature")??;
            let Some(msg) = msg else { break };
            self.counters.signature_bytes.fetch_add(msg.encoded_len() as u64, Relaxed);
            if sig.is_none() {
                let h = msg.header.as_ref().context("the signature has no header")?;
                if !(MIN_BLOCK_LEN..=MAX_BLOCK_LEN).contains(&h.block_len)
                    || !(MIN_STRONG_LEN as u32..=MAX_STRONG_LEN as u32).contains(&h.strong_len)
                {
                    anyhow::bail!(
                        "the signature's block length {} or hash length {} is out of range",
                        h.block_len,
                        h.strong_len
                    );
                }
                let blocks = Signature::block_count(h.base_len, h.block_len);
                if blocks.saturating_mul(4 + h.strong_len as u64) > MAX_SIGNATURE {
                    anyhow::bail!("a signature of {blocks} blocks is too big to be believed");
                }
                let empty = Signature {
                    block_len: h.block_len,
                    strong_len: h.strong_len as u8,
                    base_len: h.base_len,
                    weak: Vec::with_capacity(blocks as usize),
                    strong: Vec::with_capacity((blocks * h.strong_len as u64) as usize),
                };
                sig = Some((empty, blocks, h.base_token.clone()));
            } else if msg.header.is_some() {
                anyhow::bail!("a second signature header");
            }
            let (s, blocks, _) = sig.as_mut().expect("set above");
            if (s.weak.len() + msg.weak.len()) as u64 > *blocks
                || (s.strong.len() + msg.strong.len()) as u64 > *blocks * s.strong_len as u64
            {
                anyhow::bail!("the signature has more blocks than its base");
            }
            s.weak.extend_from_slice(&msg.weak);
            s.strong.extend_from_slice(&msg.strong);
        }
        let (sig, _, token) = sig.context("the receiver sent no signature")?;
        sig.validate()?;
        Ok(BaseSignature { sig, token })
    }
}
