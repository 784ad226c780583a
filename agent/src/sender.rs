//! The network backup unit: streams the scheduler's batches to the receiver
//! over gRPC and accounts for the acknowledgements. On any connection loss it
//! reconnects with backoff and asks for a reconciliation, which re-sends
//! whatever the receiver did not get.

use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lifeline_proto::v1::replication_client::ReplicationClient;
use lifeline_proto::{MACHINE_HEADER, MAX_MESSAGE};
use tokio::sync::{mpsc, Notify};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tracing::{info, warn};

use crate::scheduler::dispatch::OutBatch;
use crate::status::Shared;

pub async fn connect(endpoint: &str) -> anyhow::Result<ReplicationClient<Channel>> {
    let channel = Endpoint::from_shared(endpoint.to_string())?
        .connect_timeout(Duration::from_secs(3))
        .initial_stream_window_size(Some(lifeline_proto::STREAM_WINDOW))
        .initial_connection_window_size(Some(lifeline_proto::CONNECTION_WINDOW))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(10))
        .connect()
        .await?;
    Ok(ReplicationClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE))
}

/// Attaches the machine's identity to a request.
pub fn identify<T>(req: &mut tonic::Request<T>, machine: &str) -> anyhow::Result<()> {
    req.metadata_mut().insert(MACHINE_HEADER, machine.parse()?);
    Ok(())
}

struct InFlight {
    last_seq: u64,
    oldest: Instant,
    ops: u64,
}

/// Runs forever: connect, stream, and on failure start over.
pub async fn run(
    endpoint: String,
    machine: String,
    mut batches: mpsc::Receiver<OutBatch>,
    shared: Arc<Shared>,
    reconcile: Arc<Notify>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match stream(&endpoint, &machine, &mut batches, &shared, &reconcile).await {
            Ok(()) => return, // the scheduler is gone: shutting down
            Err(e) => {
                let was = shared.connected.swap(false, Relaxed);
                shared.unacked_ops.store(0, Relaxed);
                shared.oldest_unacked_ms.store(u64::MAX, Relaxed);
                let msg = format!(
                    "receiver {endpoint} unreachable or the stream broke: {e:#}; retrying (check that \
                     lifeline-receiver runs and the address is right)"
                );
                if was {
                    warn!("{msg}");
                }
                shared.set_error(msg);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

async fn stream(
    endpoint: &str,
    machine: &str,
    batches: &mut mpsc::Receiver<OutBatch>,
    shared: &Shared,
    reconcile: &Notify,
) -> anyhow::Result<()> {
    let mut client = connect(endpoint).await?;
    let (tx, rx) = mpsc::channel(2);
    let mut req = tonic::Request::new(ReceiverStream::new(rx));
    identify(&mut req, machine)?;
    let mut acks = client.replicate(req).await?.into_inner();
    info!("connected to receiver {endpoint} as machine {machine}");
    shared.connected.store(true, Relaxed);
    // Whatever was in flight on a previous connection may be lost: reconcile.
    reconcile.notify_one();
    let mut inflight: VecDeque<InFlight> = VecDeque::new();
    let mut batches_open = true;
    loop {
        tokio::select! {
            b = batches.recv(), if batches_open => {
                let Some(b) = b else {
                    batches_open = false;
                    if inflight.is_empty() { return Ok(()); }
                    continue;
                };
                let ops = b.batch.ops.len() as u64;
                shared.ops_sent.fetch_add(ops, Relaxed);
                shared.bytes_sent.fetch_add(b.bytes, Relaxed);
                shared.unacked_ops.fetch_add(ops, Relaxed);
                if inflight.is_empty() {
                    shared.oldest_unacked_ms.store(shared.ms(b.oldest), Relaxed);
                }
                inflight.push_back(InFlight { last_seq: b.last_seq, oldest: b.oldest, ops });
                tx.send(b.batch).await.map_err(|_| anyhow::anyhow!("request stream closed"))?;
            }
            ack = acks.message() => {
                let Some(ack) = ack? else { anyhow::bail!("receiver closed the stream") };
                for e in &ack.errors {
                    let msg = format!(
                        "receiver could not apply op {} on {}: {}",
                        e.seq,
                        String::from_utf8_lossy(&e.path),
                        e.message
                    );
                    warn!("{msg}");
                    shared.set_error(msg);
                }
                shared.acked_seq.store(ack.applied_seq, Relaxed);
                while inflight.front().is_some_and(|f| f.last_seq <= ack.applied_seq) {
                    let f = inflight.pop_front().expect("checked");
                    shared.unacked_ops.fetch_sub(f.ops.min(shared.unacked_ops.load(Relaxed)), Relaxed);
                }
                let oldest = inflight.iter().map(|f| f.oldest).min();
                shared.oldest_unacked_ms.store(oldest.map_or(u64::MAX, |t| shared.ms(t)), Relaxed);
                if !batches_open && inflight.is_empty() {
                    return Ok(());
                }
            }
        }
    }
}
