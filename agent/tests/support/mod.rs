//! Fixture host trees for the fixture tier: a fake /proc, /sys, /dev, /etc, /run and /usr/lib
//! under a temporary directory, in the kernel's exact file formats (trailing newlines, bracketed
//! choices, tab-separated triples, sysfs symlinks), read through `HostRoot` in-process or
//! `NODE_AGENT_HOST_ROOT` by the real binary.
//!
//! `FixtureHost::tuned()` is a 16-CPU bare-metal trading host (CPUs 16-17 possible but offline)
//! that already complies with the shipped profiles; `FixtureHost::stock()` is the same machine as
//! installed. Tests then bend single files with the mutators (`write`, `sysctl`, `cpu`,
//! `remove`, `make_unreadable`, ...).

// Each test crate that includes this module uses a different part of it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::ops::Range;
use std::path::PathBuf;
use std::process::{Command, Output};

use node_agent::host::HostRoot;
use tempfile::TempDir;

pub const HOSTNAME: &str = "md-fix-01";

/// The cpufreq driver the fixture imitates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    /// intel_pstate in active mode: performance/powersave only, EPP, intel_pstate/no_turbo.
    IntelPstate,
    /// acpi-cpufreq: the generic governors, cpufreq/boost, no EPP.
    AcpiCpufreq,
    /// No cpufreq at all (a VM, or cpufreq disabled in firmware).
    None,
}

/// Whether the host has been tuned for trading or is as installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    Tuned,
    Stock,
}

#[derive(Debug, Clone)]
pub struct Spec {
    pub hostname: String,
    /// CPUs `0..online` are online.
    pub online: u32,
    /// CPUs `online..possible` exist but are offline.
    pub possible: u32,
    pub driver: Driver,
    pub preset: Preset,
}

impl Default for Spec {
    fn default() -> Self {
        Spec {
            hostname: HOSTNAME.into(),
            online: 16,
            possible: 18,
            driver: Driver::IntelPstate,
            preset: Preset::Tuned,
        }
    }
}

/// intel_idle's states on a Skylake/Cascade Lake server: (name, desc, latency us, residency us).
pub const IDLE_STATES: [(&str, &str, u32, u32); 4] = [
    ("POLL", "CPUIDLE CORE POLL IDLE", 0, 0),
    ("C1", "MWAIT 0x00", 2, 2),
    ("C1E", "MWAIT 0x01", 10, 20),
    ("C6", "MWAIT 0x20", 133, 600),
];

pub const CPU_DIR: &str = "/sys/devices/system/cpu";

/// The /proc/swaps header, exactly as mm/swapfile.c prints it.
pub const SWAPS_HEADER: &str = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n";

/// One /proc/swaps line as the kernel prints it: the (already escaped) name padded to 40
/// columns, `partition` or `file\t`, then size, used and priority with their tab padding.
pub fn swaps_line(
    escaped_name: &str,
    partition: bool,
    size_kb: u64,
    used_kb: u64,
    prio: i32,
) -> String {
    let pad = if escaped_name.len() < 40 {
        40 - escaped_name.len()
    } else {
        1
    };
    format!(
        "{escaped_name}{:pad$}{}\t{size_kb}\t{}{used_kb}\t{}{prio}\n",
        "",
        if partition { "partition" } else { "file\t" },
        if size_kb < 10_000_000 { "\t" } else { "" },
        if used_kb < 10_000_000 { "\t" } else { "" },
    )
}

/// A file tree entry as the snapshot sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Dir { mode: u32 },
    File { mode: u32, bytes: Vec<u8> },
    Symlink { target: PathBuf },
}

/// A fake host under a temporary directory: `<tmp>/host` is the host root, `<tmp>/profiles`
/// holds the test's profiles (outside the host tree, as on a real host).
pub struct FixtureHost {
    dir: TempDir,
    spec: Spec,
}

impl FixtureHost {
    /// A tuned 16-CPU intel_pstate host.
    pub fn tuned() -> FixtureHost {
        FixtureHost::build(Spec::default())
    }

    /// The same machine as installed, before any tuning.
    pub fn stock() -> FixtureHost {
        FixtureHost::build(Spec {
            preset: Preset::Stock,
            ..Spec::default()
        })
    }

    /// A tuned host with another cpufreq driver.
    pub fn tuned_with(driver: Driver) -> FixtureHost {
        FixtureHost::build(Spec {
            driver,
            ..Spec::default()
        })
    }

