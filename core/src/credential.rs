//! A machine's credential: what `lifeline-receiver machine add NAME` issues
//! and the agent presents on every request (`authorization: Bearer TOKEN`,
//! over TLS).
//!
//! The token is `NAME:SECRET`, the secret 32 random bytes in hex. It names
//! its machine, so the receiver knows whose stored hash to compare with and
//! the agent needs no separate `--machine`. The receiver keeps only the
//! blake3 hash of the secret (a 256-bit random secret needs no slow hash).
//!
//! [`MachineName`] is the validated name both sides key everything on: the
//! receiver derives every path of a machine's data from it alone.

use std::fmt;

/// Header value prefix.
pub const BEARER: &str = "Bearer ";

/// Longest machine name accepted.
pub const MAX_MACHINE_NAME: usize = 64;

/// A machine's name, safe to use as a single path component: 1 to 64 bytes
/// of `[A-Za-z0-9._-]`, and neither `.` nor `..`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MachineName(String);

impl MachineName {
    pub fn new(name: &str) -> Result<MachineName, String> {
        if name.is_empty() || name.len() > MAX_MACHINE_NAME {
            return Err(format!("machine name {name:?} must be 1 to {MAX_MACHINE_NAME} characters long"));
        }
        if name == "." || name == ".." {
            return Err(format!("machine name {name:?} is not allowed"));
        }
        if !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')) {
            return Err(format!("machine name {name:?} may only contain letters, digits, '.', '_' and '-'"));
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

#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    machine: String,
    secret: [u8; 32],
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret.
        f.debug_struct("Credential").field("machine", &self.machine).finish_non_exhaustive()
    }
}

impl Credential {
    /// A fresh credential for `machine` (a name the caller has validated).
    pub fn generate(machine: &str) -> Credential {
        Credential { machine: machine.to_owned(), secret: rand::random() }
    }

    /// Parses a token (surrounding whitespace, e.g. a file's final newline,
    /// is ignored).
    pub fn parse(token: &str) -> Result<Credential, String> {
        let token = token.trim();
        let (machine, hex) = token
            .rsplit_once(':')
            .ok_or("a credential looks like NAME:SECRET (from `lifeline-receiver machine add NAME`)")?;
        if machine.is_empty() {
            return Err("the credential names no machine".into());
        }
        if hex.len() != 64 {
            return Err("the credential's secret must be 64 hex digits".into());
        }
        let mut secret = [0u8; 32];
        for (i, b) in secret.iter_mut().enumerate() {
            *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
                .map_err(|_| "the credential's secret must be 64 hex digits".to_string())?;
        }
        Ok(Credential { machine: machine.to_owned(), secret })
    }

    pub fn machine(&self) -> &str {
        &self.machine
    }

    /// `NAME:SECRET`.
    pub fn token(&self) -> String {
        let hex: String = self.secret.iter().map(|b| format!("{b:02x}")).collect();
        format!("{}:{hex}", self.machine)
    }

    /// What the receiver stores and compares.
    pub fn secret_hash(&self) -> [u8; 32] {
        *blake3::hash(&self.secret).as_bytes()
    }

    /// Whether this credential's secret hashes to `stored`, in constant time.
    pub fn matches(&self, stored: &[u8; 32]) -> bool {
        blake3::hash(&self.secret) == blake3::Hash::from_bytes(*stored)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_names() {
        for good in ["web-1", "db.example.org", "A_b-9", "..a", "a..", "...", &"x".repeat(64)] {
            assert!(MachineName::new(good).is_ok(), "{good} refused");
        }
        for bad in ["", ".", "..", "../m2", "a/b", "a b", "é", "a\0", &"x".repeat(65)] {
            assert!(MachineName::new(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn round_trip_and_matching() {
        let c = Credential::generate("web-1.example");
        let t = c.token();
        assert!(t.starts_with("web-1.example:"));
        let back = Credential::parse(&format!("  {t}\n")).unwrap();
        assert_eq!(back, c);
        assert!(back.matches(&c.secret_hash()));
        assert!(!Credential::generate("web-1.example").matches(&c.secret_hash()));
        assert!(!format!("{c:?}").contains(&t[15..]), "Debug must not show the secret");
    }

    #[test]
    fn malformed_tokens() {
        for bad in
            ["", "web1", ":00", "web1:zz", &format!("web1:{}", "0".repeat(63)), &format!("web1:{}", "g".repeat(64))]
        {
            assert!(Credential::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
