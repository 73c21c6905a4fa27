//! `kubectl-devheal`: the `kubectl devheal` plugin. kubectl runs any `kubectl-<name>` found on
//! PATH as `kubectl <name>`; this binary reads what devheal and its agents wrote to the cluster
//! and tells an operator what is wrong and what devheal did about it (`status`, `explain POD`,
//! `history NODE`). It only reads: it never changes the cluster.
#![forbid(unsafe_code)]

// The offline `devheal explain` (its engine run over Pod, NodeDeviceHealth and FailurePolicy
// objects) is shared with the `devheal` binary; its file-reading and printing are not used here.
#[allow(dead_code)]
#[path = "../explain.rs"]
mod explain;
// The Kubernetes client set up as the agent and controller do; `own_name` is not used here.
#[allow(dead_code)]
#[path = "../kube_env.rs"]
mod kube_env;
#[path = "../plugin/mod.rs"]
mod plugin;

fn main() -> std::process::ExitCode {
    plugin::main()
}