    pub fn build(spec: Spec) -> FixtureHost {
        assert!(spec.online >= 1 && spec.possible >= spec.online, "{spec:?}");
        let dir = tempfile::Builder::new()
            .prefix("fx")
            .tempdir()
            .expect("create fixture temp dir");
        fs::create_dir_all(dir.path().join("host")).expect("create host root");
        fs::create_dir_all(dir.path().join("profiles")).expect("create profile dir");
        let fx = FixtureHost { dir, spec };
        fx.build_proc();
        fx.build_sysctl_d();
        fx.build_cpus();
        fx.build_memory();
        fx.build_block();
        fx.build_limits();
        fx.build_mounts();
        fx.build_misc();
        fx
    }

    pub fn spec(&self) -> &Spec {
        &self.spec
    }

    fn tuned_preset(&self) -> bool {
        self.spec.preset == Preset::Tuned
    }

    /// The host root (what `NODE_AGENT_HOST_ROOT` points at).
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("host")
    }

    pub fn host(&self) -> HostRoot {
        HostRoot::new(self.root())
    }

    /// Where `profile` writes profiles (what `NODE_AGENT_PROFILE_PATH` points at).
    pub fn profiles_dir(&self) -> PathBuf {
        self.dir.path().join("profiles")
    }

    /// The agent's state directory for this fixture (what `NODE_AGENT_STATE_DIR` points at):
    /// beside the host root, never inside it, so snapshots of the host tree exclude nothing.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Runs the real `agentctl` against this fixture: host root, profile path and state
    /// directory all point into the fixture's temporary directory, so the machine is never
    /// touched. `env` adds variables (a fail point) to the child only.
    pub fn agentctl_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_agentctl"))
            .args(args)
            .env("NODE_AGENT_HOST_ROOT", self.root())
            .env("NODE_AGENT_PROFILE_PATH", self.profiles_dir())
            .env("NODE_AGENT_STATE_DIR", self.state_dir())
            .env_remove("NODE_AGENT_FAILPOINT")
            .envs(env.iter().copied())
            .output()
            .expect("run agentctl")
    }

    /// `agentctl_env` without extra variables.
    pub fn agentctl(&self, args: &[&str]) -> Output {
        self.agentctl_env(args, &[])
    }

    pub fn online_cpus(&self) -> Range<u32> {
        0..self.spec.online
    }

    /// The real path of a host path inside the fixture.
    pub fn real(&self, host_path: &str) -> PathBuf {
        let rel = host_path
            .strip_prefix('/')
            .unwrap_or_else(|| panic!("fixture paths are absolute host paths: {host_path:?}"));
        assert!(
            !rel.split('/').any(|c| c == ".."),
            "no `..` in fixture paths: {host_path:?}"
        );
        self.root().join(rel)
    }

    // ---- mutators -------------------------------------------------------------------------

    /// Writes a host file (parents created), replacing whatever is there.
    pub fn write(&self, host_path: &str, contents: impl AsRef<[u8]>) -> &Self {
        let path = self.real(host_path);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).unwrap_or_else(|e| panic!("mkdir -p {parent:?}: {e}"));
        }
        if fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
            fs::remove_dir_all(&path).unwrap_or_else(|e| panic!("rm -r {path:?}: {e}"));
        }
        fs::write(&path, contents).unwrap_or_else(|e| panic!("write {path:?}: {e}"));
        self
    }

    /// Appends to a host file (created when absent).
    pub fn append(&self, host_path: &str, text: &str) -> &Self {
        let path = self.real(host_path);
        let mut old = fs::read(&path).unwrap_or_default();
        old.extend_from_slice(text.as_bytes());
        self.write(host_path, old)
    }

    /// Removes a host file, symlink or directory tree; it must exist (a typo would otherwise
    /// make a test vacuous).
    pub fn remove(&self, host_path: &str) -> &Self {
        let path = self.real(host_path);
        let meta = fs::symlink_metadata(&path)
            .unwrap_or_else(|e| panic!("fixture has no {host_path} to remove: {e}"));
        if meta.is_dir() {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        }
        .unwrap_or_else(|e| panic!("remove {path:?}: {e}"));
        self
    }

    /// Makes reading a host path fail with EISDIR (status `error`) by replacing it with a
    /// directory. Tests run as root, so permission bits would not stop a read.
    pub fn make_unreadable(&self, host_path: &str) -> &Self {
        let path = self.real(host_path);
        if fs::symlink_metadata(&path).is_ok() {
            self.remove(host_path);
        }
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("mkdir {path:?}: {e}"));
        self
    }

    /// Creates a symlink at a host path (parents created); `target` as the link text.
    pub fn symlink(&self, host_path: &str, target: &str) -> &Self {
        let path = self.real(host_path);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).unwrap_or_else(|e| panic!("mkdir -p {parent:?}: {e}"));
        }
        std::os::unix::fs::symlink(target, &path)
            .unwrap_or_else(|e| panic!("ln -s {target} {path:?}: {e}"));
        self
    }

    /// Sets a sysctl's running value: `/proc/sys/<key with dots as slashes>` = `value\n`.
    /// `value` is written as the kernel prints it (tabs in triples included).
    pub fn sysctl(&self, key: &str, value: &str) -> &Self {
        self.write(&sysctl_path(key), format!("{value}\n"))
    }

    /// Writes `value\n` to `/sys/devices/system/cpu/cpu<N>/<rel>`.
    pub fn cpu(&self, cpu: u32, rel: &str, value: &str) -> &Self {
        self.write(&format!("{CPU_DIR}/cpu{cpu}/{rel}"), format!("{value}\n"))
    }

    /// Writes `value\n` to `<rel>` of every online CPU.
    pub fn each_cpu(&self, rel: &str, value: &str) -> &Self {
        for c in self.online_cpus() {
            self.cpu(c, rel, value);
        }
        self
    }

    /// Removes `<rel>` of every online CPU.
    pub fn remove_each_cpu(&self, rel: &str) -> &Self {
        for c in self.online_cpus() {
            self.remove(&format!("{CPU_DIR}/cpu{c}/{rel}"));
        }
        self
    }

    /// /dev/cpu_dma_latency reads as the current limit, a native-endian s32.
    pub fn pm_qos(&self, us: i32) -> &Self {
        self.write("/dev/cpu_dma_latency", us.to_ne_bytes())
    }

    /// Replaces /proc/swaps with the header and the given lines (see `swaps_line`).
    pub fn swaps(&self, lines: &[String]) -> &Self {
        self.write("/proc/swaps", format!("{SWAPS_HEADER}{}", lines.concat()))
    }

    /// Writes a profile into the profile directory; returns its path.
    pub fn profile(&self, name: &str, toml: &str) -> PathBuf {
        let path = self.profiles_dir().join(format!("{name}.toml"));
        fs::write(&path, toml).unwrap_or_else(|e| panic!("write {path:?}: {e}"));
        path
    }

    /// Every entry under the host root with its kind, mode and bytes (symlinks not followed).
    pub fn snapshot(&self) -> BTreeMap<PathBuf, Node> {
        use std::os::unix::fs::PermissionsExt;
        let root = self.root();
        let mut out = BTreeMap::new();
        let mut stack = vec![root.clone()];
        while let Some(dir) = stack.pop() {
            for entry in fs::read_dir(&dir).unwrap_or_else(|e| panic!("list {dir:?}: {e}")) {
                let path = entry.expect("dir entry").path();
                let meta = fs::symlink_metadata(&path).expect("lstat");
                let rel = path.strip_prefix(&root).expect("under root").to_owned();
                let mode = meta.permissions().mode();
                let node = if meta.file_type().is_symlink() {
                    Node::Symlink {
                        target: fs::read_link(&path).expect("readlink"),
                    }
                } else if meta.is_dir() {
                    stack.push(path.clone());
                    Node::Dir { mode }
                } else {
                    Node::File {
                        mode,
                        bytes: fs::read(&path).expect("read"),
                    }
                };
                out.insert(rel, node);
            }
        }
        out
    }

    // ---- the preset -----------------------------------------------------------------------

    fn build_proc(&self) {
        let t = self.tuned_preset();
        self.write(
            "/proc/sys/kernel/hostname",
            format!("{}\n", self.spec.hostname),
        );
        // (key, tuned, stock), as /proc/sys prints them.
        let sysctls: &[(&str, &str, &str)] = &[
            ("fs.file-max", "9223372036854775807", "9223372036854775807"),
            ("fs.nr_open", "2097152", "1048576"),
            ("net.core.rmem_max", "134217728", "212992"),
            ("net.core.wmem_max", "134217728", "212992"),
            ("net.core.netdev_max_backlog", "300000", "1000"),
            ("net.core.somaxconn", "65535", "4096"),
            ("net.core.busy_read", "50", "0"),
            ("net.core.busy_poll", "50", "0"),
            (
                "net.ipv4.tcp_rmem",
                "4096\t87380\t134217728",
                "4096\t131072\t6291456",
            ),
            (
                "net.ipv4.tcp_wmem",
                "4096\t65536\t134217728",
                "4096\t16384\t4194304",
            ),
            ("net.ipv4.tcp_congestion_control", "bbr", "cubic"),
            // Setting the default to bbr adds it here (the kernel's side effect).
            (
                "net.ipv4.tcp_allowed_congestion_control",
                "reno cubic bbr",
                "reno cubic",
            ),
            (
                "net.ipv4.tcp_available_congestion_control",
                "reno cubic bbr",
                "reno cubic",
            ),
            ("net.ipv4.tcp_slow_start_after_idle", "0", "1"),
            ("net.ipv4.tcp_tw_reuse", "1", "2"),
            ("net.ipv4.tcp_fin_timeout", "30", "60"),
            ("net.ipv4.tcp_keepalive_time", "1200", "7200"),
            ("net.ipv4.tcp_keepalive_probes", "5", "9"),
            ("net.ipv4.tcp_keepalive_intvl", "15", "75"),
            ("net.ipv4.tcp_low_latency", "1", "0"),
            ("net.ipv4.tcp_no_metrics_save", "1", "0"),
            ("net.ipv4.tcp_fastopen", "3", "1"),
            ("net.ipv4.conf.all.rp_filter", "0", "0"),
            ("net.ipv4.conf.default.rp_filter", "2", "2"),
            ("net.ipv4.conf.lo.rp_filter", "2", "2"),
            ("net.ipv4.conf.eth0.rp_filter", "2", "2"),
            ("vm.dirty_ratio", "10", "20"),
            ("vm.dirty_background_ratio", "3", "10"),
            ("vm.swappiness", "10", "60"),
            ("kernel.numa_balancing", "0", "1"),
            ("kernel.sysrq", "438", "438"),
        ];
        for (key, tuned, stock) in sysctls {
            self.sysctl(key, if t { tuned } else { stock });
        }
        // A VLAN interface: the dot in its name is a `/` in the dotted key.
        self.write("/proc/sys/net/ipv4/conf/eth0.100/rp_filter", "2\n");
        self.write("/proc/cmdline", "BOOT_IMAGE=/boot/vmlinuz-6.1.0-27-amd64 root=UUID=5d2a6a1e-8f3b-4c8e-9d0a-1b2c3d4e5f60 ro quiet\n");
        // PID 1 (systemd) may run anywhere until system.conf's CPUAffinity= says otherwise.
        let all: String = format!("0-{}", self.spec.online - 1);
        self.write(
            "/proc/1/status",
            proc_status("systemd", 1, 0, &all, self.spec.possible),
        );
        if t {
            self.swaps(&[]);
        } else {
            self.swaps(&[swaps_line("/dev/nvme0n1p3", true, 8_388_604, 0, -2)]);
        }
    }

    fn build_sysctl_d(&self) {
        // Debian 12: systemd's defaults, procps' README and 99-sysctl.conf -> ../sysctl.conf.
        self.write("/usr/lib/sysctl.d/50-default.conf", SYSTEMD_50_DEFAULT);
        self.write(
            "/usr/lib/sysctl.d/50-pid-max.conf",
            "# Bump the numeric PID range to its maximum of 2^22 (from the in-kernel default\n\
             # of 2^16), to make PID collisions less likely.\n\
             kernel.pid_max = 4194304\n",
        );
        self.write(
            "/etc/sysctl.d/README.sysctl",
            "Kernel system variables configuration files\n\n\
             Files found under the /etc/sysctl.d directory that end with .conf are\n\
             parsed within sysctl(8) at boot time.\n",
        );
        self.write(
            "/etc/sysctl.conf",
            "#\n# /etc/sysctl.conf - Configuration file for setting system variables\n\
             # See /etc/sysctl.d/ for additional system variables.\n\
             # See sysctl.conf (5) for information.\n#\n\n#kernel.domainname = example.com\n\n\
             #net.ipv4.ip_forward=1\n",
        );
        self.symlink("/etc/sysctl.d/99-sysctl.conf", "../sysctl.conf");
        fs::create_dir_all(self.real("/run/sysctl.d")).expect("mkdir /run/sysctl.d");
        if self.tuned_preset() {
            self.write("/etc/sysctl.d/zz-node-agent.conf", AGENT_SYSCTL_CONF);
        }
    }

    fn build_cpus(&self) {
        let t = self.tuned_preset();
        let (online, possible) = (self.spec.online, self.spec.possible);
        let range = |a: u32, b: u32| match b - a {
            0 => String::new(),
            1 => format!("{a}"),
            _ => format!("{a}-{}", b - 1),
        };
        self.write(
            &format!("{CPU_DIR}/online"),
            format!("{}\n", range(0, online)),
        );
        self.write(
            &format!("{CPU_DIR}/possible"),
            format!("{}\n", range(0, possible)),
        );
        self.write(
            &format!("{CPU_DIR}/present"),
            format!("{}\n", range(0, possible)),
        );
        self.write(
            &format!("{CPU_DIR}/offline"),
            format!("{}\n", range(online, possible)),
        );
        self.write(&format!("{CPU_DIR}/kernel_max"), "8191\n");
        self.write(&format!("{CPU_DIR}/isolated"), "\n");
        self.write(&format!("{CPU_DIR}/cpuidle/current_driver"), "intel_idle\n");
        self.write(&format!("{CPU_DIR}/cpuidle/current_governor"), "menu\n");
        self.write(&format!("{CPU_DIR}/cpuidle/current_governor_ro"), "menu\n");

        for c in 0..possible {
            let cpu = format!("{CPU_DIR}/cpu{c}");
            if c >= online {
                // Offline: the kernel removes cpufreq and cpuidle until it comes back.
                self.write(&format!("{cpu}/online"), "0\n");
                continue;
            }
            if c > 0 {
                // The boot CPU cannot be offlined and has no `online` file.
                self.write(&format!("{cpu}/online"), "1\n");
            }
            self.write(&format!("{cpu}/topology/core_id"), format!("{c}\n"));
            self.write(
                &format!("{cpu}/power/energy_perf_bias"),
                if t { "0\n" } else { "6\n" },
            );
            for (i, (name, desc, latency, residency)) in IDLE_STATES.iter().enumerate() {
                let s = format!("{cpu}/cpuidle/state{i}");
                self.write(&format!("{s}/name"), format!("{name}\n"));
                self.write(&format!("{s}/desc"), format!("{desc}\n"));
                self.write(&format!("{s}/latency"), format!("{latency}\n"));
                self.write(&format!("{s}/residency"), format!("{residency}\n"));
                let off = t && i > 0;
                self.write(&format!("{s}/disable"), if off { "1\n" } else { "0\n" });
                self.write(&format!("{s}/default_status"), "enabled\n");
                self.write(&format!("{s}/usage"), "0\n");
                self.write(&format!("{s}/time"), "0\n");
            }
            if self.spec.driver == Driver::None {
                continue;
            }
            // cpu<N>/cpufreq is a symlink to the policy directory, as in sysfs.
            let policy = format!("{CPU_DIR}/cpufreq/policy{c}");
            self.symlink(&format!("{cpu}/cpufreq"), &format!("../cpufreq/policy{c}"));
            let w = |file: &str, value: &str| {
                self.write(&format!("{policy}/{file}"), format!("{value}\n"));
            };
            w("affected_cpus", &c.to_string());
            w("related_cpus", &c.to_string());
            w("cpuinfo_transition_latency", "0");
            match self.spec.driver {
                Driver::IntelPstate => {
                    w("scaling_driver", "intel_pstate");
                    w("scaling_available_governors", "performance powersave");
                    w(
                        "scaling_governor",
                        if t { "performance" } else { "powersave" },
                    );
                    w("cpuinfo_min_freq", "800000");
                    w("cpuinfo_max_freq", "3900000");
                    w("base_frequency", "2600000");
                    w("scaling_min_freq", if t { "3900000" } else { "800000" });
                    w("scaling_max_freq", "3900000");
                    w("scaling_cur_freq", "3899998");
                    w("scaling_setspeed", "<unsupported>");
                    w(
                        "energy_performance_available_preferences",
                        "default performance balance_performance balance_power power ",
                    );
                    w(
                        "energy_performance_preference",
                        if t {
                            "performance"
                        } else {
                            "balance_performance"
                        },
                    );
                }
                Driver::AcpiCpufreq => {
                    w("scaling_driver", "acpi-cpufreq");
                    w(
                        "scaling_available_governors",
                        "conservative ondemand userspace powersave performance schedutil ",
                    );
                    w(
                        "scaling_governor",
                        if t { "performance" } else { "schedutil" },
                    );
                    w("cpuinfo_min_freq", "1200000");
                    w("cpuinfo_max_freq", "3500000");
                    w("cpuinfo_cur_freq", "3500000");
                    w(
                        "scaling_available_frequencies",
                        "3500000 3000000 2500000 2000000 1500000 1200000 ",
                    );
                    w("scaling_min_freq", if t { "3500000" } else { "1200000" });
                    w("scaling_max_freq", "3500000");
                    w("scaling_cur_freq", "3500000");
                    w("scaling_setspeed", "<unsupported>");
                }
                Driver::None => unreachable!(),
            }
        }
        match self.spec.driver {
            Driver::IntelPstate => {
                let p = format!("{CPU_DIR}/intel_pstate");
                self.write(&format!("{p}/status"), "active\n");
                self.write(&format!("{p}/no_turbo"), "0\n");
                self.write(
                    &format!("{p}/min_perf_pct"),
                    if t { "100\n" } else { "22\n" },
                );
                self.write(&format!("{p}/max_perf_pct"), "100\n");
                self.write(&format!("{p}/num_pstates"), "32\n");
                self.write(&format!("{p}/turbo_pct"), "33\n");
                self.write(&format!("{p}/hwp_dynamic_boost"), "0\n");
            }
            Driver::AcpiCpufreq => {
                self.write(&format!("{CPU_DIR}/cpufreq/boost"), "1\n");
            }
            Driver::None => {}
        }
    }

    fn build_memory(&self) {
        let t = self.tuned_preset();
        let thp = "/sys/kernel/mm/transparent_hugepage";
        self.write(
            &format!("{thp}/enabled"),
            if t {
                "always madvise [never]\n"
            } else {
                "always [madvise] never\n"
            },
        );
        self.write(
            &format!("{thp}/defrag"),
            if t {
                "always defer defer+madvise madvise [never]\n"
            } else {
                "always defer defer+madvise [madvise] never\n"
            },
        );
        self.write(&format!("{thp}/use_zero_page"), "1\n");
        self.write(&format!("{thp}/hpage_pmd_size"), "2097152\n");
        self.write(&format!("{thp}/khugepaged/defrag"), "1\n");
        self.write("/sys/kernel/mm/ksm/run", "0\n");
        self.write("/sys/kernel/mm/ksm/pages_shared", "0\n");
        for (dir, nr) in [
            ("hugepages-2048kB", if t { "1024" } else { "0" }),
            ("hugepages-1048576kB", "0"),
        ] {
            let d = format!("/sys/kernel/mm/hugepages/{dir}");
            self.write(&format!("{d}/nr_hugepages"), format!("{nr}\n"));
            self.write(&format!("{d}/free_hugepages"), format!("{nr}\n"));
            self.write(&format!("{d}/nr_overcommit_hugepages"), "0\n");
            self.write(&format!("{d}/resv_hugepages"), "0\n");
            self.write(&format!("{d}/surplus_hugepages"), "0\n");
        }
    }

    fn build_block(&self) {
        // /sys/block/<dev> are symlinks into the device tree, as in sysfs.
        let devices = [
            (
                "nvme0n1",
                "../devices/pci0000:00/0000:00:1d.0/0000:3d:00.0/nvme/nvme0/nvme0n1",
                Some("[none] mq-deadline kyber bfq "),
            ),
            (
                "nvme1n1",
                "../devices/pci0000:00/0000:00:1d.4/0000:3e:00.0/nvme/nvme1/nvme1n1",
                Some("[none] mq-deadline kyber bfq "),
            ),
            (
                "sda",
                "../devices/pci0000:00/0000:00:17.0/ata1/host0/target0:0:0/0:0:0:0/block/sda",
                Some("none [mq-deadline] kyber bfq "),
            ),
            // zram is bio-based: no I/O scheduler file.
            ("zram0", "../devices/virtual/block/zram0", None),
        ];
        for (name, target, scheduler) in devices {
            let dev = format!("/sys/{}", target.trim_start_matches("../"));
            let q = format!("{dev}/queue");
            self.write(&format!("{q}/read_ahead_kb"), "128\n");
            self.write(
                &format!("{q}/rotational"),
                if name == "sda" { "1\n" } else { "0\n" },
            );
            self.write(&format!("{q}/nr_requests"), "1023\n");
            if let Some(s) = scheduler {
                self.write(&format!("{q}/scheduler"), format!("{s}\n"));
            }
            self.write(&format!("{dev}/size"), "1875385008\n");
            self.symlink(&format!("/sys/block/{name}"), target);
        }
    }

    fn build_limits(&self) {
        self.write("/etc/security/limits.conf", DEBIAN_LIMITS_CONF);
        fs::create_dir_all(self.real("/etc/security/limits.d")).expect("mkdir limits.d");
        if self.tuned_preset() {
            self.write(
                "/etc/security/limits.d/zz-node-agent.conf",
                AGENT_LIMITS_CONF,
            );
        }
    }

    fn build_mounts(&self) {
        let t = self.tuned_preset();
        let data_opts = if t {
            "rw,noatime,nodiratime"
        } else {
            "rw,relatime"
        };
        let mountinfo = format!(
            "21 26 0:20 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw\n\
             22 26 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:13 - proc proc rw\n\
             23 26 0:5 / /dev rw,nosuid,relatime shared:2 - devtmpfs udev rw,size=131886012k,nr_inodes=32971503,mode=755,inode64\n\
             24 23 0:22 / /dev/pts rw,nosuid,noexec,relatime shared:3 - devpts devpts rw,gid=5,mode=620,ptmxmode=000\n\
             25 26 0:23 / /run rw,nosuid,nodev,noexec,relatime shared:5 - tmpfs tmpfs rw,size=26377204k,mode=755,inode64\n\
             26 1 259:1 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p1 rw,errors=remount-ro\n\
             29 26 259:4 / /boot/efi rw,relatime shared:9 - vfat /dev/nvme0n1p4 rw,fmask=0077,dmask=0077,codepage=437,iocharset=ascii,shortname=mixed,utf8,errors=remount-ro\n\
             36 26 259:2 / /data {data_opts} shared:30 - ext4 /dev/nvme0n1p2 rw,errors=remount-ro\n\
             37 26 8:1 / /mnt/market\\040data rw,noatime,nodiratime shared:31 - ext4 /dev/sda1 rw\n"
        );
        self.write("/proc/self/mountinfo", mountinfo);
        let swap = if t { "#UUID" } else { "UUID" };
        let data = if t { "noatime,nodiratime" } else { "defaults" };
        self.write(
            "/etc/fstab",
            format!(
                "# /etc/fstab: static file system information.\n\
                 #\n\
                 # Use 'blkid' to print the universally unique identifier for a\n\
                 # device; this may be used with UUID= as a more robust way to name devices\n\
                 # that works even if disks are added and removed. See fstab(5).\n\
                 #\n\
                 # <file system> <mount point>   <type>  <options>       <dump>  <pass>\n\
                 # / was on /dev/nvme0n1p1 during installation\n\
                 UUID=5d2a6a1e-8f3b-4c8e-9d0a-1b2c3d4e5f60 /               ext4    errors=remount-ro 0       1\n\
                 # /boot/efi was on /dev/nvme0n1p4 during installation\n\
                 UUID=9C3B-1A2F  /boot/efi       vfat    umask=0077      0       1\n\
                 # swap was on /dev/nvme0n1p3 during installation\n\
                 {swap}=0e1f2a3b-4c5d-4e6f-8a9b-0c1d2e3f4a5b none            swap    sw              0       0\n\
                 UUID=7a8b9c0d-1e2f-4a3b-8c4d-5e6f7a8b9c0d /data           ext4    {data}      0       2\n\
                 /dev/sda1       /mnt/market\\040data ext4 noatime,nodiratime 0 2\n"
            ),
        );
    }

    fn build_misc(&self) {
        let cs = "/sys/devices/system/clocksource/clocksource0";
        self.write(&format!("{cs}/current_clocksource"), "tsc\n");
        self.write(
            &format!("{cs}/available_clocksource"),
            "tsc hpet acpi_pm \n",
        );
        self.pm_qos(if self.tuned_preset() {
            0
        } else {
            2_000_000_000
        });
    }
}

