//! The rollout gate: staged, health-gated upgrades of the device stack's DaemonSets (device
//! plugin, driver container, DRA driver), one `UpgradePlan` each (docs/upgrades.md).
//!
//! It runs beside the controller loop, in passes (every `--upgrade-every`): read the plans; for
//! each, [`validate`] it, [`observe`] the cluster into a [`view::View`], [`decide`] the next
//! status and steps (pure), then — only while this replica holds the lease — write the status
//! first (the nodes it takes up, with what they had before) and then carry out the steps and
//! write the Events ([`apply`]). Its memory is the plan's status and the DaemonSet pods'
//! `controller-revision-hash` labels, so a restarted controller goes on where the last one was.
//! A standby decides and writes nothing; a dry run logs the steps and writes nothing.

pub mod apply;
pub mod decide;
pub mod health;
pub mod metrics;
pub mod observe;
pub mod validate;
pub mod view;

#[cfg(test)]
mod tests;

use std::collections::BTreeSet;
use std::sync::Arc;

use devheal_k8s::upgrade_plan::{UpgradePhase, UpgradePlan};
use kube::Client;
use kube::api::{Api, ListParams};

use crate::Clock;
use crate::metrics::Metrics;

pub use decide::{Decision, GateEvent, Step, decide};
pub use metrics::UpgradeMetrics;
pub use validate::{PlanError, ValidPlan, validate};

/// Whether this replica may write now (the lease).
pub type Fence = Arc<dyn Fn() -> bool + Send + Sync>;

/// The rollout gate.
pub struct UpgradeGate<C> {
    client: Client,
    fence: Fence,
    clock: C,
    metrics: Arc<Metrics>,
    /// The Events' `reportingInstance`.
    instance: String,
    dry_run: bool,
    /// Plans seen in the last pass (their metric series go when they do).
    known: BTreeSet<String>,
}

/// A pass that could not read the cluster.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    #[error(transparent)]
    Read(#[from] observe::ReadError),
}

fn phase_label(p: UpgradePhase) -> &'static str {
    match p {
        UpgradePhase::Pending => "Pending",
        UpgradePhase::Progressing => "Progressing",
        UpgradePhase::Paused => "Paused",
        UpgradePhase::Completed => "Completed",
        UpgradePhase::RollingBack => "RollingBack",
        UpgradePhase::RolledBack => "RolledBack",
        UpgradePhase::Invalid => "Invalid",
    }
}

impl<C: Clock> UpgradeGate<C> {
    pub fn new(
        client: Client,
        fence: Fence,
        clock: C,
        metrics: Arc<Metrics>,
        instance: &str,
        dry_run: bool,
    ) -> Self {
        UpgradeGate {
            client,
            fence,
            clock,
            metrics,
            instance: instance.to_string(),
            dry_run,
            known: BTreeSet::new(),
        }
    }

    /// One pass over every plan. Returns how many plans it looked at.
    pub async fn pass(&mut self) -> Result<usize, GateError> {
        let plans = observe::list_all(
            &Api::<UpgradePlan>::all(self.client.clone()),
            ListParams::default(),
            "upgradeplans",
        )
        .await?;
        let mut seen = BTreeSet::new();
        if !plans.is_empty() {
            let shared = observe::shared(&self.client).await?;
            for plan in &plans {
                let key = format!(
                    "{}/{}",
                    plan.metadata.namespace.as_deref().unwrap_or_default(),
                    plan.metadata.name.as_deref().unwrap_or_default()
                );
                seen.insert(key.clone());
                if let Err(e) = self.reconcile(&key, plan, &shared).await {
                    tracing::warn!(plan = %key, error = %e, "upgrade gate: the plan's pass failed; trying again next pass");
                }
            }
        }
        for gone in self.known.difference(&seen) {
            self.metrics.upgrade.forget(gone);
        }
        self.known = seen;
        Ok(plans.len())
    }

    async fn reconcile(
        &self,
        key: &str,
        plan: &UpgradePlan,
        shared: &observe::Shared,
    ) -> Result<(), GateError> {
        let valid = validate(&plan.spec);
        let view = observe::view(&self.client, plan, shared).await?;
        let before = plan.status.clone().unwrap_or_default();
        let now = self.clock.now();
        let d = decide(valid.as_ref(), &plan.spec.daemon_set, plan.metadata.generation, &before, &view, now);
        if self.dry_run {
            for step in &d.steps {
                tracing::info!(plan = %key, step = step.label(), "dry run: would {}", step.describe());
            }
            return Ok(());
        }
        if !(self.fence)() {
            return Ok(());
        }
        // The status first: a node taken up is written down before its pod goes, so a restart
        // finds it.
        if d.status != before
            && let Err(e) = apply::write_status(&self.client, plan, &d.status).await
        {
            tracing::warn!(plan = %key, error = %e, "upgrade gate: status not written; no step taken this pass");
            return Ok(());
        }
        let ns = plan.metadata.namespace.clone().unwrap_or_default();
        for step in &d.steps {
            if !(self.fence)() {
                tracing::warn!(plan = %key, "upgrade gate: leadership lapsed; not sent: {}", step.describe());
                return Ok(());
            }
            let outcome = apply::carry(&self.client, &ns, &plan.spec.daemon_set, key, step).await;
            self.metrics.upgrade.step(step.label(), outcome.label());
            tracing::info!(plan = %key, step = step.label(), outcome = outcome.label(), "upgrade gate: {}", step.describe());
        }
        for e in &d.events {
            if e.reason == "UpgradePaused" {
                self.metrics.upgrade.paused(key, d.status.reason.as_deref().unwrap_or("Unknown"));
            }
            if e.warning {
                tracing::warn!(plan = %key, reason = e.reason, "{}", e.message);
            } else {
                tracing::info!(plan = %key, reason = e.reason, "{}", e.message);
            }
            apply::emit(&self.client, plan, &self.instance, e).await;
        }
        self.metrics.upgrade.progress(
            key,
            d.status.stage,
            d.status.upgraded_nodes,
            phase_label(d.status.phase),
        );
        Ok(())
    }

    /// Passes every `every` until `shutdown` completes.
    pub async fn run(mut self, every: std::time::Duration, shutdown: impl std::future::Future<Output = ()>) {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut ticks = tokio::time::interval(every.max(std::time::Duration::from_millis(100)));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = ticks.tick() => {
                    if let Err(e) = self.pass().await {
                        tracing::warn!(error = %e, "upgrade gate: a pass could not read the cluster");
                    }
                }
            }
        }
    }
}
