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
    let set = syscalls.join(",");
    vec![
        "strace".to_owned(),
        "-f".to_owned(),
        "--seccomp-bpf".to_owned(),
        "-qq".to_owned(),
        "-o".to_owned(),
        "/dev/null".to_owned(),
        "-e".to_owned(),
        format!("trace={set}"),
        "-e".to_owned(),
        format!("inject={set}:error={errno}"),
    ]
}

/// The command prefix that runs a binary under `strace` delaying every call of `syscalls` by
/// `delay` before it runs (the process sits inside the call meanwhile, for example between
/// writing a temp file and renaming it), following its threads, printing nothing.
pub fn strace_delay(syscalls: &[&str], delay: Duration) -> Vec<String> {
    let set = syscalls.join(",");
    vec![
        "strace".to_owned(),
        "-f".to_owned(),
        "--seccomp-bpf".to_owned(),
        "-qq".to_owned(),
        "-o".to_owned(),
        "/dev/null".to_owned(),
        "-e".to_owned(),
        format!("trace={set}"),
        "-e".to_owned(),
        // strace takes the delay in microseconds.
        format!("inject={set}:delay_enter={}", delay.as_micros()),
    ]
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
        let run = |args: &[&str]| {
            let output = Command::new("ip").args(args).output().expect("run ip");
            assert!(
                output.status.success(),
                "`ip {}` failed (this test needs root): {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr)
            );
        };
        run(&["netns", "add", &ns.name]);
        run(&[
            "link",
            "add",
            &ns.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &peer_if,
        ]);
        run(&["link", "set", &peer_if, "netns", &ns.name]);
        run(&["addr", "add", &format!("{outside}/30"), "dev", &ns.host_if]);
        run(&["link", "set", &ns.host_if, "up"]);
        let exec = |args: &[&str]| {
            let mut all = vec!["netns", "exec", &ns.name, "ip"];
            all.extend_from_slice(args);
            run(&all);
        };
        exec(&["addr", "add", &format!("{inside}/30"), "dev", &peer_if]);
        exec(&["link", "set", &peer_if, "up"]);
        exec(&["link", "set", "lo", "up"]);
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