/// `net.ipv4.tcp_rmem` → `/proc/sys/net/ipv4/tcp_rmem` (no dotted interface names here; write
/// those paths directly).
/// /proc/PID/status as fs/proc/array.c prints it (the fields verify and the audit read, in
/// their places among the others), for a task allowed on `cpus` (list syntax) of a machine with
/// `possible` CPUs.
pub fn proc_status(name: &str, tgid: u32, tid: u32, cpus: &str, possible: u32) -> String {
    let list: node_agent::profile::types::CpuList = cpus.parse().expect("a CPU list");
    let pid = if tid == 0 { tgid } else { tid };
    format!(
        "Name:\t{name}\nUmask:\t0000\nState:\tS (sleeping)\nTgid:\t{tgid}\nNgid:\t0\n\
         Pid:\t{pid}\nPPid:\t0\nTracerPid:\t0\nUid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\n\
         FDSize:\t128\nGroups:\t\nThreads:\t1\nSigQ:\t0/63431\nSigPnd:\t0000000000000000\n\
         ShdPnd:\t0000000000000000\nSigBlk:\t7fefc1fe28014a03\nSigIgn:\t0000000000001000\n\
         SigCgt:\t00000000000004ec\nCapInh:\t0000000000000000\nCapPrm:\t000001ffffffffff\n\
         CapEff:\t000001ffffffffff\nCapBnd:\t000001ffffffffff\nCapAmb:\t0000000000000000\n\
         NoNewPrivs:\t0\nSeccomp:\t0\nSeccomp_filters:\t0\nSpeculation_Store_Bypass:\tthread vulnerable\n\
         SpeculationIndirectBranch:\tconditional enabled\nCpus_allowed:\t{}\n\
         Cpus_allowed_list:\t{list}\nMems_allowed:\t00000000,00000001\n\
         Mems_allowed_list:\t0\nvoluntary_ctxt_switches:\t12345\nnonvoluntary_ctxt_switches:\t678\n",
        list.to_mask(possible)
    )
}

