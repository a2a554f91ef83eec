//! Connection admission: the total cap of one [`Server`](super::Server)
//! and the per-source-IP cap shared by every shard of a process.
//!
//! SO_REUSEPORT spreads one client's connections over the shards, so the
//! per-IP counts live in one process-wide table ([`SourceIpConnections`],
//! a mutex-guarded map). It is touched only when a connection is accepted
//! and when it closes, never on the request path.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::{Arc, Mutex, PoisonError};

use crate::server::ServerShared;

/// Open connections per source IP address, shared by every server (shard)
/// holding a clone: clone one table into each shard's
/// [`ServerConfig`](super::ServerConfig) to make
/// [`max_connections_per_ip`](super::ServerConfig::max_connections_per_ip)
/// process-wide. Cheap to clone (`Arc` inside); `Send + Sync`.
#[derive(Clone, Default)]
pub struct SourceIpConnections {
    counts: Arc<Mutex<HashMap<IpAddr, u32>>>,
}

impl std::fmt::Debug for SourceIpConnections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceIpConnections")
            .field("addresses", &self.addresses())
            .finish()
    }
}

impl SourceIpConnections {
    /// An empty table.
    pub fn new() -> SourceIpConnections {
        SourceIpConnections::default()
    }

    /// Open connections from `ip` counted in this table.
    pub fn connections(&self, ip: IpAddr) -> u32 {
        self.lock().get(&ip).copied().unwrap_or(0)
    }

    /// Distinct source addresses with at least one open connection.
    pub fn addresses(&self) -> usize {
        self.lock().len()
    }

    /// Whether `other` is a clone of this table (counts in the same map).
    pub fn is_shared_with(&self, other: &SourceIpConnections) -> bool {
        Arc::ptr_eq(&self.counts, &other.counts)
    }

    /// Counts one more connection from `ip` unless it already has
    /// `max_per_ip`; the slot is given back when the result drops.
    fn try_acquire(&self, ip: IpAddr, max_per_ip: u32) -> Option<SourceIpSlot> {
        let mut counts = self.lock();
        let count = counts.entry(ip).or_insert(0);
        if *count >= max_per_ip {
            // Never leave a zero entry behind (the map stays bounded by
            // the open connections).
            if *count == 0 {
                counts.remove(&ip);
            }
            return None;
        }
        *count += 1;
        Some(SourceIpSlot {
            table: self.clone(),
            ip,
        })
    }

    fn release(&self, ip: IpAddr) {
        let mut counts = self.lock();
        match counts.get_mut(&ip) {
            Some(count) if *count > 1 => *count -= 1,
            Some(_) => {
                counts.remove(&ip);
            }
            None => debug_assert!(false, "released a slot of {ip} that was never taken"),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, u32>> {
        // The map is consistent after every operation: a panic elsewhere
        // while holding the lock leaves nothing half-done.
        self.counts.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One connection counted against its source IP; released on drop.
struct SourceIpSlot {
    table: SourceIpConnections,
    ip: IpAddr,
}

impl Drop for SourceIpSlot {
    fn drop(&mut self) {
        self.table.release(self.ip);
    }
}

/// Why [`Server::admit`](super::Server::admit) refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The server already serves `max_connections`.
    TotalCap,
    /// The source IP already holds `max_connections_per_ip`.
    SourceIpCap,
}

/// A connection's place in the server's caps: counts it as active (and
/// against its source IP) until dropped. Obtain one from
/// [`Server::admit`](super::Server::admit) before any per-connection work
/// (TLS handshake included) and keep it for the connection's lifetime.
pub struct ConnectionPermit {
    shared: Rc<ServerShared>,
    _source_ip: Option<SourceIpSlot>,
}

impl std::fmt::Debug for ConnectionPermit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ip = self._source_ip.as_ref().map(|slot| slot.ip);
        f.debug_struct("ConnectionPermit")
            .field("source_ip", &ip)
            .finish()
    }
}

impl ConnectionPermit {
    /// Admits a connection from `peer` or says which cap it hit.
    pub(crate) fn admit(
        shared: &Rc<ServerShared>,
        peer: Option<SocketAddr>,
    ) -> Result<ConnectionPermit, Refusal> {
        let config = &shared.config;
        if shared.connections_active.get() >= config.max_connections {
            return Err(Refusal::TotalCap);
        }
        let source_ip = match (config.max_connections_per_ip, peer) {
            (Some(max_per_ip), Some(peer)) => Some(
                config
                    .source_ip_connections
                    .try_acquire(peer.ip(), max_per_ip)
                    .ok_or(Refusal::SourceIpCap)?,
            ),
            _ => None,
        };
        Ok(ConnectionPermit::counted(shared.clone(), source_ip))
    }

    /// Counts a connection without checking any cap (a connection handed
    /// to [`Server::serve_connection`](super::Server::serve_connection)
    /// directly).
    pub(crate) fn unchecked(shared: Rc<ServerShared>) -> ConnectionPermit {
        ConnectionPermit::counted(shared, None)
    }

    fn counted(shared: Rc<ServerShared>, source_ip: Option<SourceIpSlot>) -> ConnectionPermit {
        shared
            .connections_active
            .set(shared.connections_active.get() + 1);
        ConnectionPermit {
            shared,
            _source_ip: source_ip,
        }
    }

    /// Whether this permit belongs to the server sharing `shared`.
    pub(crate) fn is_for(&self, shared: &Rc<ServerShared>) -> bool {
        Rc::ptr_eq(&self.shared, shared)
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let active = self.shared.connections_active.get();
        assert!(active > 0, "connection count underflow");
        self.shared.connections_active.set(active - 1);
        self.shared.connection_closed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_ip_slots_are_capped_and_released() {
        let table = SourceIpConnections::new();
        let a: IpAddr = "10.0.0.1".parse().expect("ip");
        let b: IpAddr = "10.0.0.2".parse().expect("ip");
        let first = table.try_acquire(a, 2).expect("first");
        let second = table.try_acquire(a, 2).expect("second");
        assert!(table.try_acquire(a, 2).is_none(), "third is over the cap");
        let other = table.clone().try_acquire(b, 2).expect("other ip");
        assert_eq!(table.connections(a), 2);
        assert_eq!(table.addresses(), 2);
        drop(first);
        let again = table.try_acquire(a, 2).expect("slot freed");
        drop((second, again, other));
        assert_eq!(table.addresses(), 0, "no entries left behind");
        assert!(table.try_acquire(a, 0).is_none());
        assert_eq!(table.addresses(), 0, "a refusal leaves no entry");
    }
}
