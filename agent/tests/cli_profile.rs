//! `agentctl profile list`, `agentctl profile check`, help and usage errors, through the real
//! binary.

use std::path::Path;
use std::process::{Command, Output};

/// The two directories agentctl searches after NODE_AGENT_PROFILE_PATH. They are not under the
/// test's control, so rows from them are tolerated after ours.
const DEFAULT_PROFILE_DIRS: [&str; 2] =
    ["/etc/node-agent/profiles", "/usr/share/node-agent/profiles"];

fn agentctl(args: &[&str], profile_path: &str, host_root: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_agentctl"))
        .args(args)
        .env("NODE_AGENT_PROFILE_PATH", profile_path)
        .env("NODE_AGENT_HOST_ROOT", host_root)
        .output()
        .unwrap()
}

/// For commands that need no profiles or host.
fn agentctl_bare(args: &[&str]) -> Output {
    let empty = tempfile::tempdir().unwrap();
    agentctl(args, empty.path().to_str().unwrap(), empty.path())
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).unwrap()
}

fn write(dir: &Path, name: &str, contents: &str) {
    std::fs::write(dir.join(name), contents).unwrap();
}

const SMALL: &str = "[sysctl]\n\"vm.swappiness\" = 10\n";

/// Two profile directories: `shared` is in both, so the second one's copy is shadowed.
struct Dirs {
    first: tempfile::TempDir,
    second: tempfile::TempDir,
    host: tempfile::TempDir,
}

impl Dirs {
    fn new() -> Dirs {
        let d = Dirs {
            first: tempfile::tempdir().unwrap(),
            second: tempfile::tempdir().unwrap(),
            host: tempfile::tempdir().unwrap(),
        };
        write(d.first.path(), "shared.toml", SMALL);
        write(d.first.path(), "alpha.toml", SMALL);
        write(d.second.path(), "zeta.toml", SMALL);
        write(d.second.path(), "shared.toml", SMALL);
        write(d.second.path(), "beta.toml", SMALL);
        // Not profiles: another extension, and a name `--profile` could not ask for.
        write(d.second.path(), "README.md", "profiles\n");
        write(d.second.path(), "bad name.toml", SMALL);
        d
    }

    fn profile_path(&self) -> String {
        format!(
            "{}:{}",
            self.first.path().display(),
            self.second.path().display()
        )
    }

    fn run(&self, args: &[&str]) -> Output {
        agentctl(args, &self.profile_path(), self.host.path())
    }

    /// (name, path, shadowed) in the order agentctl must list them: by directory, then name.
    fn expected(&self) -> Vec<(String, String, bool)> {
        let row = |dir: &Path, name: &str, shadowed| {
            let path = dir.join(format!("{name}.toml")).display().to_string();
            (name.to_owned(), path, shadowed)
        };
        vec![
            row(self.first.path(), "alpha", false),
            row(self.first.path(), "shared", false),
            row(self.second.path(), "beta", false),
            row(self.second.path(), "shared", true),
            row(self.second.path(), "zeta", false),
        ]
    }
}

/// Rows after ours may only come from the default directories of the machine running the test.
fn assert_only_default_dirs<'a>(paths: impl Iterator<Item = &'a str>) {
    for path in paths {
        assert!(
            DEFAULT_PROFILE_DIRS.iter().any(|d| path.starts_with(d)),
            "unexpected profile {path}"
        );
    }
}