pub fn sysctl_path(key: &str) -> String {
    format!("/proc/sys/{}", key.replace('.', "/"))
}

/// What the agent persists for the tuned preset (sysctl.d syntax, as apply renders it).
pub const AGENT_SYSCTL_CONF: &str = "\
# Written by node-agent; local changes are overwritten. See agentctl tune show.
fs.nr_open = 2097152
net.core.rmem_max = 134217728
net.core.wmem_max = 134217728
net.core.netdev_max_backlog = 300000
net.core.somaxconn = 65535
net.core.busy_read = 50
net.core.busy_poll = 50
net.ipv4.tcp_rmem = 4096 87380 134217728
net.ipv4.tcp_wmem = 4096 65536 134217728
net.ipv4.tcp_congestion_control = bbr
net.ipv4.tcp_slow_start_after_idle = 0
net.ipv4.tcp_tw_reuse = 1
net.ipv4.tcp_fin_timeout = 30
net.ipv4.tcp_keepalive_time = 1200
net.ipv4.tcp_keepalive_probes = 5
net.ipv4.tcp_keepalive_intvl = 15
net.ipv4.tcp_low_latency = 1
net.ipv4.tcp_no_metrics_save = 1
net.ipv4.tcp_fastopen = 3
vm.dirty_ratio = 10
vm.dirty_background_ratio = 3
vm.swappiness = 10
kernel.numa_balancing = 0
";

