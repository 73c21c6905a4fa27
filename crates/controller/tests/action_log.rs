//! The controller's one structured log line per action, against the in-memory fake cluster. In
//! a test binary of its own: tracing caches each callsite's interest process-wide, and another
//! test's thread registering the controller's callsites while no subscriber wanted them made
//! this test see no lines under load (`cargo test --workspace` on two busy cores).

mod common;

use common::Harness;
use devheal_controller::{AlwaysLeader, FakeCluster, ManualClock};
use devheal_core::{Duration, Health, Time};

const START: Time = Time::from_secs(1_800_000_000);
/// Log lines written as JSON into memory, one per line.
#[derive(Clone, Default)]
struct LogLines(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogLines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().map_err(|_| std::io::Error::other("poisoned"))?.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogLines {
    type Writer = LogLines;
    fn make_writer(&'a self) -> LogLines {
        self.clone()
    }
}

impl LogLines {
    fn parsed(&self) -> Vec<serde_json::Value> {
        let bytes = self.0.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8_lossy(&bytes)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    }
}

/// Each action the controller hands to the actuator is one log line naming the pod, its node
/// and devices, the policy, the incident (idempotency key), the action and its outcome; in dry
/// run its message says what would have been done.
#[tokio::test]
async fn each_action_is_one_log_line_with_what_it_names_and_its_outcome() {
    let lines = LogLines::default();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_writer(lines.clone())
        .with_max_level(tracing::Level::INFO)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    // Another test's thread may have registered the controller's callsites while no subscriber
    // wanted them (cached as "never"): ask every callsite again, now that this one does. Without
    // it the test saw no lines under load.
    tracing::callsite::rebuild_interest_cache();
    let clock = ManualClock::new(START);
    let fake = FakeCluster::new(clock.clone());
    fake.add_gpu_nodes(2, 8);
    fake.add_lone_pod("web", "infer-0");
    let mut h = Harness::start(&fake, &clock, AlwaysLeader, true);
    h.pump().await;
    clock.advance(Duration::from_secs(1));
    fake.set_gpu_health("node-00", 0, Health::Unhealthy, 48, "double bit ECC error");
    h.pump().await;
    assert_eq!(h.controller.metrics().action_count("evict_pod", "would_do"), 1);
    let logged = lines.parsed();
    let evictions: Vec<&serde_json::Value> =
        logged.iter().filter(|l| l["fields"]["action"] == "evict_pod").collect();
    assert_eq!(evictions.len(), 1, "{logged:#?}");
    let f = &evictions[0]["fields"];
    assert_eq!(f["pod"], "web/infer-0", "{f}");
    assert_eq!(f["node"], "node-00", "{f}");
    assert!(f["device"].as_str().is_some_and(|d| d.starts_with("node-00/")), "{f}");
    assert_eq!(f["outcome"], "would_do", "{f}");
    assert!(f["incident"].as_str().is_some_and(|k| !k.is_empty()), "{f}");
    assert!(f.get("policy").is_some(), "{f}");
    assert!(f["message"].as_str().is_some_and(|m| m.starts_with("dry run: would evict")), "{f}");
    assert_eq!(evictions[0]["level"], "INFO");
}
