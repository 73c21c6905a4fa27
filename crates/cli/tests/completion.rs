//! `devheal completion SHELL` through the built binary: every shell clap_complete supports
//! gets a script that knows the subcommands and their flags.

use std::process::Command;

mod common;
use common::devheal;

#[test]
fn every_shell_gets_a_script_naming_the_subcommands_and_flags() {
    for shell in ["bash", "zsh", "fish", "powershell", "elvish"] {
        let output = devheal(&["completion", shell], None);
        assert!(output.status.success(), "{shell}: {}", String::from_utf8_lossy(&output.stderr));
        let script = String::from_utf8(output.stdout).expect("utf-8 script");
        // Fish names long flags without their dashes (`-l exit-zero`).
        for word in ["classify-log", "degradation-eval", "completion", "exit-zero", "scenario"] {
            assert!(script.contains(word), "{shell} script lacks {word}");
        }
    }
}

#[test]
fn the_bash_script_is_valid_bash_and_completes_subcommands() {
    let output = devheal(&["completion", "bash"], None);
    assert!(output.status.success());
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("devheal.bash");
    std::fs::write(&path, &output.stdout).expect("write script");
    // Load the script and ask it what follows `devheal cla`, as bash would on TAB.
    let probe = format!(
        "source {}; COMP_WORDS=(devheal cla); COMP_CWORD=1; COMP_LINE='devheal cla'; COMP_POINT=11; \
         _devheal devheal cla devheal; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        path.display()
    );
    let run = Command::new("bash").args(["--norc", "-c", &probe]).output().expect("bash runs");
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let replies = String::from_utf8_lossy(&run.stdout);
    assert_eq!(replies.trim(), "classify-log", "{replies}");
}

#[test]
fn an_unknown_shell_is_a_usage_error() {
    let output = devheal(&["completion", "tcsh"], None);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("tcsh") && stderr.contains("bash"), "{stderr}");
}
