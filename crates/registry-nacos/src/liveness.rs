//! Keeping our instances alive: the connection probe, the audit that registers again what the
//! server lost, and taking back registrations that failed.
//!
//! Nacos keeps an ephemeral instance while the connection that registered it lives, and the SDK
//! registers again after a reconnect. The registry probes its main connection every
//! [`probe_interval`](crate::NacosConfig::probe_interval): a failed probe moves the state cell to
//! `Recovering`; the first probe that succeeds afterwards moves it back to `Connected`, checks
//! that the server has all our instances again (registering any that are missing) and resyncs
//! every watch stream. While connected, every [`AUDIT_EVERY_PROBES`]th probe runs the same audit.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use nacos_sdk::api::naming::ServiceInstance;
use waypost_core_types::{RegistryState, Result};

use crate::error::limited;
use crate::registry::Inner;
use crate::view::Reg;

/// Every this many probes, check that the server still has all our instances.
const AUDIT_EVERY_PROBES: u32 = 20;
/// The longest a probe may take.
const PROBE_LIMIT: Duration = Duration::from_secs(2);

/// Probes the connection until the registry's tasks stop.
pub(crate) async fn probe_loop(inner: Arc<Inner>) {
    let mut probes: u32 = 0;
    loop {
        tokio::time::sleep(inner.config.probe_interval).await;
        probes = probes.wrapping_add(1);
        let Ok(main) = inner.slots.main() else { return };
        let res = limited(
            "probing the connection",
            inner.config.connect_timeout.min(PROBE_LIMIT),
            main.get_service_list(1, 1, inner.group()),
        )
        .await;
        drop(main);
        if let Err(e) = res {
            inner.cell.failed(&e);
            continue;
        }
        if matches!(inner.cell.get(), RegistryState::Recovering { .. }) {
            inner.cell.connected();
            inner.resync().await;
        } else if probes % AUDIT_EVERY_PROBES == 0 {
            match inner.audit(None).await {
                Ok(0) => {}
                Ok(n) => {
                    inner.cell.metrics().reregistered(n);
                    tracing::info!(target: "waypost::nacos", "re-registered {n} lost instance(s)");
                    inner.resync().await;
                }
                Err(e) => tracing::debug!(target: "waypost::nacos", "audit failed: {e}"),
            }
        }
        inner.retract_pending().await;
    }
}

impl Inner {
    /// After a reconnect: our instances back, every watch stream resynced.
    async fn resync(&self) {
        match self.audit(None).await {
            Ok(n) => self.cell.metrics().reregistered(n),
            Err(e) => {
                tracing::warn!(target: "waypost::nacos", "re-registration after reconnect: {e}")
            }
        }
        self.resnapshot().await;
    }

    /// Registers again every one of our instances (or only `only`) the server does not show
    /// (after a reconnect, a server restart, or a renew). Returns how many.
    pub(crate) async fn audit(&self, only: Option<&str>) -> Result<usize> {
        let _op = self.ops.lock().await;
        self.check_open()?;
        let regs: Vec<Reg> = self
            .state
            .lock()
            .ours
            .values()
            .filter(|r| only.is_none_or(|id| r.info.id == id))
            .cloned()
            .collect();
        let mut by_service: BTreeMap<String, Vec<Reg>> = BTreeMap::new();
        for r in regs {
            by_service.entry(r.info.name.clone()).or_default().push(r);
        }
        let mut fixed = 0;
        for (name, regs) in by_service {
            let listed = self.slots.query(&name).await?;
            // Nacos keys instances by address: ours is present when its address is.
            let addr = |i: &ServiceInstance| {
                (
                    i.ip.clone(),
                    i.port,
                    i.cluster_name.clone().unwrap_or_default(),
                )
            };
            let present: HashMap<(String, i32, String), &ServiceInstance> =
                listed.iter().map(|i| (addr(i), i)).collect();
            for r in &regs {
                if let Some(seen) = present.get(&addr(&r.inst)) {
                    if seen.metadata != r.inst.metadata
                        && !self.warned_metadata.swap(true, Ordering::AcqRel)
                    {
                        tracing::warn!(
                            target: "waypost::nacos",
                            id = r.info.id.as_str(),
                            service = name.as_str(),
                            "the server answers with other metadata than we registered; other \
                             clients will see stale data (rnacos: start it with \
                             RNACOS_NAMING_INSTANCE_METADATA_PERSISTENCE_ENABLE=false)"
                        );
                    }
                }
            }
            for r in regs
                .iter()
                .filter(|r| !present.contains_key(&addr(&r.inst)))
            {
                tracing::info!(
                    target: "waypost::nacos",
                    id = r.info.id.as_str(),
                    service = name.as_str(),
                    "the server lost our instance; registering it again"
                );
                self.slots
                    .register(
                        r.slot,
                        &name,
                        &r.inst,
                        &format!("registering `{}` again", r.info.id),
                    )
                    .await?;
                fixed += 1;
            }
        }
        Ok(fixed)
    }

    /// A registration that failed stays in the SDK's redo list and would come back when the
    /// server does: take each one back once the server answers, unless its connection holds an
    /// instance of that service again meanwhile.
    async fn retract_pending(&self) {
        if self.state.lock().pending_retract.is_empty() {
            return;
        }
        let _op = self.ops.lock().await;
        if self.check_open().is_err() {
            return;
        }
        let pending: Vec<((String, usize), ServiceInstance)> = self
            .state
            .lock()
            .pending_retract
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for ((name, slot), inst) in pending {
            let reused = self.state.lock().ours_in(&name).any(|r| r.slot == slot);
            if reused || self.slots.deregister(slot, &name, &inst).await.is_ok() {
                self.state
                    .lock()
                    .pending_retract
                    .remove(&(name.clone(), slot));
            }
        }
    }
}
