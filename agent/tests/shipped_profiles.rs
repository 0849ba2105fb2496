//! The profiles shipped in tuning-profiles/: each loads, the two reference profiles hold exactly
//! what their sources list, includes merge as documented, and `tune show` round-trips.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use node_agent::profile::types::{
    EnergyPerfBias, Governor, IoScheduler, LimitDomain, LimitItem, LimitValue, SwapState,
    SysctlKey, ThpDefrag, ThpEnabled,
};
use node_agent::profile::{
    self, BlockRule, Cpu, Expected, Idle, LimitSetting, Memory, Meta, MountRule, Percent, Profile,
    ProfileFile, SearchPath,
};

fn shipped_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tuning-profiles")
}

fn shipped_search() -> SearchPath {
    SearchPath::new(vec![shipped_dir()])
}

fn load_shipped(name: &str) -> Profile {
    profile::load(name, &shipped_search()).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn agentctl(args: &[&str], profile_path: &Path) -> Output {
    let host = tempfile::tempdir().unwrap();
    Command::new(env!("CARGO_BIN_EXE_agentctl"))
        .args(args)
        .env("NODE_AGENT_PROFILE_PATH", profile_path)
        .env("NODE_AGENT_HOST_ROOT", host.path())
        .output()
        .unwrap()
}

fn stdout_ok(out: &Output) -> String {
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn sysctls(entries: &[(&str, Expected)]) -> BTreeMap<SysctlKey, Expected> {
    let map: BTreeMap<SysctlKey, Expected> = entries
        .iter()
        .map(|(k, v)| (k.parse().unwrap(), v.clone()))
        .collect();
    assert_eq!(map.len(), entries.len(), "a key is listed twice");
    map
}

fn exact(v: &str) -> Expected {
    Expected::Exact(v.to_owned())
}

fn at_least(n: i128) -> Expected {
    Expected::Bound {
        min: Some(n),
        max: None,
    }
}

fn both(v: LimitValue) -> LimitSetting {
    LimitSetting {
        soft: Some(v),
        hard: Some(v),
    }
}

/// The settings without the `[profile]` table, which is compared on its own.
fn settings_only(p: &Profile) -> ProfileFile {
    let mut s = p.settings.clone();
    s.profile = Meta::default();
    s
}

fn shipped_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(shipped_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

#[test]
fn every_shipped_profile_loads_and_validates() {
    let files = shipped_files();
    // Guards against the directory moving: an empty loop would pass.
    assert!(files.len() >= 3, "{files:?}");
    for path in &files {
        assert_eq!(
            path.extension().and_then(|e| e.to_str()),
            Some("toml"),
            "{}: only profiles belong in tuning-profiles/",
            path.display()
        );
        let stem = path.file_stem().unwrap().to_str().unwrap();
        let by_path = profile::load(path.to_str().unwrap(), &shipped_search())
            .unwrap_or_else(|e| panic!("{e}"));
        // `--profile NAME` finds NAME.toml, so a profile calling itself something else could
        // not be asked for by the name it shows.
        assert_eq!(by_path.name, stem, "{}", path.display());
        assert!(
            by_path
                .description
                .as_deref()
                .is_some_and(|d| !d.is_empty()),
            "{}: give it a description",
            path.display()
        );
        assert_eq!(by_path.files.last(), Some(path));
        let by_name = load_shipped(stem);
        assert_eq!(by_name.settings, by_path.settings);

        let out = agentctl(
            &["profile", "check", path.to_str().unwrap()],
            &shipped_dir(),
        );
        let stdout = stdout_ok(&out);
        let n = by_path.files.len();
        let expected = format!(
            "{}: valid profile {stem} ({n} file{})\n",
            path.display(),
            if n == 1 { "" } else { "s" }
        );
        // The host root is an empty directory: every sysctl key is reported missing.
        let first = stdout.lines().next().map(|l| format!("{l}\n"));
        assert_eq!(first.as_deref(), Some(expected.as_str()), "{stdout}");
        assert_eq!(
            stdout.lines().skip(1).count(),
            by_path.settings.sysctl.len(),
            "{stdout}"
        );
    }
}

/// The operations manual's host tuning for low-latency futures trading hosts, item by item.
#[test]
fn trading_latency_is_exactly_the_operations_manual() {
    let p = load_shipped("trading-latency");
    assert_eq!(p.name, "trading-latency");
    assert_eq!(
        p.files,
        [
            shipped_dir().join("base.toml"),
            shipped_dir().join("trading-latency.toml")
        ]
    );
    let domain: LimitDomain = "*".parse().unwrap();
    let expected = ProfileFile {
        sysctl: sysctls(&[
            ("net.core.rmem_max", at_least(134217728)),
            ("net.core.wmem_max", at_least(134217728)),
            ("net.ipv4.tcp_rmem", exact("4096 87380 134217728")),
            ("net.ipv4.tcp_wmem", exact("4096 65536 134217728")),
            ("net.core.netdev_max_backlog", at_least(300000)),
            ("net.core.somaxconn", at_least(65535)),
            ("net.ipv4.tcp_congestion_control", exact("bbr")),
            ("net.ipv4.tcp_slow_start_after_idle", exact("0")),
            ("net.ipv4.tcp_tw_reuse", exact("1")),
            ("net.ipv4.tcp_fin_timeout", exact("30")),
            ("net.ipv4.tcp_keepalive_time", exact("1200")),
            ("net.ipv4.tcp_keepalive_probes", exact("5")),
            ("net.ipv4.tcp_keepalive_intvl", exact("15")),
            ("net.ipv4.tcp_low_latency", exact("1")),
            ("net.ipv4.tcp_no_metrics_save", exact("1")),
            ("fs.file-max", at_least(2097152)),
            ("fs.nr_open", at_least(2097152)),
        ]),
        cpu: Some(Cpu {
            governor: Some(Governor::Performance),
            idle: Some(Idle { max_latency_us: 0 }),
            ..Cpu::default()
        }),
        memory: Some(Memory {
            transparent_hugepage: Some(ThpEnabled::Never),
            transparent_hugepage_defrag: Some(ThpDefrag::Never),
            swap: Some(SwapState::Off),
            ..Memory::default()
        }),
        block: vec![BlockRule {
            devices: "nvme*".parse().unwrap(),
            scheduler: Some(IoScheduler::None),
            read_ahead_kb: None,
        }],
        limits: BTreeMap::from([(
            domain,
            BTreeMap::from([
                (LimitItem::Nofile, both(LimitValue::Number(1_000_000))),
                (LimitItem::Nproc, both(LimitValue::Number(65536))),
                (LimitItem::Memlock, both(LimitValue::Unlimited)),
            ]),
        )]),
        mount: vec![MountRule {
            path: "/data".parse().unwrap(),
            options: vec!["noatime".parse().unwrap(), "nodiratime".parse().unwrap()],
        }],
        // Everything else stays unset: whole-struct equality catches an addition anywhere.
        ..ProfileFile::default()
    };
    assert_eq!(settings_only(&p), expected);
}

/// TuneD's network-latency profile (with latency-performance, which it includes), in the knobs
/// this format has.
#[test]
fn network_latency_is_exactly_tuned_network_latency() {
    let p = load_shipped("network-latency");
    assert_eq!(p.name, "network-latency");
    assert_eq!(p.files, [shipped_dir().join("network-latency.toml")]);
    let expected = ProfileFile {
        sysctl: sysctls(&[
            ("vm.dirty_ratio", exact("10")),
            ("vm.dirty_background_ratio", exact("3")),
            ("vm.swappiness", exact("10")),
            ("net.core.busy_read", exact("50")),
            ("net.core.busy_poll", exact("50")),
            ("net.ipv4.tcp_fastopen", exact("3")),
            ("kernel.numa_balancing", exact("0")),
        ]),
        cpu: Some(Cpu {
            governor: Some(Governor::Performance),
            energy_perf_bias: Some(EnergyPerfBias(0)),
            min_perf_pct: Some(Percent(100)),
            ..Cpu::default()
        }),
        memory: Some(Memory {
            transparent_hugepage: Some(ThpEnabled::Never),
            ..Memory::default()
        }),
        ..ProfileFile::default()
    };
    assert_eq!(settings_only(&p), expected);
}

/// A directory of local profiles, as /etc/node-agent/profiles would hold them.
fn local_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    dir
}

/// The documented way to run mixed fleets: a host profile includes the fleet profile and
/// overrides what differs on this host.
#[test]
fn host_profile_overrides_one_sysctl_and_the_block_glob() {
    let local = local_dir(&[(
        "host-a.toml",
        r#"[profile]
name = "host-a"
include = ["trading-latency"]

[sysctl]
"net.core.somaxconn" = 131072

[[block]]
devices = "nvme*"
scheduler = "mq-deadline"

[[block]]
devices = "sd[a-b]"
scheduler = "none"
"#,
    )]);
    let search = SearchPath::new(vec![local.path().to_owned(), shipped_dir()]);
    let host = profile::load("host-a", &search).unwrap();
    assert_eq!(host.name, "host-a");
    assert_eq!(host.description, None, "[profile] is not inherited");
    assert_eq!(
        host.files,
        [
            shipped_dir().join("base.toml"),
            shipped_dir().join("trading-latency.toml"),
            local.path().join("host-a.toml"),
        ]
    );

    let mut expected = settings_only(&load_shipped("trading-latency"));
    expected
        .sysctl
        .insert("net.core.somaxconn".parse().unwrap(), exact("131072"));
    expected.block = vec![
        BlockRule {
            devices: "nvme*".parse().unwrap(),
            scheduler: Some(IoScheduler::MqDeadline),
            read_ahead_kb: None,
        },
        BlockRule {
            devices: "sd[a-b]".parse().unwrap(),
            scheduler: Some(IoScheduler::None),
            read_ahead_kb: None,
        },
    ];
    assert_eq!(settings_only(&host), expected);
}

/// Later includes win key by key; the including file wins over all of them; a key set only
/// earlier survives; tables merge field by field.
#[test]
fn includes_merge_later_wins_per_key() {
    let local = local_dir(&[
        (
            "first.toml",
            r#"[sysctl]
"vm.swappiness" = 1
"vm.dirty_ratio" = 5
"kernel.numa_balancing" = 1

[cpu]
governor = "powersave"
boost = false

[memory]
transparent_hugepage = "madvise"
hugepages = { "2M" = 512 }

[limits]
"*" = { nofile = 1024, nproc = { soft = 100, hard = 200 } }

[[mount]]
path = "/data"
options = ["relatime"]

[[mount]]
path = "/logs"
options = ["noatime"]
"#,
        ),
        (
            "second.toml",
            r#"[sysctl]
"vm.swappiness" = 2
"vm/dirty_ratio" = 6

[cpu]
governor = "performance"

[memory]
hugepages = { "1G" = 4 }

[limits]
"*" = { nproc = { hard = 300 } }

[[mount]]
path = "/data"
options = ["noatime", "nodiratime"]
"#,
        ),
        (
            "top.toml",
            r#"[profile]
include = ["first", "second"]

[sysctl]
"vm.swappiness" = 3

[cpu]
pm_qos_latency_us = 0
"#,
        ),
    ]);
    let top = profile::load("top", &SearchPath::new(vec![local.path().to_owned()])).unwrap();
    assert_eq!(top.name, "top", "the name defaults to the file name");
    assert_eq!(
        top.files,
        ["first", "second", "top"].map(|n| local.path().join(format!("{n}.toml")))
    );
    let expected = ProfileFile {
        sysctl: sysctls(&[
            ("vm.swappiness", exact("3")),
            // Two spellings of one key across files: the later file wins.
            ("vm.dirty_ratio", exact("6")),
            ("kernel.numa_balancing", exact("1")),
        ]),
        cpu: Some(Cpu {
            governor: Some(Governor::Performance),
            boost: Some(false),
            pm_qos_latency_us: Some(0),
            ..Cpu::default()
        }),
        memory: Some(Memory {
            transparent_hugepage: Some(ThpEnabled::Madvise),
            hugepages: BTreeMap::from([
                ("2M".parse().unwrap(), exact("512")),
                ("1G".parse().unwrap(), exact("4")),
            ]),
            ..Memory::default()
        }),
        limits: BTreeMap::from([(
            "*".parse().unwrap(),
            BTreeMap::from([
                (LimitItem::Nofile, both(LimitValue::Number(1024))),
                (
                    LimitItem::Nproc,
                    LimitSetting {
                        soft: Some(LimitValue::Number(100)),
                        hard: Some(LimitValue::Number(300)),
                    },
                ),
            ]),
        )]),
        // A mount rule is replaced whole, in its original place.
        mount: vec![
            MountRule {
                path: "/data".parse().unwrap(),
                options: vec!["noatime".parse().unwrap(), "nodiratime".parse().unwrap()],
            },
            MountRule {
                path: "/logs".parse().unwrap(),
                options: vec!["noatime".parse().unwrap()],
            },
        ],
        ..ProfileFile::default()
    };
    assert_eq!(settings_only(&top), expected);
}

#[test]
fn include_is_found_beside_the_including_file_before_the_search_path() {
    let host = r#"[profile]
include = ["base"]

[sysctl]
"vm.swappiness" = 10
"#;
    // A local base.toml beside host.toml shadows the shipped base on the search path.
    let local = local_dir(&[
        ("host.toml", host),
        ("base.toml", "[sysctl]\n\"vm.dirty_ratio\" = 7\n"),
    ]);
    let search = SearchPath::new(vec![shipped_dir()]);
    let file = local.path().join("host.toml");
    let p = profile::load(file.to_str().unwrap(), &search).unwrap();
    assert_eq!(p.files, [local.path().join("base.toml"), file.clone()]);
    assert_eq!(
        p.settings.sysctl,
        sysctls(&[
            ("vm.dirty_ratio", exact("7")),
            ("vm.swappiness", exact("10"))
        ])
    );

    // Without one beside it, the search path supplies the shipped base.
    let alone = local_dir(&[("host.toml", host)]);
    let file = alone.path().join("host.toml");
    let p = profile::load(file.to_str().unwrap(), &search).unwrap();
    assert_eq!(p.files, [shipped_dir().join("base.toml"), file]);
    let mut expected = settings_only(&load_shipped("base"));
    expected
        .sysctl
        .insert("vm.swappiness".parse().unwrap(), exact("10"));
    assert_eq!(settings_only(&p), expected);
}

#[test]
fn search_path_first_directory_wins() {
    let first = local_dir(&[("base.toml", "[sysctl]\n\"vm.swappiness\" = 1\n")]);
    let search = SearchPath::new(vec![first.path().to_owned(), shipped_dir()]);
    let p = profile::load("base", &search).unwrap();
    assert_eq!(p.files, [first.path().join("base.toml")]);
    // The shipped trading-latency still gets the shipped base: beside the including file comes
    // before the search path, so a local base.toml cannot change a shipped profile.
    let p = profile::load("trading-latency", &search).unwrap();
    assert_eq!(
        p.files,
        [
            shipped_dir().join("base.toml"),
            shipped_dir().join("trading-latency.toml")
        ]
    );
}

/// `tune show` prints the merged profile as one TOML document that loads back to the same
/// settings, so an operator can freeze a host's effective profile into a file.
#[test]
fn tune_show_round_trips_every_shipped_profile() {
    let local = local_dir(&[(
        "host-a.toml",
        r#"[profile]
include = ["trading-latency", "network-latency"]

[cpu]
cpus = "2-15"
min_freq = "3.2GHz"
energy_performance_preference = "performance"

[memory]
hugepages = { "1G" = { min = 4, max = 8 } }

[limits]
"@trading" = { rtprio = 99, memlock = { soft = 65536 } }

[[block]]
devices = "sd*"
read_ahead_kb = { max = 128 }
"#,
    )]);
    let path = format!("{}:{}", local.path().display(), shipped_dir().display());
    let search = SearchPath::new(vec![local.path().to_owned(), shipped_dir()]);
    let mut names: Vec<String> = shipped_files()
        .iter()
        .map(|f| f.file_stem().unwrap().to_str().unwrap().to_owned())
        .collect();
    names.push("host-a".into());
    let out_dir = tempfile::tempdir().unwrap();
    for name in &names {
        let merged = profile::load(name, &search).unwrap();
        let stdout = stdout_ok(&agentctl(&["tune", "show", "-p", name], Path::new(&path)));
        let mut header = vec![format!("# effective profile {name}, merged from:")];
        header.extend(merged.files.iter().map(|f| format!("#   {}", f.display())));
        let got_header: Vec<&str> = stdout.lines().take(header.len()).collect();
        assert_eq!(got_header, header);

        let shown = out_dir.path().join(format!("shown-{name}.toml"));
        std::fs::write(&shown, &stdout).unwrap();
        let reloaded = profile::load(shown.to_str().unwrap(), &SearchPath::new(vec![]))
            .unwrap_or_else(|e| panic!("{name}: {e}\n{stdout}"));
        assert_eq!(
            reloaded.files,
            std::slice::from_ref(&shown),
            "no includes left"
        );
        // The name is written out even when it came from the file name.
        assert_eq!(reloaded.name, *name);
        assert_eq!(reloaded.description, merged.description);
        assert_eq!(settings_only(&reloaded), settings_only(&merged), "{stdout}");
    }
}

#[test]
fn tune_show_json_holds_the_merged_profile() {
    let merged = load_shipped("trading-latency");
    let stdout = stdout_ok(&agentctl(
        &[
            "tune",
            "show",
            "--output",
            "json",
            "--profile",
            "trading-latency",
        ],
        &shipped_dir(),
    ));
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(json["name"], "trading-latency");
    assert_eq!(
        json["description"],
        "Low-latency futures trading host (operations manual host tuning)"
    );
    let files: Vec<PathBuf> = serde_json::from_value(json["files"].clone()).unwrap();
    assert_eq!(files, merged.files);
    let settings = &json["settings"];
    assert_eq!(*settings, serde_json::to_value(&merged.settings).unwrap());
    // Spot checks in the JSON's own terms, independent of the Rust model.
    assert_eq!(
        settings["sysctl"]["net.core.rmem_max"],
        serde_json::json!({ "min": 134217728 })
    );
    assert_eq!(settings["sysctl"]["net.ipv4.tcp_congestion_control"], "bbr");
    assert_eq!(settings["sysctl"]["net.ipv4.tcp_slow_start_after_idle"], 0);
    assert_eq!(
        settings["sysctl"]["fs.file-max"],
        serde_json::json!({ "min": 2097152 })
    );
    assert_eq!(settings["cpu"]["idle"]["max_latency_us"], 0);
    assert_eq!(settings["block"][0]["devices"], "nvme*");
    assert_eq!(
        settings["limits"]["*"]["memlock"],
        serde_json::json!({ "soft": "unlimited", "hard": "unlimited" })
    );
    assert_eq!(
        settings["mount"],
        serde_json::json!([{ "path": "/data", "options": ["noatime", "nodiratime"] }])
    );
    assert!(settings["profile"].get("include").is_none(), "{settings}");
}
