//! Attempts per client address in a fixed window: sign-ins (against
//! password guessing spread over many accounts, which the per-account
//! lockout does not see) and sign-ups (against a flood of customers).
//! Bounded: at most [`MAX_ADDRESSES`] addresses are tracked; past that the
//! oldest windows are forgotten first.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const MAX_ADDRESSES: usize = 10_000;

pub struct RateLimit {
    per_window: u32,
    window: Duration,
    seen: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl RateLimit {
    pub fn new(per_window: u32, window: Duration) -> RateLimit {
        RateLimit { per_window, window, seen: Mutex::default() }
    }

    /// Counts an attempt from `ip`: false if over the limit.
    pub fn allow(&self, ip: IpAddr) -> bool {
        let now = Instant::now();
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() >= MAX_ADDRESSES && !seen.contains_key(&ip) {
            seen.retain(|_, (start, _)| now.duration_since(*start) < self.window);
            if seen.len() >= MAX_ADDRESSES {
                let oldest = seen.iter().min_by_key(|(_, (start, _))| *start).map(|(ip, _)| *ip);
                if let Some(oldest) = oldest {
                    seen.remove(&oldest);
                }
            }
        }
        let entry = seen.entry(ip).or_insert((now, 0));
        if now.duration_since(entry.0) >= self.window {
            *entry = (now, 0);
        }
        entry.1 += 1;
        entry.1 <= self.per_window
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_over_its_limit_is_refused_until_the_window_passes() {
        let limit = RateLimit::new(3, Duration::from_millis(200));
        let (a, b) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        assert!((0..3).all(|_| limit.allow(a)));
        assert!(!limit.allow(a));
        assert!(limit.allow(b), "another address has its own count");
        std::thread::sleep(Duration::from_millis(250));
        assert!(limit.allow(a));
    }
}
