//! The daemon's settings (agent.toml): every file in tests/data/settings must be rejected with
//! exactly the message in `CASES`, by the library and by `agentctl` (exit 2, the message on
//! stderr, nothing on stdout); a file that sets every key parses to exactly the typed values;
//! sections left out take their defaults.

#[path = "support/corpus.rs"]
mod corpus;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use node_agent::settings::{
    Agent, Enforce, EnforceTargets, Health, LatencyBounds, Listen, Mode, PercentBounds,
    ProfileSpec, Role, Roles, RpcLimits, Settings, SettingsError, Timeout, Tls, Units,
};

/// `{dir}` stands for the corpus directory.
const CASES: &[(&str, &str)] = &[
    // TOML itself, and the sections.
    (
        "syntax-error",
        "{dir}/syntax-error.toml:2:8: string values must be quoted, expected literal string",
    ),
    (
        "duplicate-key",
        "{dir}/duplicate-key.toml:3:1: duplicate key `mode`",
    ),
    (
        "unknown-section-limits",
        "{dir}/unknown-section-limits.toml:2:2: unknown section `limits`, expected one of \
         `agent`, `enforce`, `listen`, `tls`, `roles`, `rpc`, `units`, `health`",
    ),
    (
        "unknown-top-level-key",
        "{dir}/unknown-top-level-key.toml:1:1: unknown top-level key `profile`, expected one of \
         `agent`, `enforce`, `listen`, `tls`, `roles`, `rpc`, `units`, `health`",
    ),
    // [agent]
    (
        "agent-unknown-key",
        "{dir}/agent-unknown-key.toml:2:1: agent: unknown field `profil`, expected one of \
         `profile`, `mode`, `verify_interval`, `apply_on_start`",
    ),
    (
        "agent-mode-invalid",
        "{dir}/agent-mode-invalid.toml:2:8: agent.mode: invalid mode \"enforcing\": expected \
         observe or enforce",
    ),
    (
        "agent-mode-type",
        "{dir}/agent-mode-type.toml:2:8: agent.mode: invalid type: boolean `true`, expected \
         \"observe\" or \"enforce\"",
    ),
    (
        "agent-apply-on-start-type",
        "{dir}/agent-apply-on-start-type.toml:2:18: agent.apply_on_start: invalid type: string \
         \"yes\", expected a boolean",
    ),
    (
        "agent-interval-too-short",
        "{dir}/agent-interval-too-short.toml:2:19: agent.verify_interval: 500ms is out of range: \
         must be from 1s to 1h",
    ),
    (
        "agent-interval-too-long",
        "{dir}/agent-interval-too-long.toml:2:19: agent.verify_interval: 2h is out of range: \
         must be from 1s to 1h",
    ),
    (
        "agent-interval-syntax",
        "{dir}/agent-interval-syntax.toml:2:19: agent.verify_interval: invalid duration \
         \"10 seconds\": expected e.g. \"30s\", \"500ms\", \"2min\"",
    ),
    (
        "agent-profile-relative",
        "{dir}/agent-profile-relative.toml:2:11: agent.profile: invalid profile \
         \"profiles/host.toml\": a path must be absolute; a name is looked up on the profile \
         search path without '/' or .toml",
    ),
    (
        "agent-profile-bad-name",
        "{dir}/agent-profile-bad-name.toml:2:11: agent.profile: invalid profile name \
         \"trading latency\": 1-64 characters of letters, digits, '-', '_', '.', starting with a \
         letter or digit",
    ),
    (
        "agent-profile-dotdot",
        "{dir}/agent-profile-dotdot.toml:2:11: agent.profile: invalid path \
         \"/etc/node-agent/profiles/../host.toml\": empty, '.' and '..' components are not allowed",
    ),
    // [enforce]: the error points at the entry, or at the list for duplicates.
    (
        "enforce-unknown-target",
        "{dir}/enforce-unknown-target.toml:5:22: enforce.targets[1]: unknown enforce target \
         \"thp\": expected a class (sysctl, cpu, memory, block, limits, mount, clocksource, \
         isolation, units) or a key prefix within one, such as memory.transparent_hugepage",
    ),
    (
        "enforce-cmdline",
        "{dir}/enforce-cmdline.toml:2:22: enforce.targets[1]: enforce target \"cmdline\" is not \
         allowed: the kernel command line changes only with `agentctl isolation bootloader \
         --write` and a reboot",
    ),
    (
        "enforce-memory-key",
        "{dir}/enforce-memory-key.toml:2:12: enforce.targets[0]: unknown enforce target \
         \"memory.thp\": memory items are memory.transparent_hugepage, memory.swap, memory.ksm, \
         memory.hugepages",
    ),
    (
        "enforce-wildcard-partial",
        "{dir}/enforce-wildcard-partial.toml:2:12: enforce.targets[0]: invalid enforce target \
         \"cpu.*governor\": '*' stands for a whole component",
    ),
    (
        "enforce-duplicate",
        "{dir}/enforce-duplicate.toml:2:11: enforce.targets: sysctl is listed twice",
    ),
    (
        "enforce-redundant",
        "{dir}/enforce-redundant.toml:2:11: enforce.targets: memory.ksm is already covered by \
         memory",
    ),
    (
        "enforce-min-interval-zero",
        "{dir}/enforce-min-interval-zero.toml:2:16: enforce.min_interval: 0s is out of range: \
         must be from 1s to 24h",
    ),
    (
        "enforce-max-per-hour-zero",
        "{dir}/enforce-max-per-hour-zero.toml:2:16: enforce.max_per_hour: 0 is out of range: \
         must be from 1 to 3600",
    ),
    (
        "enforce-max-per-hour-negative",
        "{dir}/enforce-max-per-hour-negative.toml:2:16: enforce.max_per_hour: -1 is out of range: \
         must be from 1 to 3600",
    ),
    // [listen]
    (
        "listen-socket-relative",
        "{dir}/listen-socket-relative.toml:2:10: listen.socket: invalid path \"run/agent.sock\": \
         must be absolute",
    ),
    (
        "listen-socket-dotdot",
        "{dir}/listen-socket-dotdot.toml:2:10: listen.socket: invalid path \
         \"/run/node-agent/../agent.sock\": empty, '.' and '..' components are not allowed",
    ),
    (
        "listen-socket-too-long",
        "{dir}/listen-socket-too-long.toml:2:10: listen.socket: socket path \
         \"/run/node-agent/xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\
         xxxxxxxxxxxxxxxxx.sock\" is 111 bytes: a Unix socket path must fit in 107",
    ),
    (
        "listen-group-invalid",
        "{dir}/listen-group-invalid.toml:2:16: listen.socket_group: invalid group name \
         \"node agent admin\": 1-32 characters of letters, digits, '_' and '-', starting with a \
         letter or '_'",
    ),
    (
        "listen-tcp-hostname",
        "{dir}/listen-tcp-hostname.toml:2:7: listen.tcp: invalid address \
         \"agent.example.net:9443\": expected IP:PORT such as \"0.0.0.0:9443\" or \"[::1]:9443\"",
    ),
    (
        "listen-tcp-port-zero",
        "{dir}/listen-tcp-port-zero.toml:2:7: listen.tcp: invalid address \"0.0.0.0:0\": port 0 \
         would pick a random port; give a fixed one",
    ),
    // Across sections, still at the key: no TCP without TLS.
    (
        "listen-tcp-without-tls",
        "{dir}/listen-tcp-without-tls.toml:3:7: listen.tcp: 0.0.0.0:9443 needs [tls] with cert, \
         key and client_ca: there is no plaintext TCP listener",
    ),
    (
        "listen-metrics-invalid",
        "{dir}/listen-metrics-invalid.toml:2:11: listen.metrics: invalid address \"127.0.0.1\": \
         expected IP:PORT such as \"0.0.0.0:9443\" or \"[::1]:9443\", or \"off\"",
    ),
    (
        "listen-metrics-same-port",
        "{dir}/listen-metrics-same-port.toml:3:11: listen.metrics: 127.0.0.1:9443 and listen.tcp \
         0.0.0.0:9443 would bind the same port",
    ),
    // [tls]: all three or none.
    (
        "tls-partial",
        "{dir}/tls-partial.toml:4:1: tls: give all of cert, key and client_ca, or leave out \
         [tls] (missing: key, client_ca)",
    ),
    (
        "tls-relative-path",
        "{dir}/tls-relative-path.toml:3:7: tls.key: invalid path \"tls/server.key\": must be \
         absolute",
    ),
    (
        "tls-unknown-key",
        "{dir}/tls-unknown-key.toml:4:1: tls: unknown field `ca`, expected one of `cert`, `key`, \
         `client_ca`",
    ),
    // [roles]: rules across the two lists point at the table.
    (
        "roles-both",
        "{dir}/roles-both.toml:1:1: roles: \"ops-console.example.net\" is in both observers and \
         operators: give each certificate one role",
    ),
    (
        "roles-duplicate",
        "{dir}/roles-duplicate.toml:1:1: roles: \"collector.example.net\" is listed twice in \
         observers",
    ),
    (
        "roles-empty-cn",
        "{dir}/roles-empty-cn.toml:2:14: roles.operators[0]: invalid common name \"\": must not \
         be empty",
    ),
    (
        "roles-cn-spaces",
        "{dir}/roles-cn-spaces.toml:2:14: roles.observers[0]: invalid common name \
         \"collector.example.net \": leading or trailing spaces would never match a certificate",
    ),
    (
        "roles-unknown-key",
        "{dir}/roles-unknown-key.toml:2:1: roles: unknown field `admins`, expected `observers` \
         or `operators`",
    ),
    // [rpc]
    (
        "rpc-message-too-small",
        "{dir}/rpc-message-too-small.toml:2:21: rpc.max_message_bytes: 1024 bytes is out of \
         range: must be from 64 KiB (65536) to 64 MiB (67108864)",
    ),
    (
        "rpc-message-too-big",
        "{dir}/rpc-message-too-big.toml:2:21: rpc.max_message_bytes: 1073741824 bytes is out of \
         range: must be from 64 KiB (65536) to 64 MiB (67108864)",
    ),
    (
        "rpc-streams-zero",
        "{dir}/rpc-streams-zero.toml:2:26: rpc.max_concurrent_streams: 0 is out of range: must \
         be from 1 to 4096",
    ),
    (
        "rpc-timeout-too-long",
        "{dir}/rpc-timeout-too-long.toml:2:19: rpc.request_timeout: 2h is out of range: must be \
         from 1s to 1h",
    ),
    (
        "rpc-connections-zero",
        "{dir}/rpc-connections-zero.toml:2:19: rpc.max_connections: 0 is out of range: must be \
         from 1 to 65536",
    ),
    // [health]
    (
        "health-bounds-missing-crit",
        "{dir}/health-bounds-missing-crit.toml:2:8: health.disk: missing field `crit`",
    ),
    (
        "health-bounds-unknown-key",
        "{dir}/health-bounds-unknown-key.toml:2:34: health.inodes: unknown field `critical`, expected `warn` or `crit`",
    ),
    (
        "health-clock-zero",
        "{dir}/health-clock-zero.toml:2:19: health.clock_max_error: 0s is out of range: must be from 1ms to 10s",
    ),
    (
        "health-cpu-sample-too-short",
        "{dir}/health-cpu-sample-too-short.toml:2:23: health.cpu_sample_interval: 5ms is out of range: must be from 10ms to 5s",
    ),
    (
        "health-endpoint-bad-host",
        "{dir}/health-endpoint-bad-host.toml:2:9: health.endpoints.cache: invalid endpoint address \"cache host:6379\": the host is neither an IP address nor a DNS name (expected HOST:PORT such as \"10.0.0.5:9000\", \"[fd00::5]:9000\" or \"db1.example.net:5432\")",
    ),
    (
        "health-endpoint-bad-name",
        "{dir}/health-endpoint-bad-name.toml:2:1: health.endpoints: invalid endpoint name \"Exchange\": 1-64 characters of lowercase letters, digits, '-' and '_', starting with a letter",
    ),
    (
        "health-endpoint-no-port",
        "{dir}/health-endpoint-no-port.toml:2:18: health.endpoints.exchange-front: invalid endpoint address \"10.0.0.5\": no port (expected HOST:PORT such as \"10.0.0.5:9000\", \"[fd00::5]:9000\" or \"db1.example.net:5432\")",
    ),
    (
        "health-endpoint-port-zero",
        "{dir}/health-endpoint-port-zero.toml:2:12: health.endpoints.database: invalid endpoint address \"db1.example.net:0\": the port must be a number from 1 to 65535 (expected HOST:PORT such as \"10.0.0.5:9000\", \"[fd00::5]:9000\" or \"db1.example.net:5432\")",
    ),
    (
        "health-interval-too-short",
        "{dir}/health-interval-too-short.toml:2:12: health.interval: 1s is out of range: must be from 5s to 1h",
    ),
    (
        "health-mount-duplicate",
        "{dir}/health-mount-duplicate.toml:1:1: health: mounts: /var is listed twice (entry 3)",
    ),
    (
        "health-mount-relative",
        "{dir}/health-mount-relative.toml:2:16: health.mounts[1]: invalid path \"var\": must be absolute",
    ),
    (
        "health-percent-too-big",
        "{dir}/health-percent-too-big.toml:2:27: health.cpu.crit: 101 is out of range: must be from 1 to 100",
    ),
    (
        "health-percent-zero",
        "{dir}/health-percent-zero.toml:2:19: health.memory.warn: 0 is out of range: must be from 1 to 100",
    ),
    (
        "health-tcp-timeout-below-crit",
        "{dir}/health-tcp-timeout-below-crit.toml:1:1: health: tcp_timeout 1s is below tcp_latency.crit 2s: a connect slower than crit must still be measured",
    ),
    (
        "health-tcp-timeout-too-long",
        "{dir}/health-tcp-timeout-too-long.toml:2:15: health.tcp_timeout: 1min is out of range: must be from 1ms to 10s",
    ),
    (
        "health-tcp-warn-above-crit",
        "{dir}/health-tcp-warn-above-crit.toml:2:15: health.tcp_latency: warn 50ms is above crit 30ms: warn must be at most crit",
    ),
    (
        "health-unknown-key",
        "{dir}/health-unknown-key.toml:2:1: health: unknown field `thresholds`, expected one of `interval`, `mounts`, `disk`, `inodes`, `memory`, `cpu`, `cpu_sample_interval`, `tcp_latency`, `tcp_timeout`, `clock_max_error`, `endpoints`",
    ),
    (
        "health-warn-above-crit",
        "{dir}/health-warn-above-crit.toml:2:8: health.disk: warn 95 is above crit 85: warn must be at most crit",
    ),
    (
        "listen-metrics-word",
        "{dir}/listen-metrics-word.toml:2:11: listen.metrics: invalid address \"on\": expected IP:PORT such as \"0.0.0.0:9443\" or \"[::1]:9443\", or \"off\"",
    ),
];

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/settings")
}

