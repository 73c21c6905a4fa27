//! The report: the NodeDeviceHealth built from the loop's state, published when it changed in
//! substance, the gauges, and the last report read back at start.

use super::*;

impl LoopState {
    pub(super) fn publish(
        &mut self,
        publications: &watch::Sender<Option<Publication>>,
        transitions: &mpsc::Sender<DeviceTransition>,
    ) {
        if !self.ready {
            let heard = self.sources.contains_key("pod_resources");
            if !heard && self.started.elapsed() < WARM_UP {
                return;
            }
            self.ready = true;
        }
        let now = wall_now();
        let inventory = self.inventory();
        self.refresh_topology(&inventory);
        // Evidence that waited for a device now known: at its address, or below a port or
        // linked to an NVSwitch the evidence was about.
        if self.kernel.has_held() {
            for d in &inventory {
                if let Some(pci) = d.pci_address.as_deref() {
                    for (evidence, at) in self.kernel.take_held(pci) {
                        self.tracker.observe(&d.id, evidence, at);
                    }
                }
            }
            let placed = self.placed_devices();
            for (id, evidence, at) in self.kernel.take_held_upstream(&placed) {
                self.tracker.observe(&id, evidence, at);
            }
        }
        let ids: BTreeSet<String> = inventory.iter().map(|d| d.id.clone()).collect();
        if ids != self.inventory_ids {
            self.inventory_ids = ids;
            self.refresh.notify_one();
        }
        let sources: Vec<SourceStatus> = self.sources.values().cloned().collect();
        let mut object: NodeDeviceHealth = node_device_health(SnapshotInput {
            node: &self.node,
            boot_id: self.boot_id.as_deref(),
            now,
            devices: &inventory,
            tracker: &self.tracker,
            bindings: &self.bindings,
            identity: &self.identity,
            sources,
        });
        if let Some(status) = object.status.as_mut() {
            status.workloads = self.progress.workloads();
            status.network = self.network_status();
            status.resets = self.resets.book.answers();
            within_schema(status);
            for v in keep_within_schema(status) {
                tracing::warn!(field = %v.path, problem = %v.problem,
                    "dropped from the report: the API server would refuse the whole write for it");
            }
        }
        let Some(status) = object.status.as_ref() else { return };

        // Transitions, for Events.
        let mut changed_device = false;
        for d in &status.devices {
            let previous = self.last_health.insert(d.id.clone(), d.health);
            if previous == Some(d.health) || (previous.is_none() && d.health == Health::Healthy) {
                continue;
            }
            changed_device = true;
            let reasons: Vec<String> = d
                .reasons
                .iter()
                .map(|r| match r.code {
                    Some(code) => format!("{} (code {code}): {}", source_word(r.source), r.message),
                    None => format!("{}: {}", source_word(r.source), r.message),
                })
                .collect();
            let transition = DeviceTransition {
                device: d.id.clone(),
                resource: d.resource.clone(),
                from: previous,
                to: d.health,
                reasons: reasons.join("; "),
                pods: d.pods.iter().map(|p| format!("{}/{}", p.namespace, p.name)).collect(),
                reset: None,
            };
            if transitions.try_send(transition).is_err() {
                tracing::warn!(device = %d.id, "event queue full: transition not reported as an Event");
            }
        }
        if changed_device {
            // A device changed health: make sure the pods listed with it are current.
            self.refresh.notify_one();
        }

        self.update_gauges(status);
        let significant = significant(status);
        let summary = status.summary.clone().unwrap_or_default();
        let of = |h: Health| -> Vec<String> {
            status.devices.iter().filter(|d| d.health == h).map(|d| d.id.clone()).collect()
        };
        let condition = devices_condition(&summary, &of(Health::Unhealthy), &of(Health::Unknown));
        let publication = Some(Publication { object, condition });
        if self.last_sent.as_ref() == Some(&significant) {
            // Nothing that needs a write now; the heartbeat's write carries the latest counts,
            // sightings and progress (the value is replaced without waking the publisher).
            publications.send_if_modified(|latest| {
                if latest.is_some() {
                    *latest = publication;
                }
                false
            });
            return;
        }
        self.last_sent = Some(significant);
        publications.send_replace(publication);
    }

