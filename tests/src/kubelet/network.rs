//! The pod network of [`super::Kubelet`]: what a bridge CNI plugin gives pods.
//!
//! One Linux bridge per kubelet, holding the gateway (node) address of a /24 taken from
//! 100.64.0.0/10 (shared address space, on no interface of these machines; a /24 in use by
//! anything else is skipped). Each pod gets a network namespace joined to the bridge by a veth
//! pair and the next address of the /24: its own loopback and port space (two pods both listen
//! on `0.0.0.0:8090` without a clash), an address that is not loopback (Endpoints refuse
//! loopback addresses), and reachable from the host (where the API server calls webhooks and
//! the kubelet probes) and from the other pods (a sidecar reaching the control plane).
//!
//! Each namespace also has its own `/etc/hosts` and `/etc/resolv.conf` (`ip netns exec` mounts
//! `/etc/netns/NAME/*` over `/etc/*`), which [`super::dns`] fills in.
//!
//! It all needs root and `ip`; the namespaces, links and files are removed on drop.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU8, Ordering};

use crate::fault::{ip, veth_namespace};

/// Runs `ip ARGS...`, which must succeed.
fn ip_output(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("run ip");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The bridge and its /24.
#[derive(Debug)]
pub struct PodNetwork {
    tag: String,
    bridge: String,
    prefix: (u8, u8),
    next: AtomicU8,
}

impl PodNetwork {
    /// Creates the bridge with the gateway address of a free /24.
    ///
    /// # Panics
    ///
    /// When `ip` fails (not root?) or no /24 near this process's slot is free.
    pub fn create() -> Self {
        let pid = std::process::id();
        let tag = format!("{pid:x}");
        let addrs =
            ip_output(&["-o", "-4", "addr", "show"]) + &ip_output(&["-4", "route", "show", "table", "all"]);
        let prefix = (0..64u32)
            .map(|i| (pid + i) % 16384)
            .map(|slot| (64 + (slot / 256) as u8, (slot % 256) as u8))
            .find(|(a, b)| !addrs.contains(&format!("100.{a}.{b}.")))
            .unwrap_or_else(|| panic!("no free /24 in 100.64.0.0/10 near slot {}:\n{addrs}", pid % 16384));
        let network = Self {
            bridge: format!("crk{tag}"),
            tag,
            prefix,
            next: AtomicU8::new(2),
        };
        ip(&["link", "add", &network.bridge, "type", "bridge"]);
        ip(&[
            "addr",
            "add",
            &format!("{}/24", network.gateway()),
            "dev",
            &network.bridge,
        ]);
        ip(&["link", "set", &network.bridge, "up"]);
        network
    }

    /// The node's address on the pod network (`status.hostIP`), where pods reach the host.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(100, self.prefix.0, self.prefix.1, 1)
    }

    /// A new pod's network namespace, with the next free address.
    ///
    /// # Panics
    ///
    /// When the /24 is used up or `ip` fails.
    pub fn add_pod(&self) -> PodNetns {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        assert!(n < 255, "the pod network's /24 is used up");
        let name = format!("cellroute-pod-{}-{n}", self.tag);
        let host_if = format!("crk{}h{n}", self.tag);
        let peer_if = format!("crk{}p{n}", self.tag);
        let addr = Ipv4Addr::new(100, self.prefix.0, self.prefix.1, n);
        let etc = PathBuf::from("/etc/netns").join(&name);
        std::fs::create_dir_all(&etc).unwrap_or_else(|e| panic!("create {}: {e}", etc.display()));
        // No nameserver: lookups of names the hosts file lacks fail at once (127.0.0.1:53 refuses)
        // instead of timing out against a resolver the namespace cannot reach.
        std::fs::write(
            etc.join("resolv.conf"),
            "# cellroute kubelet harness: names come from /etc/hosts\n",
        )
        .expect("write resolv.conf");
        std::fs::write(etc.join("hosts"), "127.0.0.1 localhost\n").expect("write hosts");
        let pod = PodNetns {
            name,
            host_if,
            addr,
            etc,
        };
        veth_namespace(&pod.name, &pod.host_if, &peer_if, &format!("{addr}/24"));
        ip(&["link", "set", &pod.host_if, "master", &self.bridge]);
        ip(&["link", "set", &pod.host_if, "up"]);
        pod
    }
}

impl Drop for PodNetwork {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.bridge]).output();
        // Only when no other namespace's files are left in it.
        let _ = std::fs::remove_dir("/etc/netns");
    }
}

/// One pod's network namespace.
#[derive(Debug)]
pub struct PodNetns {
    name: String,
    host_if: String,
    addr: Ipv4Addr,
    etc: PathBuf,
}

impl PodNetns {
    /// The pod's IP (`status.podIP`).
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// The command prefix that runs a program in the namespace, with its own `/etc/hosts`.
    pub fn wrapper(&self) -> Vec<String> {
        vec![
            "ip".to_owned(),
            "netns".to_owned(),
            "exec".to_owned(),
            self.name.clone(),
        ]
    }

    /// Replaces the namespace's `/etc/hosts`, in place (the programs see it through a bind
    /// mount of this very file, so it must not be renamed over).
    pub fn write_hosts(&self, text: &str) {
        let path = self.etc.join("hosts");
        if std::fs::read_to_string(&path).ok().as_deref() != Some(text) {
            std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        }
    }
}

impl Drop for PodNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
        let _ = Command::new("ip").args(["link", "del", &self.host_if]).output();
        let _ = std::fs::remove_dir_all(&self.etc);
    }
}
