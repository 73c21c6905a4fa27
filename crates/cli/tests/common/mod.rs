//! What the end-to-end tests of the `devheal` binary share: running it with arguments and an
//! optional standard input, and a kubeconfig of an API server that does not answer.

use std::io::Write;
use std::process::{Command, Output, Stdio};

/// Run the built `devheal` with `args`, feeding `stdin` (or nothing) and closing it.
pub fn devheal(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_devheal"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the devheal binary runs");
    let mut pipe = child.stdin.take().expect("stdin is piped");
    if let Some(bytes) = stdin {
        pipe.write_all(bytes).expect("write stdin");
    }
    drop(pipe);
    child.wait_with_output().expect("devheal finishes")
}

/// A kubeconfig in `dir` naming an API server that does not answer (nothing listens on port 1);
/// its path.
#[allow(dead_code)] // not every test binary that shares this module uses it
pub fn dead_kubeconfig(dir: &std::path::Path) -> String {
    let path = dir.join("kubeconfig");
    let kubeconfig = "apiVersion: v1\nkind: Config\ncurrent-context: c\n\
        clusters: [{name: k, cluster: {server: 'https://127.0.0.1:1'}}]\n\
        users: [{name: u, user: {token: t}}]\n\
        contexts: [{name: c, context: {cluster: k, user: u}}]\n";
    std::fs::write(&path, kubeconfig).expect("write kubeconfig");
    path.to_string_lossy().to_string()
}
