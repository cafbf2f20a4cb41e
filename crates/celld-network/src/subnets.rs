//! The networker's side of shared subnets: taking a subnet host-wide, its
//! bridge made with its first container and removed after its last, and both
//! brought back after a restart. The bookkeeping is in shared.rs.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::pool::Ipv4Net;
use super::shared::{self, Lease};
use super::{IFACES, NetState, NetworkError, Networker, POOL_LOCK_DIR, PoolLock, link, lock};

/// Pairs of (bridge, bridge): frames between containers of one subnet.
const HAIRPIN: &str = "hairpin";

fn lock_dir() -> &'static std::path::Path {
    std::path::Path::new(POOL_LOCK_DIR)
}

impl Networker {
    /// An address on a shared subnet; the subnet is taken host-wide with its
    /// first container.
    pub(crate) fn reserve_shared(&self, subnet: Ipv4Net, ip: Option<Ipv4Addr>) -> Result<Lease, NetworkError> {
        let mut p = lock(&self.pools);
        let pool = p.subnets.pool();
        if shared::overlap(pool, subnet) {
            return Err(NetworkError::BadRequest(format!(
                "the requested subnet {subnet} overlaps this cell's network pool {pool}"
            )));
        }
        let fresh = !p.shared.has(subnet);
        let lease = p.shared.acquire(subnet, ip)?;
        if fresh {
            match PoolLock::acquire_subnet(lock_dir(), subnet, &self.owner) {
                Ok(l) => {
                    p.shared_locks.insert(subnet.first(), l);
                }
                Err(e) => {
                    p.shared.release(lease);
                    p.shared.forget_if_unused(subnet);
                    return Err(e);
                }
            }
        }
        Ok(lease)
    }

    /// Makes the subnet's bridge unless it is there, firewalled before it
    /// exists. The guard keeps it from being removed until the caller's port
    /// is on it.
    pub(crate) async fn ensure_bridge(
        &self,
        host: &rtnetlink::Handle,
        subnet: Ipv4Net,
        bridge: &str,
    ) -> Result<tokio::sync::MutexGuard<'_, ()>, NetworkError> {
        let guard = self.bridges.lock().await;
        if link::exists(bridge) {
            return Ok(guard);
        }
        self.change(|b| {
            b.add_iface(IFACES, bridge).add_iface_pair(HAIRPIN, bridge, bridge);
        })?;
        if let Err(e) = link::create_bridge(host, bridge, subnet, self.mtu).await {
            let _ = link::delete(host, bridge).await;
            self.forget_bridge(bridge);
            return Err(e);
        }
        tracing::info!(bridge = %bridge, subnet = %subnet, "bridge made");
        Ok(guard)
    }

    fn forget_bridge(&self, bridge: &str) {
        let _ = self.change(|b| {
            b.delete_iface(IFACES, bridge).delete_iface_pair(HAIRPIN, bridge, bridge);
        });
    }

    /// Removes a shared subnet's bridge, its firewall entries and its lock
    /// once its last container is gone (in the background: unregistering a
    /// bridge takes the kernel tens of milliseconds).
    pub(crate) fn retire_bridge_later(self: &Arc<Self>, subnet: Ipv4Net) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(subnet = %subnet, "no runtime to remove the bridge on; the next start does");
            return;
        };
        let net = self.clone();
        self.pending.fetch_add(1, Ordering::SeqCst);
        rt.spawn(async move {
            net.retire_bridge(subnet).await;
            net.pending.fetch_sub(1, Ordering::SeqCst);
        });
    }

    async fn retire_bridge(&self, subnet: Ipv4Net) {
        let _guard = self.bridges.lock().await;
        // A container may have joined since the last one left.
        if lock(&self.pools).shared.is_used(subnet) {
            return;
        }
        let bridge = shared::bridge_name(subnet);
        if let Ok(host) = self.host() {
            if let Err(e) = link::delete(&host, &bridge).await {
                tracing::warn!(bridge = %bridge, error = %e, "removing the bridge failed");
            }
        }
        self.forget_bridge(&bridge);
        let mut p = lock(&self.pools);
        if p.shared.forget_if_unused(subnet) {
            p.shared_locks.remove(&subnet.first());
        }
        tracing::info!(bridge = %bridge, subnet = %subnet, "bridge removed");
    }

    /// After a restart: takes the shared subnets of surviving containers
    /// host-wide again.
    pub(crate) fn relock_shared(&self, states: &[NetState]) {
        let mut p = lock(&self.pools);
        for s in states.iter().filter(|s| s.bridge().is_some()) {
            if p.shared_locks.contains_key(&s.subnet.first()) {
                continue;
            }
            match PoolLock::acquire_subnet(lock_dir(), s.subnet, &self.owner) {
                Ok(l) => {
                    p.shared_locks.insert(s.subnet.first(), l);
                }
                Err(e) => tracing::error!(subnet = %s.subnet, error = %e, "a surviving container's subnet is taken"),
            }
        }
    }

    /// After a restart: the bridges of surviving containers (made anew if
    /// they are gone, with their ports), and bridges nobody owns removed.
    pub(crate) async fn restore_bridges(
        &self,
        host: &rtnetlink::Handle,
        states: &[NetState],
    ) -> Result<(), NetworkError> {
        let mut owned = HashSet::new();
        for s in states {
            let Some(bridge) = s.bridge() else { continue };
            if owned.insert(bridge.clone()) && !link::exists(&bridge) {
                link::create_bridge(host, &bridge, s.subnet, self.mtu).await?;
            }
            if let Err(e) = link::join_bridge(host, &s.host_veth(), &bridge).await {
                tracing::warn!(interface = %s.host_veth(), error = %e, "putting the container back on its bridge failed");
            }
        }
        // One whose subnet some cell holds is that cell's; one with ports
        // still has containers (of a cell that is down). But the ports of
        // containers destroyed just before a crash linger while the kernel
        // tears their namespaces down: give those a moment.
        let orphans: Vec<String> = link::list(host)
            .await?
            .into_iter()
            .filter(|name| {
                shared::bridge_subnet_addr(name)
                    .is_some_and(|addr| !owned.contains(name) && !super::ranges::range_held(lock_dir(), addr))
            })
            .collect();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(3);
        while orphans.iter().any(|b| link::has_ports(b)) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        for name in orphans.iter().filter(|b| !link::has_ports(b)) {
            tracing::info!(bridge = %name, "removing bridge no container owns");
            let _ = link::delete(host, name).await;
        }
        Ok(())
    }
}
