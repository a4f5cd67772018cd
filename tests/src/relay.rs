//! A TCP relay in its own process, for silent partitions.
//!
//! A real partition drops packets without a FIN or RST, so neither end learns anything from
//! the kernel: only heartbeats can tell. Pausing a relay between the two with SIGSTOP does
//! exactly that on loopback (`tc netem` does not work on these kernels): both TCP connections
//! stay open and nothing flows. SIGCONT heals the link.
//!
//! The relay is a short Python script (`python3` is part of the test environment), started
//! with [`Process`] like the binaries; it prints a `"message":"listening"` line with its address
//! and its own pid, which [`Relay::start`] checks is the child's, so signals reach the right
//! process even when `python3` is a wrapper that `exec`s the interpreter.

use std::net::SocketAddr;
use std::process::Command;

use crate::process::{Process, field};

/// One thread pair per connection; when either side ends, both are shut down.
const SCRIPT: &str = r#"
import json, os, socket, sys, threading
target = (sys.argv[1], int(sys.argv[2]))
srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", 0))
srv.listen(128)
host, port = srv.getsockname()
print(json.dumps({"message": "listening", "listener": "relay", "addr": "%s:%d" % (host, port), "pid": str(os.getpid())}), flush=True)

def pipe(src, dst):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    for s in (src, dst):
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

def serve(client):
    try:
        upstream = socket.create_connection(target)
    except OSError:
        client.close()
        return
    threading.Thread(target=pipe, args=(client, upstream), daemon=True).start()
    threading.Thread(target=pipe, args=(upstream, client), daemon=True).start()

while True:
    conn, _ = srv.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"#;

/// A running relay from its own address to a target.
#[derive(Debug)]
pub struct Relay {
    process: Process,
    addr: SocketAddr,
}

impl Relay {
    /// Starts a relay to `target` on an ephemeral loopback port.
    ///
    /// # Panics
    ///
    /// When `python3` cannot be started or the relay does not listen.
    pub async fn start(target: SocketAddr) -> Self {
        let mut cmd = Command::new("python3");
        cmd.args(["-u", "-c", SCRIPT])
            .arg(target.ip().to_string())
            .arg(target.port().to_string());
        let mut process = Process::spawn("relay", &mut cmd);
        let addr = process.wait_listening(&["relay"]).await[0];
        let reported = process
            .logs()
            .records()
            .iter()
            .find_map(|r| field(r, "pid").map(str::to_owned))
            .expect("the relay reports its pid");
        assert_eq!(
            reported,
            process.pid().to_string(),
            "python3 did not exec the interpreter in place: signals would miss the relay"
        );
        Self { process, addr }
    }

    /// The relay's listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Freezes the relay: connections stay open and nothing flows (a silent partition).
    pub fn freeze(&self) {
        self.process.signal(rustix::process::Signal::STOP);
    }

    /// Lets the relay run again.
    pub fn thaw(&self) {
        self.process.signal(rustix::process::Signal::CONT);
    }

    /// Kills the relay: its port refuses connections and open ones are reset (the target is
    /// gone, not silent).
    ///
    /// # Panics
    ///
    /// When it does not exit within 5 s of SIGKILL.
    pub async fn kill(&mut self) {
        self.process.signal(rustix::process::Signal::KILL);
        self.process
            .wait_for_exit(std::time::Duration::from_secs(5))
            .await
            .expect("the relay exits on SIGKILL");
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        // A stopped process still dies of SIGKILL, but thaw it so nothing lingers stopped.
        if let Some(pid) = i32::try_from(self.process.pid())
            .ok()
            .and_then(rustix::process::Pid::from_raw)
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::CONT);
        }
    }
}
