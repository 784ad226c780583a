//! How far the receiver has applied an agent's queue, kept durably per
//! machine in `<store>/queues/<machine>`.
//!
//! Tree ops (remove, rename, link) from an agent's queue carry their origin
//! (their position in the agent's log). Applying one twice can do harm — a
//! rename replayed after the source name was reused moves the newer file over
//! the target — so the receiver remembers the highest origin it applied and
//! skips any op at or below it. The record is rewritten after every such op
//! (a plain write: it survives the receiver being killed), and made durable
//! with the batch before the acknowledgement goes out.
//!
//! An agent that starts a new queue (its state directory was lost) has a new
//! queue id; the record then starts again from zero.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use tracing::{info, warn};

use lifeline_core::credential::MachineName;
use lifeline_store::private::open_record;
use lifeline_store::StoreLayout;

const MAGIC: &[u8; 8] = b"LLQPRG01";
const LEN: usize = 28;

#[derive(Debug)]
pub struct QueueProgress {
    file: File,
    queue_id: u64,
    applied: u64,
    dirty: bool,
}

impl QueueProgress {
    /// The record of `machine` for the agent queue `queue_id`.
    pub fn open(store: &StoreLayout, machine: &MachineName, queue_id: u64) -> io::Result<QueueProgress> {
        let path = store.queue_progress(machine);
        let file = open_record(&path)?;
        let mut buf = [0u8; LEN];
        let n = file.read_at(&mut buf, 0)?;
        let (stored_queue, stored_applied) = if n == 0 {
            (0, 0)
        } else if n == LEN && decode(&buf).is_some() {
            decode(&buf).expect("checked")
        } else {
            warn!(%machine, "{} is damaged; replays from this machine may repeat tree ops, which reconciliation repairs", path.display());
            (0, 0)
        };
        let applied = if stored_queue == queue_id {
            stored_applied
        } else {
            if stored_queue != 0 {
                info!(%machine, "the agent started a new queue ({queue_id:016x}, was {stored_queue:016x})");
            }
            0
        };
        let mut p = QueueProgress { file, queue_id, applied, dirty: false };
        if stored_queue != queue_id {
            p.write()?;
        }
        Ok(p)
    }

    /// The highest origin applied from this queue (0: none).
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// Notes that the op at `origin` was applied (or refused: either way it
    /// must not be tried again).
    pub fn record(&mut self, origin: u64) -> io::Result<()> {
        if origin <= self.applied {
            return Ok(());
        }
        self.applied = origin;
        self.write()
    }

    fn write(&mut self) -> io::Result<()> {
        let mut buf = [0u8; LEN];
        buf[..8].copy_from_slice(MAGIC);
        buf[8..16].copy_from_slice(&self.queue_id.to_le_bytes());
        buf[16..24].copy_from_slice(&self.applied.to_le_bytes());
        let crc = crc32fast::hash(&buf[..24]);
        buf[24..].copy_from_slice(&crc.to_le_bytes());
        self.file.write_all_at(&buf, 0)?;
        self.dirty = true;
        Ok(())
    }

    /// Makes the record durable.
    pub fn sync(&mut self) -> io::Result<()> {
        if self.dirty {
            self.file.sync_data()?;
            self.dirty = false;
        }
        Ok(())
    }
}

fn decode(buf: &[u8; LEN]) -> Option<(u64, u64)> {
    if &buf[..8] != MAGIC {
        return None;
    }
    let crc = u32::from_le_bytes(buf[24..].try_into().ok()?);
    if crc32fast::hash(&buf[..24]) != crc {
        return None;
    }
    let queue = u64::from_le_bytes(buf[8..16].try_into().ok()?);
    let applied = u64::from_le_bytes(buf[16..24].try_into().ok()?);
    Some((queue, applied))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembered_per_queue_and_reset_by_a_new_one() {
        let d = tempfile::tempdir().unwrap();
        let m = MachineName::new("m1").unwrap();
        let mut p = QueueProgress::open(&StoreLayout::new(d.path()), &m, 7).unwrap();
        assert_eq!(p.applied(), 0);
        p.record(5).unwrap();
        p.record(3).unwrap();
        p.sync().unwrap();
        drop(p);
        assert_eq!(QueueProgress::open(&StoreLayout::new(d.path()), &m, 7).unwrap().applied(), 5);
        let other = MachineName::new("m2").unwrap();
        assert_eq!(QueueProgress::open(&StoreLayout::new(d.path()), &other, 7).unwrap().applied(), 0);
        assert_eq!(QueueProgress::open(&StoreLayout::new(d.path()), &m, 8).unwrap().applied(), 0);
        assert_eq!(
            QueueProgress::open(&StoreLayout::new(d.path()), &m, 7).unwrap().applied(),
            0,
            "a new queue replaced the old"
        );
    }

    #[test]
    fn a_damaged_record_counts_as_nothing_applied() {
        let d = tempfile::tempdir().unwrap();
        let m = MachineName::new("m1").unwrap();
        let mut p = QueueProgress::open(&StoreLayout::new(d.path()), &m, 7).unwrap();
        p.record(9).unwrap();
        drop(p);
        let path = d.path().join("queues/m1");
        let mut b = std::fs::read(&path).unwrap();
        b[17] ^= 1;
        std::fs::write(&path, b).unwrap();
        assert_eq!(QueueProgress::open(&StoreLayout::new(d.path()), &m, 7).unwrap().applied(), 0);
    }
}