fn case_path(case: &str) -> PathBuf {
    corpus_dir().join(format!("{case}.toml"))
}

fn expected(template: &str) -> String {
    template.replace("{dir}", &corpus_dir().display().to_string())
}

/// Runs `check` on every case and fails once, listing every case that went wrong.
fn for_each_case(check: impl Fn(&str, &str) -> Result<(), String>) {
    corpus::for_each_case(CASES, |case, template| check(case, &expected(template)));
}

#[test]
fn corpus_and_table_list_the_same_cases() {
    corpus::assert_corpus_matches(&corpus_dir(), CASES);
}

#[test]
fn library_rejects_each_case_with_its_message() {
    for_each_case(
        |case, expected| match Settings::load(&case_path(case), true) {
            Ok(s) => Err(format!("{case}: loaded as {s:?}")),
            Err(e @ SettingsError::Invalid { .. }) if e.to_string() == expected => Ok(()),
            Err(e) => Err(format!(
                "{case}:\n  got:    {e}\n  wanted: {expected}\n  ({e:?})"
            )),
        },
    );
}

/// `agentctl units start` reads the settings before it touches the bus: an invalid file is
/// exit 2 with the message, and the (unreachable) bus is never asked.
#[test]
fn agentctl_rejects_each_case_with_exit_2() {
    for_each_case(|case, expected| {
        let path = case_path(case);
        let out = Command::new(env!("CARGO_BIN_EXE_agentctl"))
            .arg("--settings")
            .arg(&path)
            .args(["units", "start", "market-data"])
            .env("DBUS_SYSTEM_BUS_ADDRESS", "unix:path=/nonexistent/bus")
            .env_remove("NODE_AGENT_SETTINGS")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let want = format!("agentctl: error: {expected}\n");
        if out.status.code() != Some(2) || !stdout.is_empty() || stderr != want {
            return Err(format!(
                "{case}: exit {:?}\n  stdout: {stdout:?}\n  stderr: {stderr:?}\n  wanted: {want:?}",
                out.status.code()
            ));
        }
        Ok(())
    });
}