#[test]
fn profile_list_table_marks_shadowed_profiles() {
    let dirs = Dirs::new();
    let out = dirs.run(&["profile", "list"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(out.stderr.is_empty(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let rows: Vec<Vec<&str>> = stdout
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    let expected = dirs.expected();
    assert!(rows.len() >= expected.len(), "{stdout}");
    for (row, (name, path, shadowed)) in rows.iter().zip(&expected) {
        let mut want = vec![name.as_str(), path.as_str()];
        if *shadowed {
            want.push("(shadowed)");
        }
        assert_eq!(*row, want, "{stdout}");
    }
    assert_only_default_dirs(rows[expected.len()..].iter().map(|r| r[1]));
}

#[test]
fn profile_list_json() {
    let dirs = Dirs::new();
    let out = dirs.run(&["profile", "list", "--output", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let listed = json.as_array().unwrap();
    let expected: Vec<serde_json::Value> = dirs
        .expected()
        .into_iter()
        .map(|(name, path, shadowed)| {
            serde_json::json!({ "name": name, "path": path, "shadowed": shadowed })
        })
        .collect();
    assert!(listed.len() >= expected.len(), "{json}");
    assert_eq!(listed[..expected.len()], expected[..]);
    assert_only_default_dirs(
        listed[expected.len()..]
            .iter()
            .map(|p| p["path"].as_str().unwrap()),
    );
}

/// A fixture /proc/sys holding the keys a profile names, but one.
fn host_with_sysctls(root: &Path, keys: &[&str]) {
    for key in keys {
        let path = root.join("proc/sys").join(key.replace('.', "/"));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, "0\n").unwrap();
    }
}

const WITH_TYPO: &str = r#"[sysctl]
"net.core.somaxconn" = { min = 65535 }
"net.ipv4.tcp_low_latency" = 1
"net.ipv4.tcp_slow_start_afer_idle" = 0
"#;

#[test]
fn profile_check_valid_file_warns_about_sysctls_this_kernel_lacks() {
    let dirs = Dirs::new();
    host_with_sysctls(
        dirs.host.path(),
        &[
            "net.core.somaxconn",
            "net.ipv4.tcp_low_latency",
            "net.ipv4.tcp_slow_start_after_idle",
        ],
    );
    let file = dirs.first.path().join("typo.toml");
    std::fs::write(&file, WITH_TYPO).unwrap();

    let out = dirs.run(&["profile", "check", file.to_str().unwrap()]);
    // A warning, not an error: the key may belong to a module loaded later.
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(out.stderr.is_empty(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        format!(
            "{}: valid profile typo (1 file)\nwarning: sysctl \
             net.ipv4.tcp_slow_start_afer_idle: this kernel has no \
             /proc/sys/net/ipv4/tcp_slow_start_afer_idle (a typo, or a module not loaded?)\n",
            file.display()
        )
    );

    let out = dirs.run(&["profile", "check", "-o", "json", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["valid"], true);
    assert_eq!(json["name"], "typo");
    assert_eq!(json["files"], serde_json::json!([file]));
    assert_eq!(
        json["warnings"],
        serde_json::json!([
            "sysctl net.ipv4.tcp_slow_start_afer_idle: this kernel has no \
             /proc/sys/net/ipv4/tcp_slow_start_afer_idle (a typo, or a module not loaded?)"
        ])
    );
}

#[test]
fn profile_check_by_name_follows_includes() {
    let dirs = Dirs::new();
    host_with_sysctls(dirs.host.path(), &["vm.swappiness", "vm.dirty_ratio"]);
    write(
        dirs.second.path(),
        "child.toml",
        "[profile]\ninclude = [\"shared\"]\n\n[sysctl]\n\"vm.dirty_ratio\" = 5\n",
    );
    let out = dirs.run(&["profile", "check", "child"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // `shared` is found beside child.toml, not in the first directory.
    let child = dirs.second.path().join("child.toml");
    assert_eq!(
        text(&out.stdout),
        format!("{}: valid profile child (2 files)\n", child.display())
    );
    let out = dirs.run(&["profile", "check", "-o", "json", "child"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        json["files"],
        serde_json::json!([dirs.second.path().join("shared.toml"), child])
    );
    assert_eq!(json["warnings"], serde_json::json!([]));
}

#[test]
fn help_and_version() {
    for (args, usage) in [
        (&["--help"][..], "Usage: agentctl [OPTIONS] <COMMAND>"),
        (&["help"], "Usage: agentctl [OPTIONS] <COMMAND>"),
        (
            &["profile", "--help"],
            "Usage: agentctl profile [OPTIONS] <COMMAND>",
        ),
        (
            &["profile", "check", "--help"],
            "Usage: agentctl profile check [OPTIONS] <FILE>",
        ),
        (
            &["profile", "list", "--help"],
            "Usage: agentctl profile list [OPTIONS]",
        ),
        (
            &["tune", "verify", "--help"],
            "Usage: agentctl tune verify [OPTIONS]",
        ),
    ] {
        let out = agentctl_bare(args);
        let stdout = text(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(stdout.contains(usage), "{args:?}:\n{stdout}");
    }
    let top = text(&agentctl_bare(&["--help"]).stdout);
    for needle in ["tune", "profile", "Exit codes: 0", "2 invalid input"] {
        assert!(top.contains(needle), "{needle}:\n{top}");
    }
    let out = agentctl_bare(&["--version"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        text(&out.stdout),
        format!("agentctl {}\n", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn usage_errors_exit_2() {
    for (args, needle) in [
        (&["--bogus"][..], "unexpected argument '--bogus'"),
        (
            &["profile", "list", "--bogus"],
            "unexpected argument '--bogus'",
        ),
        (&["frobnicate"], "unrecognized subcommand 'frobnicate'"),
        (
            &["profile", "frobnicate"],
            "unrecognized subcommand 'frobnicate'",
        ),
        (
            &["tune", "verify"],
            "no --profile given, node-agentd is not running, and no agent.profile is set in",
        ),
        (&["profile", "check"], "<FILE>"),
        (
            &["--output", "yaml", "profile", "list"],
            "invalid value 'yaml'",
        ),
        (&[], "Usage: agentctl"),
    ] {
        let out = agentctl_bare(args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}: {}", text(&out.stdout));
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}
