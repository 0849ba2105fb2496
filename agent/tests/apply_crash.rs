//! Crash safety of `agentctl tune apply` and `rollback`, with fail points: the real binary is
//! aborted (as kill -9 would) before and after every write step, and during rollback; verify,
//! status, rollback and a new apply must then cope. Safe on any machine: every run points
//! NODE_AGENT_HOST_ROOT at a fixture tree and NODE_AGENT_STATE_DIR beside it.

mod support;

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Output;

use node_agent::audit::Caller;
use serde_json::Value as Json;
use support::{FixtureHost, Node, Preset, Spec};

/// Nine changes over sysctl (an exact value, a violated bound, tcp_congestion_control with its
/// side effect), plain kernel files (min_perf_pct, the clocksource), choice files (THP, an I/O
/// scheduler) and both of the agent's files.
const PROFILE: &str = r#"
[profile]
name = "crashy"

[sysctl]
"vm.swappiness" = 10
"net.core.rmem_max" = { min = 134217728 }
"net.ipv4.tcp_congestion_control" = "bbr"

[cpu]
min_perf_pct = 100

[memory]
transparent_hugepage = "never"

[[block]]
devices = "sda"
scheduler = "none"

[limits]
"*" = { nofile = 1000000 }

[clocksource]
current = "hpet"
"#;

const ALLOWED_CC: &str = "/proc/sys/net/ipv4/tcp_allowed_congestion_control";

/// The stock host (two CPUs: the profile has no per-CPU knob, and small trees keep the
/// hundreds of runs here quick) with bbr loaded, and the profile.
fn fixture() -> FixtureHost {
    let fx = FixtureHost::build(Spec {
        online: 2,
        possible: 2,
        preset: Preset::Stock,
        ..Spec::default()
    });
    fx.sysctl(
        "net.ipv4.tcp_available_congestion_control",
        "reno cubic bbr",
    );
    fx.profile("crashy", PROFILE);
    fx
}