/// Every key set, none to its default.
const FULL: &str = r#"
[agent]
profile = "/etc/node-agent/profiles/host-a17.toml"
mode = "enforce"
verify_interval = "2s"
apply_on_start = true

[enforce]
targets = ["sysctl.net", "cpu.*.governor", "memory.transparent_hugepage", "memory.swap", "mount"]
min_interval = "5min"
max_per_hour = 12

[listen]
socket = "/run/node-agent/admin.sock"
socket_group = "trading-ops"
tcp = "[::]:9443"
metrics = "10.0.0.17:9100"

[tls]
cert = "/etc/node-agent/tls/host-a17.crt"
key = "/etc/node-agent/tls/host-a17.key"
client_ca = "/etc/node-agent/tls/fleet-ca.crt"

[roles]
observers = ["collector.example.net", "grafana.example.net"]
operators = ["ops-console.example.net"]

[rpc]
max_message_bytes = 16777216
max_concurrent_streams = 16
request_timeout = "1min"
max_connections = 32

[units]
order = ["md-feed", "engine.service"]
job_timeout = "45s"
drain = { "engine.service" = "20s" }

[health]
interval = "1min"
mounts = ["/", "/var/lib/trading"]
disk = { warn = 80, crit = 90 }
inodes = { warn = 70, crit = 99 }
memory = { warn = 60, crit = 80 }
cpu = { warn = 50, crit = 75 }
cpu_sample_interval = "100ms"
tcp_latency = { warn = "2ms", crit = "5ms" }
tcp_timeout = "500ms"
clock_max_error = "2ms"
endpoints = { exchange-front = "10.20.0.5:9000", database = "db1.example.net:5432", cache = "[fd00::7]:6379" }
"#;

