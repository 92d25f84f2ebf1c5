//! Crash tests re-execute their own test binary as a child process running
//! one `#[ignore]`d test, told where its data lives by an environment
//! variable, and SIGKILL it at a random moment.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

const DIR_VAR: &str = "ACTORBUS_CRASH_DIR";

/// The data directory when this process is a crash child; `None` when the
/// ignored child test is run by hand.
pub fn child_dir() -> Option<PathBuf> {
    std::env::var_os(DIR_VAR).map(PathBuf::from)
}

/// Starts this binary running only `test` on `dir`, stdout piped.
pub fn spawn_child(test: &str, dir: &Path) -> Child {
    let exe = std::env::current_exe().expect("current exe");
    Command::new(exe)
        .args(["--exact", test, "--ignored", "--nocapture", "--test-threads", "1"])
        .env(DIR_VAR, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child")
}

/// Forwards the child's stdout lines to a channel (until EOF).
pub fn lines_of(child: &mut Child) -> mpsc::Receiver<String> {
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}
