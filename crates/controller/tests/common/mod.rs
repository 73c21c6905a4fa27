//! What the controller's fake-cluster tests share: a controller process against the fake cluster.
#![allow(dead_code)]

use std::sync::Arc;

use devheal_controller::cluster::FakeActuator;
use devheal_controller::{
    Cluster, ClusterEvent, Controller, ControllerSettings, FakeCluster, Leadership, LoopHealth, ManualClock,
    MemoryStateStore, Metrics,
};
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};

/// A controller process against `fake`, with its own metrics.
fn controller<L: Leadership>(
    fake: &FakeCluster,
    clock: &ManualClock,
    leadership: L,
    settings: ControllerSettings,
) -> Controller<FakeActuator, L, ManualClock> {
    let dry_run = settings.dry_run;
    Controller::new(
        settings,
        fake.actuator(dry_run),
        leadership,
        clock.clone(),
        Arc::new(Metrics::new()),
        Arc::new(LoopHealth::new(std::time::Duration::from_secs(60))),
    )
}

pub struct Harness<L: Leadership> {
    pub controller: Controller<FakeActuator, L, ManualClock>,
    pub events: BoxStream<'static, ClusterEvent>,
}

impl<L: Leadership> Harness<L> {
    /// A freshly started controller process: a new index and engine, lists from the fake's
    /// current state, then its changes.
    pub fn start(fake: &FakeCluster, clock: &ManualClock, leadership: L, dry_run: bool) -> Self {
        let settings = ControllerSettings { dry_run, ..ControllerSettings::default() };
        Harness { controller: controller(fake, clock, leadership, settings), events: fake.events() }
    }

    /// [`Harness::start`] with `settings`, keeping the engine's durable state in `store` and
    /// restoring what an earlier "process" saved there before any event.
    pub async fn start_with_store(
        fake: &FakeCluster,
        clock: &ManualClock,
        leadership: L,
        settings: ControllerSettings,
        store: &MemoryStateStore,
    ) -> Self {
        let mut controller =
            controller(fake, clock, leadership, settings).with_state_store(Box::new(store.clone()));
        controller.restore_state().await;
        Harness { controller, events: fake.events() }
    }

    /// Handle every event that is waiting (actions make more; they are handled too).
    pub async fn pump(&mut self) {
        while let Some(Some(event)) = self.events.next().now_or_never() {
            self.controller.handle_event(event).await;
        }
    }

    pub async fn tick(&mut self) {
        self.controller.tick().await;
        self.pump().await;
    }
}