struct Ran {
    code: Option<i32>,
    signal: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Ran {
    fn from(out: Output) -> Ran {
        Ran {
            code: out.status.code(),
            signal: out.status.signal(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    #[track_caller]
    fn expect_code(self, code: i32) -> Ran {
        assert_eq!(
            self.code,
            Some(code),
            "exit status (signal {:?})\n--- stdout\n{}\n--- stderr\n{}",
            self.signal,
            self.stdout,
            self.stderr
        );
        self
    }

    /// The process died of SIGABRT: the fail point fired.
    #[track_caller]
    fn expect_abort(self) -> Ran {
        assert_eq!(
            (self.code, self.signal),
            (None, Some(6)),
            "expected an abort at the fail point\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout,
            self.stderr
        );
        self
    }

    #[track_caller]
    fn json(&self) -> Json {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", self.stdout))
    }
}

fn run(fx: &FixtureHost, args: &[&str]) -> Ran {
    Ran::from(fx.agentctl(args))
}

fn run_failing(fx: &FixtureHost, args: &[&str], failpoint: &str) -> Ran {
    Ran::from(fx.agentctl_env(args, &[("NODE_AGENT_FAILPOINT", failpoint)]))
}

/// The host paths whose entry differs between two snapshots.
fn changed_paths(a: &BTreeMap<PathBuf, Node>, b: &BTreeMap<PathBuf, Node>) -> Vec<String> {
    let mut out: Vec<String> = a
        .keys()
        .chain(b.keys())
        .filter(|p| a.get(*p) != b.get(*p))
        .map(|p| format!("/{}", p.display()))
        .collect();
    out.sort();
    out.dedup();
    out
}

#[track_caller]
fn assert_same_tree(context: &str, want: &BTreeMap<PathBuf, Node>, got: &BTreeMap<PathBuf, Node>) {
    let diff = changed_paths(want, got);
    assert!(diff.is_empty(), "{context}: host tree differs at {diff:?}");
}

/// The host path of every planned change, in plan order, with symlinks (/sys/block/sda)
/// resolved as the snapshot sees them.
fn planned_paths(fx: &FixtureHost) -> Vec<String> {
    let plan = run(
        fx,
        &["tune", "apply", "-p", "crashy", "--dry-run", "-o", "json"],
    )
    .expect_code(0)
    .json();
    let root = std::fs::canonicalize(fx.root()).expect("canonical root");
    plan["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .map(|c| {
            let path = c["target"]["path"].as_str().expect("a file target");
            match std::fs::canonicalize(fx.real(path)) {
                Ok(real) => format!("/{}", real.strip_prefix(&root).expect("inside").display()),
                Err(_) => path.to_owned(), // not there yet: one of the agent's files
            }
        })
        .collect()
}

fn sorted(paths: &[String]) -> Vec<String> {
    let mut v = paths.to_vec();
    v.sort();
    v
}

fn audit_count(fx: &FixtureHost, action: &str) -> usize {
    std::fs::read_to_string(fx.state_dir().join("audit.log"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str::<Json>(l).expect("audit line is JSON"))
        .filter(|j| j["fields"]["NODE_AGENT_ACTION"] == action)
        .count()
}

fn status(fx: &FixtureHost) -> Json {
    run(fx, &["tune", "status", "-o", "json"])
        .expect_code(0)
        .json()
}

const N: usize = 9;

/// Aborts an apply at `point:k` and checks what verify, status and the tree say, then that
/// rollback returns the tree to `original`. `written` is how many steps had been written.
fn crash_then_rollback(point: &str, k: usize, written: usize) {
    let fx = fixture();
    let original = fx.snapshot();
    let paths = planned_paths(&fx);
    assert_eq!(paths.len(), N, "{paths:?}");

    let spec = format!("{point}:{k}");
    run_failing(&fx, &["tune", "apply", "-p", "crashy"], &spec).expect_abort();
    assert_eq!(
        changed_paths(&original, &fx.snapshot()),
        sorted(&paths[..written]),
        "{spec}: exactly the steps before the fail point are written"
    );
    assert_eq!(
        audit_count(&fx, "apply"),
        written,
        "{spec}: every write is audited"
    );

    let v = run(&fx, &["tune", "verify", "-p", "crashy", "-o", "json"]).expect_code(1);
    let interrupted = &v.json()["interrupted_apply"];
    assert_eq!(interrupted["profile"], "crashy", "{spec}: {}", v.stdout);
    assert_eq!(interrupted["steps_total"], N);
    assert_eq!(interrupted["steps_done"], k - 1, "{spec}");
    assert_eq!(interrupted["user"], Caller::current().user);
    let table = run(&fx, &["tune", "verify", "-p", "crashy"]).expect_code(1);
    assert!(
        table.stdout.contains(&format!(
            "WARNING: interrupted apply of crashy by {}",
            Caller::current().user
        )) && table
            .stdout
            .contains(&format!("{} of {N} steps done", k - 1)),
        "{spec}:\n{}",
        table.stdout
    );
    let st = status(&fx);
    assert_eq!(st["state"], "interrupted", "{spec}: {st:#}");
    assert_eq!(st["lock_holder_pid"], Json::Null);
    let text = run(&fx, &["tune", "status"]).expect_code(0);
    assert!(
        text.stdout.starts_with("state: interrupted\n") && text.stdout.contains("INTERRUPTED"),
        "{spec}:\n{}",
        text.stdout
    );

    let back = run(&fx, &["tune", "rollback"]).expect_code(0);
    assert_same_tree(&format!("{spec} then rollback"), &original, &fx.snapshot());
    assert!(
        !fx.state_dir().join("journal.json").exists(),
        "{spec}: {}",
        back.stdout
    );
    assert_eq!(status(&fx)["state"], "not-applied");
    let v = run(&fx, &["tune", "verify", "-p", "crashy", "-o", "json"]).expect_code(1);
    assert!(v.json().get("interrupted_apply").is_none(), "{spec}");
}

#[test]
fn crash_before_each_step_then_rollback_restores_the_original() {
    for k in 1..=N {
        crash_then_rollback("apply-before-step", k, k - 1);
    }
}

#[test]
fn crash_after_each_step_then_rollback_restores_the_original() {
    for k in 1..=N {
        crash_then_rollback("apply-after-step", k, k);
    }
}

/// After a crash at `point:k` for every k, a new apply finishes the job (ending exactly where
/// an uninterrupted apply ends) and a rollback still returns to the original.
fn crash_then_apply_then_rollback(point: &str) {
    let clean = {
        let fx = fixture();
        run(&fx, &["tune", "apply", "-p", "crashy"]).expect_code(0);
        fx.snapshot()
    };
    for k in 1..=N {
        let spec = format!("{point}:{k}");
        let fx = fixture();
        let original = fx.snapshot();
        run_failing(&fx, &["tune", "apply", "-p", "crashy"], &spec).expect_abort();

        let again = run(&fx, &["tune", "apply", "-p", "crashy"]).expect_code(0);
        assert!(
            again.stdout.starts_with(&format!(
                "note: the previous apply (crashy by {}, {} of {N} steps done) had been \
                 interrupted\n",
                Caller::current().user,
                k - 1
            )),
            "{spec}:\n{}",
            again.stdout
        );
        assert_same_tree(&format!("{spec} then apply"), &clean, &fx.snapshot());
        let v = run(&fx, &["tune", "verify", "-p", "crashy", "-o", "json"]).expect_code(0);
        assert!(v.json().get("interrupted_apply").is_none(), "{spec}");
        assert_eq!(status(&fx)["state"], "applied", "{spec}");

        run(&fx, &["tune", "rollback"]).expect_code(0);
        assert_same_tree(
            &format!("{spec}, apply, rollback"),
            &original,
            &fx.snapshot(),
        );
    }
}

#[test]
fn apply_after_a_crash_before_a_step_completes_and_rollback_restores_the_original() {
    crash_then_apply_then_rollback("apply-before-step");
}

#[test]
fn apply_after_a_crash_after_a_step_completes_and_rollback_restores_the_original() {
    crash_then_apply_then_rollback("apply-after-step");
}

/// A rollback aborted before any of its steps leaves a journal a second rollback finishes.
#[test]
fn crash_during_rollback_then_rollback_again_restores_the_original() {
    // Nine changes plus tcp_allowed_congestion_control, recorded as a side effect.
    const ENTRIES: usize = N + 1;
    for k in 1..=ENTRIES {
        let fx = fixture();
        let original = fx.snapshot();
        run(&fx, &["tune", "apply", "-p", "crashy"]).expect_code(0);
        // The kernel adds bbr to the allowed list when it becomes the default.
        fx.sysctl("net.ipv4.tcp_allowed_congestion_control", "reno cubic bbr");
        let applied = fx.snapshot();
        assert_eq!(changed_paths(&original, &applied).len(), ENTRIES);
        assert!(changed_paths(&original, &applied).contains(&ALLOWED_CC.to_owned()));

        let spec = format!("rollback-before-step:{k}");
        run_failing(&fx, &["tune", "rollback"], &spec).expect_abort();
        assert_eq!(
            changed_paths(&original, &fx.snapshot()).len(),
            ENTRIES - (k - 1),
            "{spec}: the steps before the fail point are restored"
        );
        assert_eq!(audit_count(&fx, "rollback"), k - 1, "{spec}");
        assert_eq!(status(&fx)["state"], "applied", "{spec}");

        let back = run(&fx, &["tune", "rollback"]).expect_code(0);
        assert!(
            back.stdout
                .starts_with(&format!("restored {} value(s):\n", ENTRIES - (k - 1))),
            "{spec}:\n{}",
            back.stdout
        );
        assert_same_tree(&format!("{spec} then rollback"), &original, &fx.snapshot());
        assert_eq!(status(&fx)["state"], "not-applied");
    }
}
