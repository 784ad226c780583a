//! The multi-threaded write pipeline.
//!
//! ```text
//! caller (reader thread) --push(offset, data)--> [bounded queue] --> N workers --> results
//!                                                                    hash, dedup check,
//!                                                                    zstd, encrypt, write
//! ```
//!
//! Reading a disk is sequential and cheap; hashing, compressing and encrypting
//! are the CPU cost, so they run on `threads` workers. The job queue is bounded
//! (`queue` chunks): when workers fall behind, `push` blocks, so the reader
//! never runs ahead and memory stays at about
//! `(queue + 2 × threads + 1) × chunk size` whatever the disk size — 4 MiB
//! chunks, 2 workers, a queue of 4: ~36 MiB. Results (id, offset, length: ~50
//! bytes per chunk) are the only thing that grows with the input, and the
//! caller needs that list for the manifest anyway.
//!
//! A chunk already in the repository is only hashed: no compression, no
//! encryption, no write. That is what makes the second backup of a disk fast.

use std::thread::JoinHandle;

use crossbeam_channel::{bounded, unbounded, Receiver, Sender};

use crate::repo::new_compressor;
use crate::{ChunkId, Repo, RepoError, Result};

/// Pipeline sizing.
#[derive(Clone, Copy, Debug)]
pub struct WriterOptions {
    /// Worker threads (compress + encrypt + write).
    pub threads: usize,
    /// Chunks waiting for a worker before `push` blocks.
    pub queue: usize,
}

impl Default for WriterOptions {
    /// One worker per CPU, two queued chunks per worker.
    fn default() -> Self {
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        WriterOptions {
            threads,
            queue: 2 * threads,
        }
    }
}

/// One chunk as the caller placed it, in input order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkRef {
    /// The caller's offset (e.g. position in the image's data stream).
    pub offset: u64,
    pub len: u64,
    pub id: ChunkId,
}

/// Counters of one pipeline run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteStats {
    /// Chunks pushed.
    pub chunks: u64,
    /// Chunks that were not in the repository and were written.
    pub new_chunks: u64,
    /// Plaintext bytes pushed.
    pub bytes_in: u64,
    /// Plaintext bytes of the new chunks.
    pub bytes_new: u64,
    /// Bytes written to disk (compressed + encrypted + headers).
    pub bytes_stored: u64,
}

struct Job {
    seq: usize,
    offset: u64,
    data: Vec<u8>,
}

type Done = (usize, Result<(ChunkRef, bool, u64)>);

/// Feeds chunks through the pipeline. Push chunks with [`ChunkWriter::push`]
/// from one thread, then call [`ChunkWriter::finish`] for the ids in input
/// order and the statistics.
pub struct ChunkWriter {
    repo: Repo,
    jobs: Option<Sender<Job>>,
    done: Receiver<Done>,
    workers: Vec<JoinHandle<()>>,
    refs: Vec<Option<ChunkRef>>,
    stats: WriteStats,
    error: Option<RepoError>,
    next_seq: usize,
}

impl ChunkWriter {
    pub fn new(repo: &Repo, opts: WriterOptions) -> Result<ChunkWriter> {
        let (jobs, rx) = bounded::<Job>(opts.queue.max(1));
        let (tx, done) = unbounded::<Done>();
        let mut workers = Vec::new();
        for i in 0..opts.threads.max(1) {
            let rx = rx.clone();
            let tx = tx.clone();
            let repo = repo.clone();
            let mut z = new_compressor()?;
            let h = std::thread::Builder::new()
                .name(format!("repo-writer-{i}"))
                .spawn(move || {
                    for job in rx {
                        let id = repo.chunk_id(&job.data);
                        let r = repo.store_chunk(id, &job.data, &mut z).map(|o| {
                            (
                                ChunkRef {
                                    offset: job.offset,
                                    len: job.data.len() as u64,
                                    id,
                                },
                                o.new,
                                o.stored,
                            )
                        });
                        drop(job.data); // free before waiting to send
                        if tx.send((job.seq, r)).is_err() {
                            break;
                        }
                    }
                })
                .map_err(|e| RepoError::Pipeline(format!("cannot start worker: {e}")))?;
            workers.push(h);
        }
        Ok(ChunkWriter {
            repo: repo.clone(),
            jobs: Some(jobs),
            done,
            workers,
            refs: Vec::new(),
            stats: WriteStats::default(),
            error: None,
            next_seq: 0,
        })
    }

    /// Queue a chunk; blocks while the queue is full. Returns the first error a
    /// worker hit so far (the caller should stop reading then).
    pub fn push(&mut self, offset: u64, data: Vec<u8>) -> Result<()> {
        self.collect(false);
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.refs.push(None);
        self.stats.chunks += 1;
        self.stats.bytes_in += data.len() as u64;
        self.jobs
            .as_ref()
            .expect("push after finish")
            .send(Job { seq, offset, data })
            .map_err(|_| RepoError::Pipeline("all workers stopped".into()))
    }

    /// Statistics so far (chunks pushed, and the results collected up to now).
    pub fn stats(&mut self) -> WriteStats {
        self.collect(false);
        self.stats
    }

    fn collect(&mut self, wait: bool) {
        loop {
            let msg = if wait {
                self.done.recv().ok()
            } else {
                self.done.try_recv().ok()
            };
            let Some((seq, r)) = msg else { return };
            match r {
                Ok((cref, new, stored)) => {
                    if new {
                        self.stats.new_chunks += 1;
                        self.stats.bytes_new += cref.len;
                        self.stats.bytes_stored += stored;
                    }
                    self.refs[seq] = Some(cref);
                }
                Err(e) => {
                    if self.error.is_none() {
                        self.error = Some(e);
                    }
                }
            }
        }
    }

    /// Wait for every queued chunk; return the chunks in input order and the
    /// statistics, or the first error.
    pub fn finish(mut self) -> Result<(Vec<ChunkRef>, WriteStats)> {
        self.jobs = None; // workers drain the queue, then stop
        self.collect(true); // returns once every worker has dropped its sender
        for h in self.workers.drain(..) {
            h.join()
                .map_err(|_| RepoError::Pipeline("a worker panicked".into()))?;
        }
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        self.repo.flush()?;
        let refs = std::mem::take(&mut self.refs)
            .into_iter()
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| RepoError::Pipeline("a chunk was lost".into()))?;
        Ok((refs, self.stats))
    }
}

impl Drop for ChunkWriter {
    fn drop(&mut self) {
        self.jobs = None;
        for h in self.workers.drain(..) {
            let _ = h.join();
        }
    }
}
