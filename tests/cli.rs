//! The `actorbus` binary: `--help` documents the commands, `demo` runs and
//! its own checks pass, `dlq` administers a running server.

#[path = "common/server.rs"]
mod server;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn actorbus() -> Command {
    Command::new(env!("CARGO_BIN_EXE_actorbus"))
}

#[test]
fn help_lists_the_commands() {
    let out = actorbus().arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("demo") && text.contains("dlq"), "{text}");
    let out = actorbus().args(["dlq", "--help"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for word in ["list", "get", "redrive", "purge", "--server", "--token", "ACTORBUS_ADMIN_TOKEN", "--json"] {
        assert!(text.contains(word), "dlq --help mentions {word}: {text}");
    }
    let out = actorbus().args(["dlq", "list", "--help"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for word in ["--source", "--reason", "--since", "--until", "--limit", "--after"] {
        assert!(text.contains(word), "dlq list --help mentions {word}: {text}");
    }
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

const TOKEN: &str = "cli-token";

/// `actorbus dlq <args>` against `server`, without a token from the
/// environment unless `env_token` gives one.
fn dlq(server: &server::Server, args: &[&str], env_token: Option<&str>) -> Output {
    let mut cmd = actorbus();
    cmd.arg("dlq").args(args).args(["--server", &format!("http://{}", server.addr)]);
    cmd.env_remove("ACTORBUS_ADMIN_TOKEN");
    if let Some(t) = env_token {
        cmd.env("ACTORBUS_ADMIN_TOKEN", t);
    }
    cmd.output().unwrap()
}

fn text(out: &Output) -> (String, String) {
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn dlq_commands_against_a_running_server() {
    let server = server::Server::start(&format!(
        "admin_token = \"{TOKEN}\"\n[[jobs]]\nkind = \"fail\"\nworker = \"builtin:fail\"\n"
    ));
    for message in ["no disk", "no memory"] {
        let r = server.post_json("/v1/jobs/fail", &format!(r#"{{"message": "{message}"}}"#));
        assert_eq!(r.status, 202);
    }
    let started = Instant::now();
    while server.get("/v1/dlq").json()["entries"].as_array().unwrap().len() < 2 {
        assert!(started.elapsed() < Duration::from_secs(10), "the failed jobs never reached the DLQ");
        std::thread::sleep(Duration::from_millis(20));
    }

    let out = dlq(&server, &["list"], None);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].starts_with("ID") && lines[0].contains("SOURCE") && lines[0].contains("REASON"), "{stdout}");
    assert!(lines[1].contains("job/fail") && lines[1].contains("failed: no disk"), "{stdout}");
    assert!(lines[2].contains("failed: no memory"), "{stdout}");
    assert!(stdout.contains("2 entries"), "{stdout}");

    let out = dlq(&server, &["list", "--json", "--limit", "1"], None);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let entries = json["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 1);
    let first = entries[0]["id"].as_str().unwrap().to_owned();
    let next = json["next_after"].as_str().unwrap().to_owned();
    let out = dlq(&server, &["list", "--after", &next, "--reason", "failed", "--source", "job/fail"], None);
    let (stdout, _) = text(&out);
    assert!(stdout.contains("no memory") && !stdout.contains("no disk") && stdout.contains("1 entry"), "{stdout}");

    let out = dlq(&server, &["get", &first], None);
    let (stdout, _) = text(&out);
    assert!(out.status.success());
    assert!(stdout.contains("history:") && stdout.contains("\"job_id\""), "{stdout}");

    // Mutations without the token: the server's 401, exit 1.
    let out = dlq(&server, &["purge", "--all"], None);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("401") && stderr.contains("missing_token"), "{stderr}");
    let out = dlq(&server, &["purge", &first, "--token", "wrong"], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).1.contains("403"), "{}", text(&out).1);
    assert_eq!(server.get("/v1/dlq").json()["entries"].as_array().unwrap().len(), 2, "nothing purged");

    // Usage errors: exit 2, nothing sent.
    for args in [vec!["purge"], vec!["purge", &first, "--all"], vec!["redrive", "--per-second", "5", &first]] {
        let out = dlq(&server, &args, Some(TOKEN));
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out).1);
    }
    let out = actorbus().args(["dlq", "list", "--server", "https://127.0.0.1:1"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).1.contains("https is not supported"));

    // With the token (from the environment): purge one, then redrive the other.
    let out = dlq(&server, &["purge", &first], Some(TOKEN));
    assert!(out.status.success(), "{:?}", text(&out));
    assert!(text(&out).0.contains("purged 1"));
    let out = dlq(&server, &["redrive", "--source", "job/fail", "--token", TOKEN], None);
    assert!(out.status.success(), "{:?}", text(&out));
    assert!(text(&out).0.contains("redriven 1, failed 0"), "{}", text(&out).0);
    let out = dlq(&server, &["get", &first], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).1.contains("404"));

    drop(server);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed = listener.local_addr().unwrap();
    drop(listener);
    let out = actorbus().args(["dlq", "list", "--server", &format!("http://{closed}")]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).1.contains("cannot reach the server"), "{}", text(&out).1);
}