    pub(super) fn update_gauges(&self, status: &NodeDeviceHealthStatus) {
        let summary = status.summary.clone().unwrap_or_default();
        for (health, n) in [
            ("Healthy", summary.healthy),
            ("Degraded", summary.degraded),
            ("Unhealthy", summary.unhealthy),
            ("Unknown", summary.unknown),
        ] {
            self.metrics.devices.get_or_create(&HealthLabel { health: health.into() }).set(i64::from(n));
        }
        self.metrics.device_health.clear();
        let mut series = 0;
        for d in &status.devices {
            let value = match d.health {
                Health::Healthy => 0,
                Health::Degraded => 1,
                Health::Unhealthy => 2,
                Health::Unknown => 3,
            };
            let device = |namespace: &str, pod: &str, container: &str| DeviceLabels {
                UUID: d.id.clone(),
                resource: d.resource.clone(),
                pci_bus_id: d.pci_address.clone().unwrap_or_default(),
                namespace: namespace.to_string(),
                pod: pod.to_string(),
                container: container.to_string(),
            };
            let labels: Vec<DeviceLabels> = if d.pods.is_empty() {
                vec![device("", "", "")]
            } else {
                d.pods
                    .iter()
                    .map(|p| device(&p.namespace, &p.name, p.container.as_deref().unwrap_or("")))
                    .collect()
            };
            for l in labels {
                if series >= MAX_DEVICE_SERIES {
                    break;
                }
                self.metrics.device_health.get_or_create(&l).set(value);
                series += 1;
            }
        }
        for s in &status.sources {
            self.metrics
                .source_available
                .get_or_create(&SourceLabel { source: s.name.clone() })
                .set(i64::from(s.available));
        }
    }
}

pub(super) fn source_word(source: HealthSource) -> &'static str {
    match source {
        HealthSource::KernelLog => "kernel log",
        HealthSource::Nvml => "NVML",
        HealthSource::DevicePlugin => "device plugin",
        HealthSource::PodStatus => "pod status",
        HealthSource::Progress => "progress",
        HealthSource::Operator => "agent",
        HealthSource::AmdSmi => "amdsmi",
        HealthSource::Hlml => "hlml",
        HealthSource::FunctionalCheck => "functional check",
    }
}

/// The status without what changes on every write (heartbeat, a reason's count and last
/// sighting) or rides the heartbeat (a workload's last progress, step numbers and counts,
/// announced pause, and the wording of its error): a new window, a hang or a baseline shift
/// appearing or clearing, an error appearing or clearing, a pod coming or going are changes.
pub(super) fn significant(status: &NodeDeviceHealthStatus) -> NodeDeviceHealthStatus {
    let mut s = status.clone();
    s.last_heartbeat = None;
    for d in &mut s.devices {
        for r in &mut d.reasons {
            r.count = 1;
            r.last_seen = r.first_seen.clone();
        }
    }
    for w in &mut s.workloads {
        w.last_progress = None;
        w.step = None;
        w.steps = 0;
        w.paused_until = None;
        if let Some(error) = w.error.as_mut() {
            error.clear();
        }
    }
    s
}

