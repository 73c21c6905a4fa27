//! End-to-end tests against a real Kubernetes control plane: kube-apiserver, etcd,
//! kube-controller-manager and kube-scheduler built from their Go modules (`testenv/`) and
//! started on loopback by `scripts/e2e.sh`, which runs this binary with `--ignored` and the
//! control plane's coordinates in `DEVHEAL_E2E_*`.
//!
//! The test plays the kubelet (Node objects, pods bound with `spec.nodeName`, pod status through
//! the status subresource, the kubelet's PodResources and Registration gRPC services on Unix
//! sockets); devheal's own binaries run as on a cluster: `devheal agent --fake-devices` processes,
//! each with its node's service-account token (bound to its DaemonSet pod on that node), and
//! `devheal controller` processes with the controller's service-account token, so RBAC and the
//! admission policy from `deploy/` are in force.
//!
//! The tests run one at a time (`--test-threads=1`): they share one Lease and cluster-scoped
//! kinds (Nodes, NodeDeviceHealth). Each uses its own namespace, its own node names, and a pod
//! label (`e2e.devheal.io/test`) that its controller selects on.

mod harness;
mod setup;

mod actuator;
mod admission;
mod agent_path;
mod dra;
mod gang_job;
mod helm;
mod in_place;
mod leader;
mod pdb;
mod plugin;
mod replace;
mod reset;
mod trust;
mod upgrade;