fn secs(s: u64) -> Timeout {
    Timeout(Duration::from_secs(s))
}

#[test]
fn full_file_parses_to_the_typed_values() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, FULL).unwrap();
    let got = Settings::load(&path, true).unwrap();
    let targets = [
        "sysctl.net",
        "cpu.*.governor",
        "memory.transparent_hugepage",
        "memory.swap",
        "mount",
    ];
    let want = Settings {
        agent: Agent {
            profile: Some(ProfileSpec::Path(
                "/etc/node-agent/profiles/host-a17.toml".into(),
            )),
            mode: Mode::Enforce,
            verify_interval: secs(2),
            apply_on_start: true,
        },
        enforce: Enforce {
            targets: EnforceTargets::new(targets.iter().map(|t| t.parse().unwrap()).collect())
                .unwrap(),
            min_interval: secs(300),
            max_per_hour: 12,
        },
        listen: Listen {
            socket: "/run/node-agent/admin.sock".into(),
            socket_group: "trading-ops".parse().unwrap(),
            tcp: Some("[::]:9443".parse::<SocketAddr>().unwrap()),
            metrics: Some("10.0.0.17:9100".parse::<SocketAddr>().unwrap()),
        },
        tls: Some(Tls {
            cert: "/etc/node-agent/tls/host-a17.crt".into(),
            key: "/etc/node-agent/tls/host-a17.key".into(),
            client_ca: "/etc/node-agent/tls/fleet-ca.crt".into(),
        }),
        roles: Roles {
            observers: vec![
                "collector.example.net".parse().unwrap(),
                "grafana.example.net".parse().unwrap(),
            ],
            operators: vec!["ops-console.example.net".parse().unwrap()],
        },
        rpc: RpcLimits {
            max_message_bytes: 16 << 20,
            max_concurrent_streams: 16,
            request_timeout: secs(60),
            max_connections: 32,
        },
        units: Units {
            order: vec!["md-feed".parse().unwrap(), "engine".parse().unwrap()],
            job_timeout: secs(45),
            drain: [("engine".parse().unwrap(), secs(20))].into(),
        },
        health: Health {
            interval: secs(60),
            mounts: vec!["/".into(), "/var/lib/trading".into()],
            disk: PercentBounds::new(80, 90).unwrap(),
            inodes: PercentBounds::new(70, 99).unwrap(),
            memory: PercentBounds::new(60, 80).unwrap(),
            cpu: PercentBounds::new(50, 75).unwrap(),
            cpu_sample_interval: Timeout(Duration::from_millis(100)),
            tcp_latency: LatencyBounds {
                warn: Timeout(Duration::from_millis(2)),
                crit: Timeout(Duration::from_millis(5)),
            },
            tcp_timeout: Timeout(Duration::from_millis(500)),
            clock_max_error: Timeout(Duration::from_millis(2)),
            endpoints: [
                ("exchange-front", "10.20.0.5:9000"),
                ("database", "db1.example.net:5432"),
                ("cache", "[fd00::7]:6379"),
            ]
            .iter()
            .map(|(n, a)| (n.parse().unwrap(), a.parse().unwrap()))
            .collect(),
        },
    };
    assert_eq!(got, want);
    // What the checks are held to.
    let checks = got.health.checks();
    assert_eq!(checks.tcp_latency_ms.crit, 5.0);
    assert_eq!(checks.disk.warn, 80.0);
    assert_eq!(checks.mounts, ["/", "/var/lib/trading"]);
    let names: Vec<&str> = checks.endpoints.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["cache", "database", "exchange-front"]);

    // What the daemon asks of them.
    assert_eq!(
        got.agent.profile.unwrap().to_string(),
        "/etc/node-agent/profiles/host-a17.toml"
    );
    assert_eq!(
        got.roles.role_of("grafana.example.net"),
        Some(Role::Observer)
    );
    assert_eq!(
        got.roles.role_of("ops-console.example.net"),
        Some(Role::Operator)
    );
    assert_eq!(got.roles.role_of("ops-console.example.net."), None);
    let ts: Vec<String> = got
        .enforce
        .targets
        .selectors()
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(ts, targets);
}

