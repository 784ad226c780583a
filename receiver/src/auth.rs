//! Who is on the other end of a request.
//!
//! For now a machine names itself in the `x-lifeline-machine` metadata header
//! ([`HeaderAuthenticator`]). Real credentials come later: they implement
//! [`Authenticator`] (the request's extensions carry the TLS peer certificates)
//! and are handed to [`crate::Receiver::with_authenticator`].

use std::fmt;

use tonic::metadata::MetadataMap;
use tonic::{Extensions, Status};

/// Longest machine name accepted.
pub const MAX_MACHINE_NAME: usize = 64;

/// A machine's name, safe to use as a single path component: 1 to 64 bytes
/// of `[A-Za-z0-9._-]`, and neither `.` nor `..`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MachineName(String);

impl MachineName {
    pub fn new(name: &str) -> Result<MachineName, String> {
        if name.is_empty() || name.len() > MAX_MACHINE_NAME {
            return Err(format!(
                "machine name {name:?} must be 1 to {MAX_MACHINE_NAME} characters long"
            ));
        }
        if name == "." || name == ".." {
            return Err(format!("machine name {name:?} is not allowed"));
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return Err(format!(
                "machine name {name:?} may only contain letters, digits, '.', '_' and '-'"
            ));
        }
        Ok(MachineName(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MachineName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Decides which machine a request speaks for, or refuses it (normally with
/// `Status::unauthenticated`).
pub trait Authenticator: Send + Sync + 'static {
    fn authenticate(
        &self,
        metadata: &MetadataMap,
        extensions: &Extensions,
    ) -> Result<MachineName, Status>;
}

/// Takes the machine's word for its name (the `x-lifeline-machine` header).
#[derive(Clone, Copy, Debug, Default)]
pub struct HeaderAuthenticator;

impl Authenticator for HeaderAuthenticator {
    fn authenticate(
        &self,
        metadata: &MetadataMap,
        _extensions: &Extensions,
    ) -> Result<MachineName, Status> {
        let header = lifeline_proto::MACHINE_HEADER;
        let value = metadata.get(header).ok_or_else(|| {
            Status::unauthenticated(format!("missing {header} header naming the machine"))
        })?;
        let name = value.to_str().map_err(|_| {
            Status::unauthenticated(format!("{header} header is not printable ASCII"))
        })?;
        MachineName::new(name)
            .map_err(|e| Status::unauthenticated(format!("invalid {header} header: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_names() {
        for good in [
            "web-1",
            "db.example.org",
            "A_b-9",
            "..a",
            "a..",
            "...",
            &"x".repeat(64),
        ] {
            assert!(MachineName::new(good).is_ok(), "{good} refused");
        }
        for bad in [
            "",
            ".",
            "..",
            "../m2",
            "a/b",
            "a b",
            "é",
            "a\0",
            &"x".repeat(65),
        ] {
            assert!(MachineName::new(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn header_authenticator() {
        let auth = HeaderAuthenticator;
        let ext = Extensions::new();
        let mut md = MetadataMap::new();
        let e = auth.authenticate(&md, &ext).unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        md.insert(lifeline_proto::MACHINE_HEADER, "../m2".parse().unwrap());
        let e = auth.authenticate(&md, &ext).unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        md.insert(lifeline_proto::MACHINE_HEADER, "m1".parse().unwrap());
        assert_eq!(auth.authenticate(&md, &ext).unwrap().as_str(), "m1");
    }
}
