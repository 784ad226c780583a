//! A network namespace of one test's own, joined to the root namespace by a
//! veth pair on a private /30, so that a test can cut the network between a
//! process inside it and one outside (`ip link set VETH down`).

use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::{require_root, require_tool, run_cmd};

/// Namespaces made by this process so far (for unique names).
static MADE: AtomicU32 = AtomicU32::new(0);

/// `ip netns add ll-<pid>-<n>` with a veth pair: `<ns>` holds one end
/// (`10.213.X.Y+1/30`, up, plus `lo` up), the root namespace the other
/// (`10.213.X.Y+2/30`). Only what it creates is touched; all of it is removed
/// on drop (also when the test panics).
pub struct NetNs {
    name: String,
    host_if: String,
    ns_if: String,
    inner: Ipv4Addr,
    outer: Ipv4Addr,
    /// Set once the namespace exists: Drop removes it.
    made_ns: bool,
    /// Set once the veth pair exists.
    made_veth: bool,
}

fn ip(args: &[&str]) -> String {
    run_cmd("ip", args)
}

fn ip_quiet(args: &[&str]) -> bool {
    Command::new(require_tool("ip")).args(args).output().map(|o| o.status.success()).unwrap_or(false)
}

impl NetNs {
    /// Creates the namespace and the link, both up.
    #[allow(clippy::new_without_default)] // creating one changes the system: never implicit
    pub fn new() -> NetNs {
        require_root();
        require_tool("ip");
        let pid = std::process::id();
        let n = MADE.fetch_add(1, Ordering::SeqCst);
        let name = format!("ll-{pid}-{n}");
        // Interface names are at most 15 bytes.
        let tag = format!("{}{}", pid % 100_000, n % 100);
        let host_if = format!("llh{tag}");
        let ns_if = format!("lln{tag}");
        let (inner, outer) = free_slash30(pid, n);
        let mut me = NetNs {
            name: name.clone(),
            host_if: host_if.clone(),
            ns_if: ns_if.clone(),
            inner,
            outer,
            made_ns: false,
            made_veth: false,
        };
        ip(&["netns", "add", &name]);
        me.made_ns = true;
        ip(&["link", "add", &host_if, "type", "veth", "peer", "name", &ns_if]);
        me.made_veth = true;
        ip(&["link", "set", &ns_if, "netns", &name]);
        let inner_cidr = format!("{inner}/30");
        let outer_cidr = format!("{outer}/30");
        ip(&["-n", &name, "addr", "add", &inner_cidr, "dev", &ns_if]);
        ip(&["-n", &name, "link", "set", &ns_if, "up"]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        ip(&["addr", "add", &outer_cidr, "dev", &host_if]);
        ip(&["link", "set", &host_if, "up"]);
        me
    }

    /// The namespace's name (for `ip netns exec`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The address inside the namespace.
    pub fn inner_addr(&self) -> IpAddr {
        IpAddr::V4(self.inner)
    }

    /// The root namespace's end of the link.
    pub fn outer_addr(&self) -> IpAddr {
        IpAddr::V4(self.outer)
    }

    /// The veth in the root namespace.
    pub fn host_interface(&self) -> &str {
        &self.host_if
    }

    /// Cuts the link (`false`) or restores it, by setting the namespace's
    /// end down or up. The root namespace's end stays up (without carrier),
    /// so its route to the namespace stays: packets to the namespace are
    /// dropped on the link instead of taking the default route elsewhere (as
    /// they would if the root end went down and its route with it).
    pub fn set_link(&self, up: bool) {
        ip(&["-n", &self.name, "link", "set", &self.ns_if, if up { "up" } else { "down" }]);
    }
}

/// A /30 in 10.213.0.0/16 that no interface of the root namespace has an
/// address in and no route names: (inside address, outside address).
fn free_slash30(pid: u32, n: u32) -> (Ipv4Addr, Ipv4Addr) {
    let addrs = ip(&["-4", "-o", "addr", "show"]);
    let routes = ip(&["-4", "route", "show", "table", "all"]);
    let start = (pid.wrapping_mul(16).wrapping_add(n)) % 16384;
    for k in 0..16384u32 {
        let block = (start + k) % 16384;
        // Skip the first and last /30 of each /24 (.0 and .255 look odd).
        let (third, fourth) = ((block / 64) as u8, ((block % 64) * 4) as u8);
        if fourth == 0 || fourth == 252 {
            continue;
        }
        let base = [10, 213, third, fourth];
        let taken = (0..4u8).any(|i| {
            let a = format!("10.213.{third}.{}", fourth + i);
            addrs.contains(&format!("inet {a}/"))
                || routes.contains(&format!("{a} "))
                || routes.contains(&format!("{a}/"))
        });
        if !taken {
            return (
                Ipv4Addr::new(base[0], base[1], base[2], base[3] + 1),
                Ipv4Addr::new(base[0], base[1], base[2], base[3] + 2),
            );
        }
    }
    panic!("no free /30 in 10.213.0.0/16 for a test namespace");
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Deleting one end of a veth pair deletes the other (and deleting the
        // namespace would delete its end too).
        if self.made_veth && !ip_quiet(&["link", "del", &self.host_if]) {
            eprintln!("warning: could not delete interface {}", self.host_if);
        }
        if self.made_ns && !ip_quiet(&["netns", "del", &self.name]) {
            eprintln!("warning: could not delete network namespace {}", self.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::time::Duration;

    #[test]
    fn namespace_link_up_down_and_cleanup() {
        let (name, host_if);
        {
            let ns = NetNs::new();
            name = ns.name().to_string();
            host_if = ns.host_interface().to_string();
            assert!(ip(&["netns", "list"]).contains(&name));
            // A listener in the root namespace on the outer address, reached
            // from inside the namespace.
            let l = TcpListener::bind(SocketAddr::new(ns.outer_addr(), 0)).unwrap();
            let target = l.local_addr().unwrap().to_string();
            let reach = || {
                Command::new(require_tool("ip"))
                    .args(["netns", "exec", &name, "timeout", "1", "bash", "-c"])
                    .arg(format!("exec 3<>/dev/tcp/{}/{}", ns.outer_addr(), l.local_addr().unwrap().port()))
                    .output()
                    .map(|o| o.status.success())
                    .unwrap_or(false)
            };
            assert!(reach(), "{target} not reachable from inside");
            ns.set_link(false);
            assert!(!reach(), "{target} reachable with the link down");
            // No other way out: the root namespace still routes the
            // namespace's addresses over the (carrier-less) veth.
            let route = ip(&["route", "get", &ns.inner_addr().to_string()]);
            assert!(route.contains(&format!("dev {}", ns.host_interface())), "{route}");
            ns.set_link(true);
            assert!(
                crate::wait_until(Duration::from_secs(5), reach),
                "{target} not reachable after the link came back"
            );
            let _ = TcpStream::connect_timeout(&l.local_addr().unwrap(), Duration::from_millis(100));
        }
        assert!(!ip(&["netns", "list"]).contains(&name), "{name} left behind");
        assert!(!ip_quiet(&["link", "show", &host_if]), "{host_if} left behind");
    }
}
