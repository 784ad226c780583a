//! The multi-threaded write pipeline.
//!
//! ```text
//! caller --push(offset, data)--> batch of consecutive chunks (8 MiB)
//!        --> [bounded queue] --> N workers: hash each chunk, dedup check,
//!            the new ones compressed together as one group, encrypted,
//!            appended to the worker's own open pack (committed when full)
//! ```
//!
//! Reading a disk is sequential and cheap; hashing, compressing and encrypting
//! are the CPU cost, so they run on `threads` workers. Consecutive chunks go
//! to a worker together so that the new ones among them are compressed as one
//! zstd frame (see [`crate::pack::GROUP_BYTES`]); each worker fills a pack of
//! its own, streamed to the store as groups are added, so workers never wait
//! for each other and a pack costs no memory. The job queue is bounded
//! (`queue` batches): when workers fall behind, `push` blocks, so the reader
//! never runs ahead and memory stays at about `queue + 2 × threads + 1`
//! batches (a worker holds its batch and the compressed group) whatever the
//! disk size: 40 MiB with 2 workers and a queue of 2. Results (id, offset, length: ~50 bytes per
//! chunk) are the only thing that grows with the input, and the caller needs
//! that list for the manifest anyway.
//!
//! A chunk already in the repository is only hashed: no compression, no
//! encryption, no write. That is what makes the second backup of a disk fast.

use std::thread::JoinHandle;

use crossbeam_channel::{bounded, unbounded, Receiver, Sender};

use crate::pack::{GROUP_BYTES, GROUP_CHUNKS};
use crate::repo::new_compressor;
use crate::{ChunkId, Repo, RepoError, Result};

/// Pipeline sizing.
#[derive(Clone, Copy, Debug)]
pub struct WriterOptions {
    /// Worker threads (hash + compress + encrypt + write).
    pub threads: usize,
    /// Batches (8 MiB of chunks each) waiting for a worker before `push`
    /// blocks.
    pub queue: usize,
}

impl Default for WriterOptions {
    /// One worker per CPU, one queued batch per worker.
    fn default() -> Self {
        let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        WriterOptions { threads, queue: threads }
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
    /// Bytes added to packs (compressed + encrypted groups; pack indexes and
    /// headers not counted).
    pub bytes_stored: u64,
}

struct Job {
    /// Sequence number of the first chunk.
    seq: usize,
    /// The chunks, one after the other (a group's plaintext when all are new).
    data: Vec<u8>,
    /// Each chunk's offset (the caller's) and length.
    cells: Vec<(u64, usize)>,
}

impl Job {
    fn new(seq: usize) -> Job {
        Job { seq, data: Vec::new(), cells: Vec::new() }
    }
}

type Done = (usize, Result<(Vec<(ChunkRef, bool)>, u64)>);

/// Feeds chunks through the pipeline. Push chunks with [`ChunkWriter::push`]
/// from one thread, then call [`ChunkWriter::finish`] for the ids in input
/// order and the statistics.
pub struct ChunkWriter {
    jobs: Option<Sender<Job>>,
    done: Receiver<Done>,
    /// Each worker ends by committing its last pack.
    workers: Vec<JoinHandle<Result<()>>>,
    batch: Job,
    refs: Vec<Option<ChunkRef>>,
    stats: WriteStats,
    error: Option<RepoError>,
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
                .spawn(move || -> Result<()> {
                    let mut pack = None;
                    for job in rx {
                        let lens: Vec<usize> = job.cells.iter().map(|c| c.1).collect();
                        let r = repo.store_batch(&job.data, &lens, &mut pack, &mut z).map(|(ids, stored)| {
                            let refs = job
                                .cells
                                .iter()
                                .zip(ids)
                                .map(|(&(offset, len), (id, new))| (ChunkRef { offset, len: len as u64, id }, new))
                                .collect();
                            (refs, stored)
                        });
                        drop(job.data); // free before waiting to send
                        if tx.send((job.seq, r)).is_err() {
                            break;
                        }
                    }
                    match pack {
                        Some(p) => repo.commit_pack(p),
                        None => Ok(()),
                    }
                })
                .map_err(|e| RepoError::Pipeline(format!("cannot start worker: {e}")))?;
            workers.push(h);
        }
        Ok(ChunkWriter {
            jobs: Some(jobs),
            done,
            workers,
            batch: Job::new(0),
            refs: Vec::new(),
            stats: WriteStats::default(),
            error: None,
        })
    }

    /// Queue a chunk; blocks while the queue is full. Returns the first error a
    /// worker hit so far (the caller should stop reading then).
    pub fn push(&mut self, offset: u64, data: Vec<u8>) -> Result<()> {
        self.collect(false);
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        self.refs.push(None);
        self.stats.chunks += 1;
        self.stats.bytes_in += data.len() as u64;
        if self.batch.data.is_empty() {
            self.batch.data.reserve(GROUP_BYTES.max(data.len()));
        }
        self.batch.data.extend_from_slice(&data);
        self.batch.cells.push((offset, data.len()));
        if self.batch.data.len() >= GROUP_BYTES || self.batch.cells.len() >= GROUP_CHUNKS {
            self.send_batch()?;
        }
        Ok(())
    }

    fn send_batch(&mut self) -> Result<()> {
        if self.batch.cells.is_empty() {
            return Ok(());
        }
        let job = std::mem::replace(&mut self.batch, Job::new(self.refs.len()));
        self.jobs
            .as_ref()
            .expect("push after finish")
            .send(job)
            .map_err(|_| RepoError::Pipeline("all workers stopped".into()))
    }

    /// Statistics so far (chunks pushed, and the results collected up to now).
    pub fn stats(&mut self) -> WriteStats {
        self.collect(false);
        self.stats
    }

    fn collect(&mut self, wait: bool) {
        loop {
            let msg = if wait { self.done.recv().ok() } else { self.done.try_recv().ok() };
            let Some((seq, r)) = msg else { return };
            match r {
                Ok((refs, stored)) => {
                    self.stats.bytes_stored += stored;
                    for (i, (cref, new)) in refs.into_iter().enumerate() {
                        if new {
                            self.stats.new_chunks += 1;
                            self.stats.bytes_new += cref.len;
                        }
                        self.refs[seq + i] = Some(cref);
                    }
                }
                Err(e) => {
                    if self.error.is_none() {
                        self.error = Some(e);
                    }
                }
            }
        }
    }

    /// Wait for every queued chunk and commit the workers' packs; return the
    /// chunks in input order and the statistics, or the first error.
    pub fn finish(mut self) -> Result<(Vec<ChunkRef>, WriteStats)> {
        let sent = self.send_batch();
        self.jobs = None; // workers drain the queue, commit their packs, stop
        self.collect(true); // returns once every worker has dropped its sender
        for h in self.workers.drain(..) {
            let r = h.join().map_err(|_| RepoError::Pipeline("a worker panicked".into()))?;
            if let (Err(e), None) = (r, &self.error) {
                self.error = Some(e);
            }
        }
        sent?;
        if let Some(e) = self.error.take() {
            return Err(e);
        }
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
