//! The second factor: RFC 6238 codes (SHA-1, 6 digits, 30 s: what every
//! authenticator app reads from an `otpauth://` QR code), computed by the
//! `totp-rs` crate. A code is accepted for its time step and the steps on
//! either side (clock skew), and only once (the database keeps the last
//! step used).

use totp_rs::{Algorithm, Builder, Secret, Totp};

const STEP: u64 = 30;
const DIGITS: usize = 6;

fn totp(secret: &[u8], account: &str) -> Option<Totp> {
    Builder::new()
        .with_algorithm(Algorithm::SHA1)
        .with_digits(DIGITS as u8)
        .with_step_duration(STEP)
        .with_secret(secret.to_vec())
        .with_issuer(Some("Lifeline"))
        // The otpauth URL's label cannot hold a colon.
        .with_account_name(account.replace(':', "_"))
        .build()
        .ok()
}

/// A new secret: 160 bits, as RFC 4226 recommends.
pub fn new_secret() -> Vec<u8> {
    let mut b = vec![0u8; 20];
    getrandom::fill(&mut b).expect("the kernel's random source failed");
    b
}

/// The time step `code` is good for at unix time `now` (one step of skew
/// either way), if any.
pub fn step_of(secret: &[u8], code: &str, now: i64) -> Option<i64> {
    let code = code.trim();
    if code.len() != DIGITS || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let t = totp(secret, "x")?;
    let now = now.max(0) as u64 / STEP;
    [now, now.saturating_sub(1), now + 1]
        .into_iter()
        .find(|step| eq(t.generate(step * STEP).to_string().as_bytes(), code.as_bytes()))
        .map(|s| s as i64)
}

/// The code for unix time `at` (tests, and a user's first confirmation).
pub fn code_at(secret: &[u8], at: i64) -> String {
    totp(secret, "x").map(|t| t.generate(at.max(0) as u64).to_string()).unwrap_or_default()
}

/// What an authenticator app scans: the `otpauth://` URL, and the secret in
/// base32 for typing in.
pub fn enrolment(secret: &[u8], account: &str) -> (String, String) {
    let url = totp(secret, account).and_then(|t| t.to_url().ok()).unwrap_or_default();
    (url, Secret::from(secret.to_vec()).to_base32())
}

/// `text` as a QR code in SVG (black modules on white, a 4-module margin).
pub fn qr_svg(text: &str) -> String {
    use qrcodegen::{QrCode, QrCodeEcc};
    let Ok(qr) = QrCode::encode_text(text, QrCodeEcc::Medium) else { return String::new() };
    let (n, margin) = (qr.size(), 4);
    let mut path = String::new();
    for y in 0..n {
        for x in 0..n {
            if qr.get_module(x, y) {
                path.push_str(&format!("M{},{}h1v1h-1z", x + margin, y + margin));
            }
        }
    }
    let side = n + 2 * margin;
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {side} {side}\" width=\"220\" height=\"220\" role=\"img\" aria-label=\"QR code for your authenticator app\"><rect width=\"100%\" height=\"100%\" fill=\"#fff\"/><path d=\"{path}\" fill=\"#000\"/></svg>"
    )
}

fn eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238's SHA-1 test vector (8 digits there; its last 6 here).
    #[test]
    fn codes_follow_rfc_6238_and_allow_one_step_of_skew() {
        let secret = b"12345678901234567890";
        assert_eq!(code_at(secret, 59), "287082");
        assert_eq!(code_at(secret, 1111111109), "081804");
        assert_eq!(step_of(secret, "081804", 1111111109), Some(1111111109 / 30));
        assert_eq!(step_of(secret, "081804", 1111111109 + 30), Some(1111111109 / 30));
        assert_eq!(step_of(secret, "081804", 1111111109 + 90), None);
        assert_eq!(step_of(secret, "08180", 1111111109), None);
        assert!(qr_svg("otpauth://totp/x").starts_with("<svg"));
    }
}
