//! Fault injection against the real binaries: failing or delaying system calls with `strace`,
//! and a network namespace so that a server sees a peer that is not on loopback. (The tiny disk
//! of the full-disk test lives in `tests/push_cache.rs`.)
//!
//! All of it needs root (CI and the development machines run as root); each helper fails the
//! test with the reason when it cannot do its job, never skips.

use std::process::Command;
use std::time::Duration;

use crate::wait::eventually_blocking;

/// The command prefix that runs a binary under `strace` failing every call of `syscalls` with
/// `errno` (for example `&["fsync", "fdatasync"]`, `"EIO"`), following its threads, printing
/// nothing.
pub fn strace_inject(syscalls: &[&str], errno: &str) -> Vec<String> {
    strace(syscalls, &format!("error={errno}"))
}

/// The command prefix that runs a binary under `strace` delaying every call of `syscalls` by
/// `delay` before it runs (the process sits inside the call meanwhile, for example between
/// writing a temp file and renaming it), following its threads, printing nothing.
pub fn strace_delay(syscalls: &[&str], delay: Duration) -> Vec<String> {
    // strace takes the delay in microseconds.
    strace(syscalls, &format!("delay_enter={}", delay.as_micros()))
}

/// `strace` following threads, printing nothing, tampering with every call of `syscalls` as
/// `how` says (the part after `inject=SET:`).
fn strace(syscalls: &[&str], how: &str) -> Vec<String> {
    let set = syscalls.join(",");
    [
        "strace",
        "-f",
        "--seccomp-bpf",
        "-qq",
        "-o",
        "/dev/null",
        "-e",
        &format!("trace={set}"),
        "-e",
        &format!("inject={set}:{how}"),
    ]
    .map(str::to_owned)
    .to_vec()
}

/// The pid of the one child of `parent` (the program `strace` runs), waiting for it to appear.
///
/// # Panics
///
/// When no child appears within a few seconds.
pub fn child_pid(parent: u32) -> u32 {
    let path = format!("/proc/{parent}/task/{parent}/children");
    eventually_blocking(&format!("a child of {parent}"), Duration::from_secs(10), || {
        let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
        text.split_whitespace()
            .next()
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| format!("{path} is empty"))
    })
}

/// Runs `ip ARGS`, failing the test with its stderr when it fails (it needs root and iproute2).
pub fn ip(args: &[&str]) {
    let output = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        output.status.success(),
        "`ip {}` failed (this test needs root and iproute2): {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Creates the network namespace `name` joined to this one by the veth pair
/// `host_if`/`peer_if`: the peer end moves into the namespace with address `inside_cidr`, and it
/// and the namespace's `lo` come up. The host end is the caller's to address (or put on a bridge)
/// and bring up.
pub fn veth_namespace(name: &str, host_if: &str, peer_if: &str, inside_cidr: &str) {
    ip(&["netns", "add", name]);
    ip(&["link", "add", host_if, "type", "veth", "peer", "name", peer_if]);
    ip(&["link", "set", peer_if, "netns", name]);
    let inside = |args: &[&str]| {
        let mut all = vec!["netns", "exec", name, "ip"];
        all.extend_from_slice(args);
        ip(&all);
    };
    inside(&["addr", "add", inside_cidr, "dev", peer_if]);
    inside(&["link", "set", peer_if, "up"]);
    inside(&["link", "set", "lo", "up"]);
}

/// A network namespace joined to this one by a veth pair, removed on drop.
///
/// A server run inside it (through [`NetNs::wrapper`]) and listening on `0.0.0.0` is reached
/// from the test at [`NetNs::inside`], and sees the test's connections coming from
/// [`NetNs::outside`]: a peer that is not loopback. Both addresses are in a /30 of 10.0.0.0/8
/// derived from the test process's pid, so parallel runs do not collide, and exist only on this
/// machine.
#[derive(Debug)]
pub struct NetNs {
    name: String,
    host_if: String,
    inside: std::net::Ipv4Addr,
    outside: std::net::Ipv4Addr,
}

impl NetNs {
    /// Creates the namespace and the link.
    ///
    /// # Panics
    ///
    /// When any `ip` command fails (it needs root).
    pub fn create() -> Self {
        let pid = std::process::id();
        let name = format!("cellroute-t{pid}");
        let host_if = format!("crt{pid}a");
        let peer_if = format!("crt{pid}b");
        // 22 bits of pid: 8 + 8 + 6, then the two host addresses of a /30.
        let (a, b, c) = ((pid >> 14) & 0xff, (pid >> 6) & 0xff, (pid & 0x3f) << 2);
        let outside = std::net::Ipv4Addr::new(10, a as u8, b as u8, c as u8 + 1);
        let inside = std::net::Ipv4Addr::new(10, a as u8, b as u8, c as u8 + 2);
        let ns = Self {
            name,
            host_if,
            inside,
            outside,
        };
        veth_namespace(&ns.name, &ns.host_if, &peer_if, &format!("{inside}/30"));
        ip(&["addr", "add", &format!("{outside}/30"), "dev", &ns.host_if]);
        ip(&["link", "set", &ns.host_if, "up"]);
        ns
    }

    /// The command prefix that runs a program inside the namespace.
    pub fn wrapper(&self) -> Vec<String> {
        vec![
            "ip".to_owned(),
            "netns".to_owned(),
            "exec".to_owned(),
            self.name.clone(),
        ]
    }

    /// The namespace's address, where the test reaches servers inside it.
    pub fn inside(&self) -> std::net::Ipv4Addr {
        self.inside
    }

    /// The address the test's connections come from, as servers inside see them.
    pub fn outside(&self) -> std::net::Ipv4Addr {
        self.outside
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Deleting the namespace deletes its end of the pair, and with it this end.
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
        let _ = Command::new("ip").args(["link", "del", &self.host_if]).output();
    }
}
