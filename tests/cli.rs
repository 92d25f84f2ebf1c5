//! The `actorbus` binary: `--help` documents the commands, `demo` runs and
//! its own checks pass.

use std::process::Command;

fn actorbus() -> Command {
    Command::new(env!("CARGO_BIN_EXE_actorbus"))
}

#[test]
fn help_lists_the_commands() {
    let out = actorbus().arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("demo"), "{text}");
    let out = actorbus().args(["demo", "--help"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("--data-dir") && text.contains("--messages"), "{text}");
}

#[test]
fn demo_runs_every_pattern_and_its_checks_pass() {
    let dir = std::env::temp_dir().join(format!("actorbus-demo-{}", std::process::id()));
    let out = actorbus().args(["demo", "--messages", "600", "--data-dir"]).arg(&dir).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("ok   request-reply  600/600 answered"), "{stdout}");
    assert!(
        stdout.contains("ok   supervision    600 sent = 400 answered + 200 panics + 0 refused; 200 restarts"),
        "{stdout}"
    );
    assert!(stdout.contains("ok   async jobs     60/60 jobs succeeded"), "{stdout}");
    assert!(stdout.contains("ok   event sourcing 576 appends by 64 writers"), "{stdout}");
    assert!(dir.join("events.sqlite3").is_file(), "the event store lives in the data directory");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn unknown_commands_fail_with_usage() {
    let out = actorbus().arg("frobnicate").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Usage"));
}
