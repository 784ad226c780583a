//! Signatures for reconciliation's deltas: where the ranges that changed
//! are unknown (the agent was off, capture was switched off, kernel events
//! were lost) and the receiver holds an older copy of a file, the dispatcher
//! hands the sender a delta job (`scheduler::dispatcher::DeltaJob`); the
//! sender fetches the signature of the mirror's copy (`GetSignature`) here
//! and the job sends an rsync-style delta against it (`FileDelta` ops)
//! instead of the whole file; see `receiver/mirror/src/delta.rs`.
//!
//! The fetch runs on the agent's runtime, never on the scheduler's thread:
//! the scheduler keeps taking in changes while the receiver hashes its copy
//! (about a second per GiB). The sender sends nothing else meanwhile, so ops
//! still leave in the order the coalescer produced them, each delta's pieces
//! in a row.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use lifeline_delta::{Signature, MAX_BLOCK_LEN, MAX_STRONG_LEN, MIN_BLOCK_LEN, MIN_STRONG_LEN};
use lifeline_proto::v1::replication_client::ReplicationClient;
use lifeline_proto::v1::SignatureRequest;
use prost::Message;
use tonic::transport::Channel;

use crate::remote::Remote;
use crate::scheduler::dispatcher::BaseSignature;
use crate::status::Counters;

/// Longest wait for the next message of a signature (the receiver sends
/// one at least every 64 MiB it hashes).
const MESSAGE_TIMEOUT: Duration = Duration::from_secs(60);

/// Largest signature accepted: 20 bytes per block, so 1 TiB in 256 KiB blocks
/// is 80 MiB. A receiver claiming more is not believed.
const MAX_SIGNATURE: u64 = 512 << 20;

/// Fetches signatures, keeping one connection for all of them (cheap to
/// clone: the clones share it).
#[derive(Clone)]
pub struct Signatures {
    remote: Remote,
    counters: Arc<Counters>,
    client: Arc<Mutex<Option<ReplicationClient<Channel>>>>,
}

impl Signatures {
    pub fn new(remote: Remote, counters: Arc<Counters>) -> Signatures {
        Signatures { remote, counters, client: Arc::default() }
    }

    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }

    /// The signature of the mirror's file at wire path `wire`.
    pub async fn fetch(&self, wire: &[u8]) -> anyhow::Result<BaseSignature> {
        let r = self.fetch_once(wire).await;
        if r.is_err() {
            // A broken connection is not reused; a refusal costs one reconnect.
            *self.client.lock().unwrap() = None;
        }
        r
    }

    async fn fetch_once(&self, wire: &[u8]) -> anyhow::Result<BaseSignature> {
        let client = self.client.lock().unwrap().clone();
        let mut client = match client {
            Some(c) => c,
            None => {
                let c = self.remote.connect().await?;
                *self.client.lock().unwrap() = Some(c.clone());
                c
            }
        };
        let mut req = tonic::Request::new(SignatureRequest { path: wire.to_vec(), block_len: 0, strong_len: 0 });
        self.remote.identify(&mut req);
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