#[test]
fn sections_left_out_take_their_defaults() {
    let s =
        Settings::parse("[agent]\nprofile = \"trading-latency\"\nmode = \"enforce\"\n").unwrap();
    assert_eq!(
        s.agent.profile,
        Some(ProfileSpec::Name("trading-latency".parse().unwrap()))
    );
    assert_eq!(s.agent.mode, Mode::Enforce);
    assert_eq!(s.agent.verify_interval, secs(10));
    assert!(!s.agent.apply_on_start);
    let d = Settings::default();
    assert_eq!(
        (&s.enforce, &s.listen, &s.tls, &s.roles, &s.rpc, &s.units),
        (&d.enforce, &d.listen, &d.tls, &d.roles, &d.rpc, &d.units)
    );
    // Keys left out of a section take theirs too.
    let s =
        Settings::parse("[enforce]\nmax_per_hour = 5\n[listen]\nsocket_group = \"ops\"\n").unwrap();
    assert_eq!(s.enforce.max_per_hour, 5);
    assert_eq!(s.enforce.targets, EnforceTargets::default());
    assert_eq!(s.enforce.min_interval, secs(60));
    assert_eq!(s.listen.socket, Path::new("/run/node-agent/agent.sock"));
    assert_eq!(s.listen.socket_group.as_str(), "ops");
}