/// The agent's limits.d file for the tuned preset (line 2 is nofile).
pub const AGENT_LIMITS_CONF: &str = "\
# Written by node-agent; local changes are overwritten.
*\t-\tnofile\t1000000
*\t-\tnproc\t65536
*\t-\tmemlock\tunlimited
";

/// systemd 252's /usr/lib/sysctl.d/50-default.conf (Debian 12), abridged to its settings.
pub const SYSTEMD_50_DEFAULT: &str = "\
#  This file is part of systemd.
#
# See sysctl.d(5) and core(5) for documentation.

# System Request functionality of the kernel (SYNC)
kernel.sysrq = 0x01b6

# Append the PID to the core filename
kernel.core_uses_pid = 1

# Source route verification
net.ipv4.conf.default.rp_filter = 2
net.ipv4.conf.*.rp_filter = 2
-net.ipv4.conf.all.rp_filter

# Do not accept source routing
net.ipv4.conf.default.accept_source_route = 0
net.ipv4.conf.*.accept_source_route = 0
-net.ipv4.conf.all.accept_source_route

# Promote secondary addresses when the primary address is removed
net.ipv4.conf.default.promote_secondaries = 1
net.ipv4.conf.*.promote_secondaries = 1
-net.ipv4.conf.all.promote_secondaries

