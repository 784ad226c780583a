//! Request budgets per network address, for the ports anyone on the boot
//! network reaches (TFTP requests, iPXE scripts by MAC address): a burst,
//! then a steady rate, with governor's keyed rate limiter (GCRA).
//!
//! Addresses are counted by what one client can cheaply hold: an IPv4
//! address, or an IPv6 /64 (one host is routinely given a whole /64, so
//! counting single IPv6 addresses would give it 2^64 budgets).

use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};

/// Past this many addresses tracked, the ones whose budget is full again are
/// forgotten (an entry lives at most `burst / per_second` after its last
/// request, so the map holds the addresses seen in that time).
const TRACKED: usize = 4096;

/// A burst of `burst` requests, then `per_second`; `Err` names what is wrong
/// (for the command line).
pub fn quota(burst: u32, per_second: f64) -> Result<Quota, String> {
    let burst = NonZeroU32::new(burst).ok_or("a burst of 0 would refuse every request")?;
    if !(per_second.is_finite() && per_second > 0.0) {
        return Err(format!("{per_second} requests per second: give a number above 0"));
    }
    // At least one request a day: slower is a typo, not a policy.
    let period = Duration::from_secs_f64((1.0 / per_second).min(86_400.0));
    Ok(Quota::with_period(period).ok_or("a rate too high to count")?.allow_burst(burst))
}

/// One budget per address (IPv4) or network (IPv6 /64).
pub struct AddressBudget {
    limiter: DefaultKeyedRateLimiter<IpAddr>,
}

impl AddressBudget {
    pub fn new(quota: Quota) -> AddressBudget {
        AddressBudget { limiter: RateLimiter::keyed(quota) }
    }

    /// Takes one request from `ip`'s budget: false when it is spent.
    pub fn take(&self, ip: IpAddr) -> bool {
        if self.limiter.len() > TRACKED {
            self.limiter.retain_recent();
            self.limiter.shrink_to_fit();
        }
        self.limiter.check_key(&client_of(ip)).is_ok()
    }
}

/// One budget for every address together.
pub struct TotalBudget {
    limiter: DefaultDirectRateLimiter,
}

impl TotalBudget {
    pub fn new(quota: Quota) -> TotalBudget {
        TotalBudget { limiter: RateLimiter::direct(quota) }
    }

    /// Takes one request: false when the budget is spent.
    pub fn take(&self) -> bool {
        self.limiter.check().is_ok()
    }
}

/// What one client holds: its IPv4 address (an IPv4-mapped IPv6 address
/// counts as IPv4), or its IPv6 /64.
fn client_of(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let net = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(net))
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate() {
        let b = AddressBudget::new(quota(3, 1.0).unwrap());
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        assert!((0..3).all(|_| b.take(a)), "the burst is allowed");
        assert!(!b.take(a), "past the burst, refused");
        assert!(b.take("192.0.2.2".parse().unwrap()), "another address has its own budget");
        std::thread::sleep(Duration::from_millis(1100));
        assert!(b.take(a), "one more after a second");
        assert!(!b.take(a));
    }

    #[test]
    fn an_ipv6_network_is_one_client() {
        let b = AddressBudget::new(quota(2, 0.001).unwrap());
        assert!(b.take("2001:db8::1".parse().unwrap()));
        assert!(b.take("2001:db8::ffff:2".parse().unwrap()));
        assert!(!b.take("2001:db8::abcd:3".parse().unwrap()), "the same /64 shares one budget");
        assert!(b.take("2001:db8:0:1::1".parse().unwrap()), "another /64 has its own");
        // IPv4-mapped addresses count as the IPv4 address.
        assert!(b.take("::ffff:192.0.2.9".parse().unwrap()));
        assert!(b.take("192.0.2.9".parse().unwrap()));
        assert!(!b.take("::ffff:192.0.2.9".parse().unwrap()));
    }

    #[test]
    fn the_map_stays_bounded() {
        let b = AddressBudget::new(quota(1, 1000.0).unwrap());
        for i in 0..20_000u32 {
            b.take(IpAddr::V4(i.into()));
            if i % 1000 == 0 {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        assert!(b.limiter.len() <= TRACKED + 2000, "{} addresses tracked", b.limiter.len());
    }

    #[test]
    fn nonsense_quotas_are_refused() {
        assert!(quota(0, 1.0).is_err());
        assert!(quota(1, 0.0).is_err());
        assert!(quota(1, f64::NAN).is_err());
        assert!(quota(1, -1.0).is_err());
    }
}
