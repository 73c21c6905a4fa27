//! What the end-to-end tests of the `devheal` binary share: running it with arguments and an
//! optional standard input.

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
