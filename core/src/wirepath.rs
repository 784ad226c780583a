//! Wire paths: how a file is named between agent and receiver.
//!
//! A wire path is the absolute path of the watched file without its leading
//! `/`, as raw bytes (Linux names need not be UTF-8). The receiver places it
//! under the machine's mirror directory. Everything that arrives from the
//! network goes through [`validate`] first: no absolute paths, no `.` or `..`,
//! no empty components, no NUL, bounded lengths.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// Longest wire path accepted (Linux PATH_MAX).
pub const MAX_PATH: usize = 4096;
/// Longest single component accepted (Linux NAME_MAX).
pub const MAX_NAME: usize = 255;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PathError {
    #[error("empty path")]
    Empty,
    #[error("absolute path {0:?}: wire paths are relative to the machine's mirror")]
    Absolute(String),
    #[error("path {0:?} has a '.', '..' or empty component")]
    BadComponent(String),
    #[error("path {0:?} contains a NUL byte")]
    Nul(String),
    #[error("path {0:?} is longer than {MAX_PATH} bytes or has a component over {MAX_NAME}")]
    TooLong(String),
    #[error("{0:?} is not an absolute, normalized local path")]
    NotAbsolute(PathBuf),
}

fn lossy(p: &[u8]) -> String {
    String::from_utf8_lossy(p).into_owned()
}

/// Checks a wire path from the network and returns its components.
pub fn validate(wire: &[u8]) -> Result<Vec<&OsStr>, PathError> {
    if wire.is_empty() {
        return Err(PathError::Empty);
    }
    if wire.len() > MAX_PATH {
        return Err(PathError::TooLong(lossy(wire)));
    }
    if wire[0] == b'/' {
        return Err(PathError::Absolute(lossy(wire)));
    }
    if wire.contains(&0) {
        return Err(PathError::Nul(lossy(wire)));
    }
    let mut out = Vec::new();
    for c in wire.split(|b| *b == b'/') {
        if c.is_empty() || c == b"." || c == b".." {
            return Err(PathError::BadComponent(lossy(wire)));
        }
        if c.len() > MAX_NAME {
            return Err(PathError::TooLong(lossy(wire)));
        }
        out.push(OsStr::from_bytes(c));
    }
    Ok(out)
}

/// The wire path of an absolute local path (`/srv/data/x` → `srv/data/x`).
/// The root itself has no wire path.
pub fn from_local(abs: &Path) -> Result<Vec<u8>, PathError> {
    let mut out = Vec::with_capacity(abs.as_os_str().len());
    let mut comps = abs.components();
    if comps.next() != Some(Component::RootDir) {
        return Err(PathError::NotAbsolute(abs.to_path_buf()));
    }
    for c in comps {
        match c {
            Component::Normal(n) => {
                if !out.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(n.as_bytes());
            }
            _ => return Err(PathError::NotAbsolute(abs.to_path_buf())),
        }
    }
    validate(&out)?;
    Ok(out)
}

/// The local absolute path a (valid) wire path names on the agent's side.
pub fn to_local(wire: &[u8]) -> PathBuf {
    let mut p = PathBuf::from("/");
    p.push(OsStr::from_bytes(wire));
    p
}

/// Lexically normalizes an absolute path: removes `.`, resolves `..` against
/// the preceding component. Used for paths the kernel reports relative to a
/// directory (the path is joined, then normalized).
pub fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_relative_paths() {
        assert_eq!(validate(b"srv/data/a.txt").unwrap().len(), 3);
    }

    #[test]
    fn refuses_escapes() {
        for bad in
            [&b"../etc/passwd"[..], b"a/../../etc/passwd", b"/etc/passwd", b"a//b", b"a/./b", b"a/", b"", b"a\0b"]
        {
            assert!(validate(bad).is_err(), "{:?} accepted", String::from_utf8_lossy(bad));
        }
        assert!(validate(&vec![b'a'; 256]).is_err());
    }

    #[test]
    fn local_round_trip() {
        let w = from_local(Path::new("/srv/data/x y")).unwrap();
        assert_eq!(w, b"srv/data/x y");
        assert_eq!(to_local(&w), Path::new("/srv/data/x y"));
        assert!(from_local(Path::new("relative")).is_err());
        assert!(from_local(Path::new("/a/../b")).is_err());
    }

    #[test]
    fn normalizes_dot_dot() {
        assert_eq!(normalize(Path::new("/a/b/../c/./d")), Path::new("/a/c/d"));
        assert_eq!(normalize(Path::new("/../x")), Path::new("/x"));
    }
}
