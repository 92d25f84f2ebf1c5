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
    for line in [
        "ok   queues         600/600 processed by 4 workers, 6 redeliveries, 0 lost; priority order kept",
        "ok   dead letters   2 dead-lettered (max_deliveries after 3 attempts, expired), 1 redriven and processed, 1 purged",
        "ok   pub/sub        600 published; wildcards, a drop_oldest reader (584 dropped), a filter",
        "ok   fan-out/fan-in all, 200 ms: timeout, first 2: first_n, quorum: quorum",
        "ok   claim check    1 MiB stored once, claimed twice, freed by the last reader (0 left)",
    ] {
        assert!(stdout.contains(line), "missing `{line}` in:\n{stdout}");
    }
    assert!(dir.join("events.sqlite3").is_file(), "the event store lives in the data directory");
    assert!(dir.join("dlq.sqlite3").is_file(), "so does the DLQ");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn unknown_commands_fail_with_usage() {
    let out = actorbus().arg("frobnicate").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Usage"));
}