/// The agent's last published status, read once at start: three tries with the publisher's
/// jittered delays between them (1–2 s, then 2–4 s: a fleet of agents restarted together does
/// not read in step), then none (the sources decide alone, as on a first start; said in the log).
pub(super) async fn read_last_report<P: Publisher>(
    publisher: &mut P,
    node: &str,
) -> Option<NodeDeviceHealthStatus> {
    let mut delays = crate::publish::retry_delays();
    for attempt in 1..=3 {
        match publisher.last_published(node).await {
            Ok(status) => return status,
            Err(e) if attempt < 3 => {
                let delay = delays.next().unwrap_or(std::time::Duration::from_secs(1));
                tracing::warn!(error = %e, attempt, retry_in = ?delay, "cannot read the last report yet; retrying");
                tokio::time::sleep(delay).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the last report: devices start from what the sources say");
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_is_cut_to_the_crd_bounds() {
        use devheal_k8s::crd::{BoundPod, DeviceStatus, HealthReasonStatus};
        let reason = HealthReasonStatus {
            source: HealthSource::KernelLog,
            code: Some(79),
            message: "é".repeat(2000),
            first_seen: k8s_time(Time::from_secs(1)),
            last_seen: k8s_time(Time::from_secs(1)),
            count: 1,
        };
        let pod = BoundPod { namespace: "ml".into(), name: "p".into(), uid: None, container: None };
        let device = DeviceStatus {
            id: "d".into(),
            resource: "r".into(),
            reasons: vec![reason; 40],
            pods: vec![pod; 70],
            ..DeviceStatus::default()
        };
        let mut status = NodeDeviceHealthStatus {
            devices: vec![device; 300],
            sources: vec![
                SourceStatus {
                    name: "s".into(),
                    message: Some("x".repeat(5000)),
                    ..SourceStatus::default()
                };
                70
            ],
            ..NodeDeviceHealthStatus::default()
        };
        within_schema(&mut status);
        assert_eq!((status.devices.len(), status.sources.len()), (256, 64));
        assert_eq!((status.devices[0].reasons.len(), status.devices[0].pods.len()), (32, 64));
        assert_eq!(status.devices[0].reasons[0].message.chars().count(), 1024);
        assert!(status.devices[0].reasons[0].message.ends_with("..."));
        assert_eq!(status.sources[0].message.as_deref().map(|m| m.chars().count()), Some(1024));
    }

    #[test]
    fn significance_ignores_heartbeat_counts_and_last_sightings() {
        use devheal_k8s::crd::{DeviceStatus, HealthReasonStatus};
        let reason = |count: u64, last: i64| HealthReasonStatus {
            source: HealthSource::KernelLog,
            code: Some(79),
            message: "m".into(),
            first_seen: k8s_time(Time::from_secs(1)),
            last_seen: k8s_time(Time::from_secs(last)),
            count,
        };
        let status = |count, last, heartbeat| NodeDeviceHealthStatus {
            last_heartbeat: Some(k8s_time(Time::from_secs(heartbeat))),
            devices: vec![DeviceStatus {
                id: "d".into(),
                resource: "r".into(),
                health: Health::Unhealthy,
                reasons: vec![reason(count, last)],
                ..DeviceStatus::default()
            }],
            ..NodeDeviceHealthStatus::default()
        };
        assert_eq!(significant(&status(1, 1, 5)), significant(&status(40, 9, 6)));
        let mut healthy = status(1, 1, 5);
        healthy.devices[0].health = Health::Healthy;
        assert_ne!(significant(&status(1, 1, 5)), significant(&healthy));
    }

    #[test]
    fn workload_progress_is_significant_for_windows_hangs_shifts_and_errors_only() {
        use devheal_k8s::crd::{ProgressFinding, ProgressWindow, WorkloadProgress};
        let workload = |last: i64, steps: u64, error: Option<&str>| WorkloadProgress {
            namespace: "ml".into(),
            name: "trainer-3".into(),
            last_progress: Some(k8s_time(Time::from_secs(last))),
            step: Some(steps),
            steps,
            window_seconds: 60,
            error: error.map(str::to_string),
            ..WorkloadProgress::default()
        };
        let status =
            |w: WorkloadProgress| NodeDeviceHealthStatus { workloads: vec![w], ..Default::default() };
        let base = significant(&status(workload(10, 5, None)));
        assert_eq!(base, significant(&status(workload(70, 900, None))), "progress rides the heartbeat");
        assert_eq!(
            significant(&status(workload(10, 5, Some("connection refused")))),
            significant(&status(workload(10, 5, Some("HTTP 500")))),
            "the error's wording is not a change"
        );
        assert_ne!(base, significant(&status(workload(10, 5, Some("HTTP 500")))), "an error appearing is");
        let mut windowed = workload(10, 5, None);
        windowed.windows.push(ProgressWindow {
            start: k8s_time(Time::from_secs(0)),
            samples: 6,
            step_seconds: 1.0,
        });
        assert_ne!(base, significant(&status(windowed)), "a new window is");
        let mut hung = workload(10, 5, None);
        hung.hang = Some(ProgressFinding {
            since: k8s_time(Time::from_secs(10)),
            detected_at: k8s_time(Time::from_secs(101)),
            magnitude: 1.0,
            message: "no progress".into(),
        });
        assert_ne!(base, significant(&status(hung.clone())), "a hang is");
        let mut shifted = workload(10, 5, None);
        shifted.baseline_shift = hung.hang.clone();
        assert_ne!(base, significant(&status(shifted)), "a baseline shift is");

        let mut long = workload(10, 5, Some(&"e".repeat(3000)));
        long.windows =
            vec![ProgressWindow { start: k8s_time(Time::from_secs(0)), samples: 1, step_seconds: 1.0 }; 12];
        let mut cut = NodeDeviceHealthStatus { workloads: vec![long; 300], ..Default::default() };
        within_schema(&mut cut);
        assert_eq!((cut.workloads.len(), cut.workloads[0].windows.len()), (256, 10));
        assert_eq!(cut.workloads[0].error.as_deref().map(|e| e.chars().count()), Some(1024));
    }
}
