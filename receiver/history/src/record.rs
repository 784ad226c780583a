//! One journal record: what one change to the mirror replaced, enough to
//! undo it. Encoded with prost (fields can be added without breaking older
//! journals); framed and checksummed by [`crate::journal`].

/// What a change at `path` replaced, at `time_ns` on the receiver's clock.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Record {
    /// Nanoseconds since the epoch (the receiver's clock), never smaller
    /// than the record before it in the journal.
    #[prost(int64, tag = "1")]
    pub time_ns: i64,
    /// The seq of the machine's op that made the change (0: the receiver's
    /// own, e.g. a delta's cleanup).
    #[prost(uint64, tag = "2")]
    pub seq: u64,
    /// The wire path (as in the mirror) the change was made at.
    #[prost(bytes = "vec", tag = "3")]
    pub path: Vec<u8>,
    #[prost(oneof = "Change", tags = "10, 11, 12, 13, 14, 15")]
    pub change: Option<Change>,
}

/// What was there before, by kind of change.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Change {
    /// Nothing was at `path`: the change created it (undo: remove it).
    #[prost(message, tag = "10")]
    Created(Created),
    /// What was at `path` (a file, a symlink, a whole directory tree) was
    /// removed or replaced whole, and moved to the attic under `object`
    /// (undo: put the object back).
    #[prost(message, tag = "11")]
    Displaced(Displaced),
    /// `path` was renamed to `to` (undo: rename back).
    #[prost(message, tag = "12")]
    Renamed(Renamed),
    /// The regular file at `path` was written in place: its length before
    /// and the bytes the change overwrote or cut off (undo: write them
    /// back, set the length).
    #[prost(message, tag = "13")]
    Overwritten(Overwritten),
    /// Attributes of `path` before the change.
    #[prost(message, tag = "14")]
    AttrChanged(AttrChanged),
    /// `path` and `with` were exchanged (undo: exchange again).
    #[prost(message, tag = "15")]
    Exchanged(Exchanged),
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Created {}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Displaced {
    /// The object's name in the machine's attic.
    #[prost(string, tag = "1")]
    pub object: String,
    /// `S_IFMT` bits of what was displaced (file, directory, symlink).
    #[prost(uint32, tag = "2")]
    pub kind: u32,
    /// A regular file with other names in the mirror: its identity there
    /// (see [`Shared`]).
    #[prost(message, optional, tag = "3")]
    pub shared: Option<Shared>,
}

/// The identity (device, inode) of a mirror file that had several names
/// when a record was made: a write through one name changed them all, so
/// its undo applies to every name the file had.
#[derive(Clone, Copy, PartialEq, Eq, Hash, prost::Message)]
pub struct Shared {
    #[prost(uint64, tag = "1")]
    pub dev: u64,
    #[prost(uint64, tag = "2")]
    pub ino: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Renamed {
    #[prost(bytes = "vec", tag = "1")]
    pub to: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Overwritten {
    /// The file's length before the change.
    #[prost(uint64, tag = "1")]
    pub old_size: u64,
    /// The bytes the change overwrote or cut off, where the file had any.
    #[prost(message, repeated, tag = "2")]
    pub ranges: Vec<OldRange>,
    /// Its attributes before the change (a write sets the mtime).
    #[prost(message, optional, tag = "3")]
    pub attr: Option<AttrChanged>,
    /// The file had other names (see [`Shared`]).
    #[prost(message, optional, tag = "4")]
    pub shared: Option<Shared>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct OldRange {
    #[prost(uint64, tag = "1")]
    pub offset: u64,
    #[prost(bytes = "vec", tag = "2")]
    pub data: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct AttrChanged {
    #[prost(uint32, tag = "1")]
    pub mode: u32,
    #[prost(uint32, tag = "2")]
    pub uid: u32,
    #[prost(uint32, tag = "3")]
    pub gid: u32,
    #[prost(int64, tag = "4")]
    pub mtime_sec: i64,
    #[prost(uint32, tag = "5")]
    pub mtime_nsec: u32,
    /// The file had other names (see [`Shared`]).
    #[prost(message, optional, tag = "6")]
    pub shared: Option<Shared>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Exchanged {
    #[prost(bytes = "vec", tag = "1")]
    pub with: Vec<u8>,
}

impl Record {
    /// Bytes of old content the record keeps (for listings and size bounds).
    pub fn kept_bytes(&self) -> u64 {
        match &self.change {
            Some(Change::Overwritten(o)) => o.ranges.iter().map(|r| r.data.len() as u64).sum(),
            _ => 0,
        }
    }

    /// The identity of the file with several names the change was made
    /// through, if it had: its undo reaches those other names too.
    pub fn shared(&self) -> Option<Shared> {
        match &self.change {
            Some(Change::Overwritten(o)) => o.shared,
            Some(Change::AttrChanged(a)) => a.shared,
            Some(Change::Displaced(d)) => d.shared,
            _ => None,
        }
    }

    /// The paths the change named: its path, and a rename's new name or
    /// an exchange's other name.
    pub fn paths(&self) -> Vec<&[u8]> {
        match &self.change {
            Some(Change::Renamed(x)) => vec![&self.path, &x.to],
            Some(Change::Exchanged(x)) => vec![&self.path, &x.with],
            _ => vec![&self.path],
        }
    }
}
