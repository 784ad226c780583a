//! Decoding the kernel's ring-buffer records (layout in `lifeline-ebpf-common`).

use lifeline_ebpf_common::{part, EventHeader, HEADER_SIZE};

/// One path of a record as the kernel saw it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RawPath {
    /// Kernel dev_t of the filesystem the walk ran on.
    pub dev: u32,
    /// Dentry names from the filesystem's root down (the walk, reversed).
    pub walk: Vec<Vec<u8>>,
    /// The path string the caller passed, if the call named one.
    pub tail: Option<Vec<u8>>,
    /// The walk reached the filesystem root (the path is complete).
    pub rooted: bool,
    /// The tail is absolute: relative to the caller's root directory, which
    /// the walk names.
    pub absolute: bool,
}

/// A decoded record.
#[derive(Clone, Debug)]
pub struct RawEvent {
    pub header: EventHeader,
    pub paths: Vec<RawPath>,
    pub aux_str: Option<Vec<u8>>,
}

#[derive(Debug, thiserror::Error)]
#[error("malformed event record: {0}")]
pub struct DecodeError(&'static str);

/// Splits NUL-terminated strings.
fn strings(b: &[u8]) -> impl Iterator<Item = &[u8]> {
    b.split(|c| *c == 0).filter(|s| !s.is_empty())
}

fn nul_trimmed(b: &[u8]) -> Vec<u8> {
    b[..b.iter().position(|c| *c == 0).unwrap_or(b.len())].to_vec()
}

pub fn decode(rec: &[u8]) -> Result<RawEvent, DecodeError> {
    if rec.len() < HEADER_SIZE {
        return Err(DecodeError("shorter than its header"));
    }
    // SAFETY: EventHeader is plain old data and the slice is long enough.
    let header: EventHeader = unsafe { std::ptr::read_unaligned(rec.as_ptr() as *const EventHeader) };
    let mut body = &rec[HEADER_SIZE..];
    let mut take = |n: usize| -> Result<&[u8], DecodeError> {
        if n > body.len() {
            return Err(DecodeError("body shorter than its header says"));
        }
        let (a, b) = body.split_at(n);
        body = b;
        Ok(a)
    };
    let mut paths = Vec::new();
    for p in header.parts.iter() {
        if p.flags & part::PRESENT == 0 {
            continue;
        }
        let walk_bytes = take(p.walk_len as usize)?;
        let mut walk: Vec<Vec<u8>> = strings(walk_bytes).map(<[u8]>::to_vec).collect();
        walk.reverse();
        let tail = if p.tail_len > 0 { Some(nul_trimmed(take(p.tail_len as usize)?)) } else { None };
        paths.push(RawPath {
            dev: p.dev,
            walk,
            tail,
            rooted: p.flags & part::ROOTED != 0,
            absolute: p.flags & part::ABSOLUTE != 0,
        });
    }
    let aux_str = if header.aux_len > 0 { Some(nul_trimmed(take(header.aux_len as usize)?)) } else { None };
    Ok(RawEvent { header, paths, aux_str })
}

#[cfg(test)]
mod tests {
    use super::*;
    use lifeline_ebpf_common::PathPart;

    fn record(h: EventHeader, body: &[u8]) -> Vec<u8> {
        let mut v = vec![0u8; HEADER_SIZE];
        unsafe { std::ptr::write_unaligned(v.as_mut_ptr() as *mut EventHeader, h) };
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn decodes_walk_tail_and_aux() {
        let mut h = EventHeader { op: 9, ..Default::default() };
        let walk = b"dir\0srv\0";
        let tail = b"link\0";
        h.parts[0] = PathPart {
            dev: 7,
            walk_len: walk.len() as u16,
            tail_len: tail.len() as u16,
            flags: part::PRESENT | part::ROOTED,
            _pad: [0; 3],
        };
        h.aux_len = 7;
        let mut body = walk.to_vec();
        body.extend_from_slice(tail);
        body.extend_from_slice(b"target\0");
        let e = decode(&record(h, &body)).unwrap();
        assert_eq!(e.paths.len(), 1);
        assert_eq!(e.paths[0].walk, vec![b"srv".to_vec(), b"dir".to_vec()]);
        assert_eq!(e.paths[0].tail.as_deref(), Some(&b"link"[..]));
        assert!(e.paths[0].rooted);
        assert_eq!(e.aux_str.as_deref(), Some(&b"target"[..]));
    }

    #[test]
    fn rejects_truncated_records() {
        let mut h = EventHeader::default();
        h.parts[0] = PathPart { walk_len: 100, flags: part::PRESENT, ..Default::default() };
        assert!(decode(&record(h, b"abc\0")).is_err());
        assert!(decode(&[0u8; 3]).is_err());
    }
}
