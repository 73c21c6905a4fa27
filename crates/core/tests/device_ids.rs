//! Every device id shape in `tests/data/device-ids/` (real shapes from the NVIDIA and AMD device
//! plugins, Intel's GPU plugin, GKE's plugin and the NVIDIA DRA driver, each with its source) reads as the fixture
//! says: what it names, its replica number, and the key it is tracked under.

use devheal_core::DeviceKey;
use devheal_core::identity::{canonical_key, parse_device_id};
use serde_json::Value;

const FILES: [&str; 5] = [
    "nvidia-k8s-device-plugin.json",
    "intel-gpu-plugin.json",
    "nvidia-dra-driver-gpu.json",
    "rocm-k8s-device-plugin.json",
    "gke-device-plugin.json",
];

fn fixture(name: &str) -> Value {
    let path = format!("{}/tests/data/device-ids/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn every_fixture_id_reads_as_its_source_says() {
    let mut checked = 0;
    for file in FILES {
        let f = fixture(file);
        let node = f["node"]["name"].as_str().unwrap_or("node-1");
        for case in f["cases"].as_array().expect("cases") {
            let resource = case["resource"].as_str().expect("resource");
            let id = case["id"].as_str().expect("id");
            let what = format!("{file}: {} ({resource} {id})", case["what"]);
            assert!(
                case["from"].as_str().is_some_and(|u| u.starts_with("https://github.com/")),
                "{what}: no source"
            );
            let parsed = parse_device_id(resource, id);
            assert_eq!(serde_json::to_value(&parsed.id).expect("json"), case["parsed"], "{what}");
            assert_eq!(parsed.replica.map(u64::from), case["replica"].as_u64(), "{what}");
            let key = canonical_key(&DeviceKey::new(node, resource, id));
            let want = &case["canonical"];
            assert_eq!(
                (key.resource.as_str(), key.id.as_str()),
                (want[0].as_str().unwrap(), want[1].as_str().unwrap()),
                "{what}"
            );
            assert_eq!(key.node, node);
            // Canonical keys are fixed points.
            assert_eq!(canonical_key(&key), key, "{what}");
            checked += 1;
        }
    }
    assert!(checked >= 30, "only {checked} cases");
}

/// Every form of one device has one key: the replicas of a GPU, its index and its PCI id in the
/// device plugin's fixture; the PodResources, agent, pod-status and CDI forms of one DRA device.
#[test]
fn the_forms_of_one_dra_device_share_one_key() {
    let f = fixture("nvidia-dra-driver-gpu.json");
    let node = f["node"]["name"].as_str().expect("node");
    let keys: Vec<DeviceKey> = f["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .filter(|c| c["canonical"][1] == "gpu.nvidia.com/kind-dra-1-worker/gpu-0")
        .map(|c| {
            canonical_key(&DeviceKey::new(node, c["resource"].as_str().unwrap(), c["id"].as_str().unwrap()))
        })
        .collect();
    assert_eq!(keys.len(), 4, "PodResources, agent, pod status, CDI");
    assert!(keys.windows(2).all(|w| w[0] == w[1]), "{keys:?}");
}