#[test]
fn the_defaults() {
    let d = Settings::default();
    assert_eq!(d.agent.profile, None);
    assert_eq!(d.agent.mode, Mode::Observe);
    assert_eq!(d.agent.verify_interval, secs(10));
    assert!(
        !d.agent.apply_on_start,
        "installing the package never retunes a host"
    );
    let targets: Vec<String> = d
        .enforce
        .targets
        .selectors()
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(
        targets,
        ["sysctl", "cpu", "memory.transparent_hugepage", "block"]
    );
    assert_eq!(
        (d.enforce.min_interval, d.enforce.max_per_hour),
        (secs(60), 30)
    );
    assert_eq!(d.listen.socket, Path::new("/run/node-agent/agent.sock"));
    assert_eq!(d.listen.socket_group.as_str(), "node-agent-admin");
    assert_eq!((d.listen.tcp, &d.tls), (None, &None));
    // Metrics on, loopback only.
    assert_eq!(
        d.listen.metrics,
        Some("127.0.0.1:9750".parse::<SocketAddr>().unwrap())
    );
    // The operations manual's thresholds.
    let h = d.health.checks();
    assert_eq!(
        (h.disk.warn, h.memory.warn, h.memory.crit),
        (85.0, 70.0, 85.0)
    );
    assert_eq!((h.cpu.warn, h.cpu.crit), (70.0, 85.0));
    assert_eq!((h.tcp_latency_ms.warn, h.tcp_latency_ms.crit), (10.0, 30.0));
    assert!(h.endpoints.is_empty());
    assert!(d.roles.observers.is_empty() && d.roles.operators.is_empty());
    assert_eq!(
        d.rpc,
        RpcLimits {
            max_message_bytes: 4 << 20,
            max_concurrent_streams: 64,
            request_timeout: secs(30),
            max_connections: 256,
        }
    );
}

