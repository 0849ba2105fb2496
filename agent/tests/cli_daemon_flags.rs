//! agentctl's daemon-facing flags and commands with bad input, through the binary: each error
//! names what is wrong, exits 2 (or 3 when nothing answers), and changes nothing.

use std::path::Path;
use std::process::{Command, Output};

/// agentctl with its own settings file (a socket nobody listens on) and state directory.
fn agentctl(dir: &Path, args: &[&str]) -> Output {
    let settings = dir.join("agent.toml");
    std::fs::write(
        &settings,
        format!(
            "[listen]\nsocket = \"{}\"\nsocket_group = \"root\"\nmetrics = \"off\"\n",
            dir.join("agent.sock").display()
        ),
    )
    .unwrap();
    Command::new(env!("CARGO_BIN_EXE_agentctl"))
        .args(args)
        .env("NODE_AGENT_SETTINGS", &settings)
        .env("NODE_AGENT_STATE_DIR", dir.join("state"))
        .output()
        .unwrap()
}

fn expect(dir: &Path, args: &[&str], code: i32, stderr: &str) {
    let out = agentctl(dir, args);
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
    assert!(out.stdout.is_empty(), "{args:?}");
    assert!(err.contains(stderr), "{args:?}: {err}");
}

#[test]
fn remote_flags_are_checked_before_anything_is_dialled() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let missing = dir.join("missing.crt");
    let m = missing.to_str().unwrap();
    for (args, code, msg) in [
        (
            &["--remote", "agent1:9443", "daemon", "status"][..],
            2,
            "agentctl: error: --remote needs --cert, --key and --ca",
        ),
        (
            &["--cert", "a.crt", "daemon", "status"],
            2,
            "agentctl: error: --cert, --key and --ca go with --remote",
        ),
        (
            &[
                "--remote", "agent1", "--cert", m, "--key", m, "--ca", m, "daemon", "status",
            ],
            2,
            "agentctl: error: invalid --remote \"agent1\": expected HOST:PORT",
        ),
        (
            &[
                "--remote",
                "agent1:99999",
                "--cert",
                m,
                "--key",
                m,
                "--ca",
                m,
                "daemon",
                "status",
            ],
            2,
            "the port must be a number from 1 to 65535",
        ),
        (
            &[
                "--remote",
                "agent1:9443",
                "--cert",
                m,
                "--key",
                m,
                "--ca",
                m,
                "daemon",
                "status",
            ],
            3,
            &format!("cannot read {m}"),
        ),
        (
            &[
                "--remote",
                "agent1:9443",
                "--cert",
                m,
                "--key",
                m,
                "--ca",
                m,
                "tune",
                "verify",
                "-p",
                "base",
            ],
            2,
            "--profile verifies this host locally; --remote asks that agent to verify its own \
             profile: use one of them",
        ),
        (
            &[
                "--remote",
                "agent1:9443",
                "--cert",
                m,
                "--key",
                m,
                "--ca",
                m,
                "tune",
                "apply",
                "--local",
            ],
            2,
            "--local and --remote exclude each other",
        ),
        (
            &[
                "--remote",
                "agent1:9443",
                "--cert",
                m,
                "--key",
                m,
                "--ca",
                m,
                "units",
                "watch",
            ],
            2,
            "units watch follows this host's bus only; run it on the host",
        ),
    ] {
        expect(dir, args, code, msg);
    }
    assert!(!dir.join("state").exists(), "nothing was written");
}

#[test]
fn daemon_commands_without_a_daemon_exit_3() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let socket = dir.join("agent.sock");
    expect(
        dir,
        &["daemon", "status"],
        3,
        &format!(
            "agentctl: error: node-agentd is not running (no socket at {})",
            socket.display()
        ),
    );
    expect(
        dir,
        &["enforce", "resume"],
        3,
        "node-agentd is not running: there is no enforcement to pause or resume",
    );
    // Without a daemon, a profile and no agent.profile: nothing to verify.
    expect(
        dir,
        &["tune", "verify"],
        2,
        "no --profile given, node-agentd is not running, and no agent.profile is set in",
    );
}

#[test]
fn enforce_pause_durations_are_validated() {
    let d = tempfile::tempdir().unwrap();
    for (value, msg) in [
        ("0s", "must be above 0 and at most 24h"),
        ("25h", "must be above 0 and at most 24h"),
        ("soon", "invalid duration \"soon\""),
    ] {
        expect(
            d.path(),
            &["enforce", "pause", "--for", value],
            2,
            &format!("invalid value '{value}' for '--for <DURATION>'"),
        );
        expect(d.path(), &["enforce", "pause", "--for", value], 2, msg);
    }
}

#[test]
fn certs_generate_refuses_bad_names_and_writes_nothing() {
    let d = tempfile::tempdir().unwrap();
    let pki = d.path().join("pki");
    let p = pki.to_str().unwrap();
    expect(
        d.path(),
        &[
            "certs",
            "generate",
            "--dir",
            p,
            "--server",
            "bad name!",
            "--observer",
            "c",
        ],
        2,
        "invalid server name \"bad name!\"",
    );
    expect(
        d.path(),
        &[
            "certs",
            "generate",
            "--dir",
            p,
            "--server",
            "localhost",
            "--observer",
            "a/b",
        ],
        2,
        "\"a/b\"",
    );
    expect(
        d.path(),
        &["certs", "generate", "--dir", p, "--observer", "c"],
        2,
        "--server <NAME>",
    );
    assert!(
        !pki.exists() || std::fs::read_dir(&pki).unwrap().next().is_none(),
        "nothing written"
    );
}