# ping(8) without CAP_NET_ADMIN and CAP_NET_RAW
-net.ipv4.ping_group_range = 0 2147483647

# Fair Queue CoDel packet scheduler to fight bufferbloat
-net.core.default_qdisc = fq_codel

# Enable hard and soft link protection
fs.protected_hardlinks = 1
fs.protected_symlinks = 1

# Enable regular file and FIFO protection
fs.protected_regular = 1
fs.protected_fifos = 1
";

/// Debian's /etc/security/limits.conf: examples only, every line a comment.
pub const DEBIAN_LIMITS_CONF: &str = "\
# /etc/security/limits.conf
#
#Each line describes a limit for a user in the form:
#
#<domain>        <type>  <item>  <value>
#
#Where:
#<domain> can be:
#        - a user name
#        - a group name, with @group syntax
#        - the wildcard *, for default entry
#
#<type> can have the two values:
#        - \"soft\" for enforcing the soft limits
#        - \"hard\" for enforcing hard limits
#
#<domain>      <type>  <item>         <value>
#

#*               soft    core            0
#root            hard    core            100000
#*               hard    rss             10000
#@student        hard    nproc           20
#@faculty        soft    nproc           20
#@faculty        hard    nproc           50
#ftp             hard    nproc           0
#ftp             -       chroot          /ftp
#@student        -       maxlogins       4

# End of file
";