/// The packaged settings are the defaults but for one documented difference: the package
/// names the shipped trading profile so node-agentd starts, in observe mode, never applying
/// on its own (docs/ARCHITECTURE.md, "Packages").
#[test]
fn shipped_example_is_the_defaults() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/agent.toml");
    let mut shipped = Settings::load(&path, true).unwrap();
    assert_eq!(
        shipped.agent.profile,
        Some(ProfileSpec::Name("trading-latency".parse().unwrap()))
    );
    assert_eq!(shipped.agent.mode, Mode::Observe);
    assert!(!shipped.agent.apply_on_start);
    shipped.agent.profile = None;
    assert_eq!(shipped, Settings::default());
}

#[test]
fn tls_without_tcp_and_bounds_are_accepted() {
    // Certificates may be installed before the TCP listener is turned on.
    let s = Settings::parse(
        "[tls]\ncert = \"/a.crt\"\nkey = \"/a.key\"\nclient_ca = \"/ca.crt\"\n\
         [agent]\nverify_interval = \"1s\"\n[rpc]\nmax_message_bytes = 65536\n\
         request_timeout = 3600\n",
    )
    .unwrap();
    assert!(s.tls.is_some() && s.listen.tcp.is_none());
    assert_eq!(s.agent.verify_interval, secs(1));
    assert_eq!(s.rpc.max_message_bytes, 65536);
    assert_eq!(s.rpc.request_timeout, secs(3600));
    // Metrics on another port of the TCP listener's address is fine.
    let s = Settings::parse(
        "[listen]\ntcp = \"0.0.0.0:9443\"\nmetrics = \"127.0.0.1:9750\"\n\
         [tls]\ncert = \"/a.crt\"\nkey = \"/a.key\"\nclient_ca = \"/ca.crt\"\n",
    )
    .unwrap();
    assert_eq!(s.listen.metrics.unwrap().port(), 9750);
}

/// A missing file at the default path means the defaults; one named explicitly is an error.
/// The daemon reloads on SIGHUP by calling `load` again and keeps its settings on error.
#[test]
fn missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.toml");
    assert_eq!(Settings::load(&path, false).unwrap(), Settings::default());
    let e = Settings::load(&path, true).unwrap_err();
    assert!(matches!(e, SettingsError::Read { .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        format!("failed to read settings {}", path.display())
    );
}
