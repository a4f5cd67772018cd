//! The proxy's listening sockets: one per worker, all on the same address (`SO_REUSEPORT`), so
//! the kernel spreads new connections over the workers and no accept is handed between threads.
//!
//! `SO_REUSEPORT` would also let a second process of the same user bind the same address and
//! silently take half the connections. So before the group is bound, a plain listener probes
//! the address: if anything listens there (with or without `SO_REUSEPORT`), binding fails with
//! "address in use", as it would without the group, and a later process probing the same
//! address fails the same way against this one.

use std::io;
use std::net::{SocketAddr, TcpListener};

use socket2::{Domain, Socket, Type};

/// Backlog of each listening socket.
const BACKLOG: i32 = 1024;

/// One bound, listening socket per worker.
#[derive(Debug)]
pub struct Listeners {
    sockets: Vec<TcpListener>,
    addr: SocketAddr,
}

impl Listeners {
    /// Binds `workers` sockets to `addr` (port 0 picks one free port for all of them).
    pub fn bind(addr: SocketAddr, workers: usize) -> io::Result<Self> {
        let probe = TcpListener::bind(addr)?;
        let addr = probe.local_addr()?;
        drop(probe);
        let sockets = (0..workers.max(1))
            .map(|_| {
                let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
                socket.set_reuse_address(true)?;
                socket.set_reuse_port(true)?;
                socket.set_nonblocking(true)?;
                socket.bind(&addr.into())?;
                socket.listen(BACKLOG)?;
                Ok(TcpListener::from(socket))
            })
            .collect::<io::Result<Vec<_>>>()?;
        Ok(Self { sockets, addr })
    }

    /// The address every socket listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many sockets (one per worker).
    pub fn len(&self) -> usize {
        self.sockets.len()
    }

    /// Whether there are none (never, once bound).
    pub fn is_empty(&self) -> bool {
        self.sockets.is_empty()
    }

    pub(super) fn into_sockets(self) -> Vec<TcpListener> {
        self.sockets
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_socket_shares_the_port_and_the_address_is_then_taken() {
        let listeners = Listeners::bind("127.0.0.1:0".parse().unwrap(), 3).unwrap();
        let addr = listeners.local_addr();
        assert_ne!(addr.port(), 0);
        assert_eq!(listeners.len(), 3);
        for socket in &listeners.sockets {
            assert_eq!(socket.local_addr().unwrap(), addr);
        }
        // Neither a plain bind nor another group may join the address while it listens.
        assert_eq!(
            TcpListener::bind(addr).unwrap_err().kind(),
            io::ErrorKind::AddrInUse
        );
        assert_eq!(
            Listeners::bind(addr, 2).unwrap_err().kind(),
            io::ErrorKind::AddrInUse
        );
        drop(listeners);
        Listeners::bind(addr, 1).expect("free again once the group is closed");
    }
}
