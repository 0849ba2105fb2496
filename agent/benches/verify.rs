//! In-process cost of `verify` (no criterion: std::time::Instant, many iterations, median and
//! p99). Run with `cargo bench -p node-agent --bench verify`; see docs/BENCHMARKS.md.
//!
//! Cases, all with the shipped `trading-latency` profile:
//! - this host's real kernel (`HostRoot::default()`), whole profile and one class at a time;
//! - a generated 64-CPU fixture tree (4 idle states per CPU, cpufreq, NVMe devices, a /data
//!   mount) in a temporary directory, in the real kernel files' formats;
//! - the other work of one `agentctl tune verify` process: loading the profile and rendering
//!   the report.
//!
//! `BENCH_ITERS=N` overrides the iteration count (default 2000 on the host, 500 on the fixture).

#![allow(clippy::print_stdout)]

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use node_agent::host::HostRoot;
use node_agent::profile::{self, Profile, ProfileFile, SearchPath};
use node_agent::tuning;

fn profiles_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("tuning-profiles")
}

fn iters(default: usize) -> usize {
    std::env::var("BENCH_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(default)
}

struct Stats {
    median: Duration,
    p99: Duration,
    min: Duration,
}

/// Runs `f` `n` times after `n / 10` warm-up runs and returns the distribution.
fn measure(n: usize, mut f: impl FnMut()) -> Stats {
    for _ in 0..(n / 10).max(5) {
        f();
    }
    let mut samples: Vec<Duration> = (0..n)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    samples.sort();
    let pct = |p: f64| samples[((p * n as f64).ceil() as usize).clamp(1, n) - 1];
    Stats {
        median: pct(0.50),
        p99: pct(0.99),
        min: samples[0],
    }
}

fn us(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e6)
}

fn header() {
    println!(
        "| case | items | iterations | median µs | p99 µs | min µs | median µs/item | p99 µs/item |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
}

fn row(case: &str, items: usize, n: usize, s: &Stats) {
    let per = |d: Duration| {
        if items == 0 {
            "-".to_owned()
        } else {
            format!("{:.2}", d.as_secs_f64() * 1e6 / items as f64)
        }
    };
    println!(
        "| {case} | {items} | {n} | {} | {} | {} | {} | {} |",
        us(s.median),
        us(s.p99),
        us(s.min),
        per(s.median),
        per(s.p99)
    );
}

/// Times a full verify of `profile` against `host`.
fn bench_verify(case: &str, host: &HostRoot, profile: &Profile, n: usize) {
    let items = tuning::verify(host, profile).items.len();
    let s = measure(n, || {
        black_box(tuning::verify(black_box(host), black_box(profile)));
    });
    row(case, items, n, &s);
}

/// The profile reduced to one class.
fn only(profile: &Profile, keep: impl FnOnce(&ProfileFile, &mut ProfileFile)) -> Profile {
    let mut p = profile.clone();
    let mut settings = ProfileFile::default();
    keep(&profile.settings, &mut settings);
    p.settings = settings;
    p
}

fn per_class(label: &str, host: &HostRoot, profile: &Profile, n: usize) {
    type Keep = fn(&ProfileFile, &mut ProfileFile);
    let classes: [(&str, Keep); 6] = [
        ("sysctl", |s, o| o.sysctl = s.sysctl.clone()),
        ("cpu", |s, o| o.cpu = s.cpu.clone()),
        ("memory", |s, o| o.memory = s.memory.clone()),
        ("block", |s, o| o.block = s.block.clone()),
        ("limits", |s, o| o.limits = s.limits.clone()),
        ("mount", |s, o| o.mount = s.mount.clone()),
    ];
    for (class, keep) in classes {
        let p = only(profile, keep);
        bench_verify(&format!("{label}: {class} only"), host, &p, n);
    }
}

/// Loading the profile (two TOML files with the include) and rendering the report: the rest
/// of what one `agentctl tune verify` process does besides reading the kernel.
fn process_parts(profile: &Profile, n: usize) {
    let spec = profile.source.to_string_lossy().into_owned();
    let search = SearchPath::new(vec![profiles_dir()]);
    let s = measure(n, || {
        black_box(profile::load(black_box(&spec), &search).expect("load"));
    });
    row("profile::load(trading-latency)", 0, n, &s);
    let report = tuning::verify(&HostRoot::default(), profile);
    let s = measure(n, || {
        black_box(black_box(&report).to_json());
    });
    row("Report::to_json (host report)", report.items.len(), n, &s);
    let s = measure(n, || {
        black_box(black_box(&report).to_table());
    });
    row("Report::to_table (host report)", report.items.len(), n, &s);
}

// ---------------------------------------------------------------------------------------------
// The 64-CPU fixture

const FIXTURE_CPUS: u32 = 64;

fn write(root: &Path, host_path: &str, contents: &str) {
    let path = root.join(host_path.trim_start_matches('/'));
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, contents).expect("write fixture");
}

/// A plausible default for a sysctl of the profile, in the kernel's own format.
fn sysctl_default(key: &str) -> &'static str {
    match key {
        "fs.file-max" => "9223372036854775807",
        "fs.nr_open" => "1048576",
        "net.core.rmem_max" | "net.core.wmem_max" => "212992",
        "net.core.netdev_max_backlog" => "1000",
        "net.core.somaxconn" => "4096",
        "net.ipv4.tcp_rmem" => "4096\t131072\t6291456",
        "net.ipv4.tcp_wmem" => "4096\t16384\t4194304",
        "net.ipv4.tcp_congestion_control" => "cubic",
        "net.ipv4.tcp_slow_start_after_idle" => "1",
        "net.ipv4.tcp_tw_reuse" => "2",
        "net.ipv4.tcp_fin_timeout" => "60",
        "net.ipv4.tcp_keepalive_time" => "7200",
        "net.ipv4.tcp_keepalive_probes" => "9",
        "net.ipv4.tcp_keepalive_intvl" => "75",
        _ => "0",
    }
}

/// A server-sized host: 64 CPUs with intel_idle's four states and acpi-cpufreq, two NVMe
/// drives and a SATA disk, swap on, a /data mount, the usual sysctl.d and limits files.
fn build_fixture(root: &Path, profile: &Profile) {
    for key in profile.settings.sysctl.keys() {
        write(
            root,
            &key.proc_path(),
            &format!("{}\n", sysctl_default(&key.to_string())),
        );
    }
    write(root, "/proc/sys/kernel/hostname", "bench-64cpu\n");

    let cpu = "/sys/devices/system/cpu";
    write(
        root,
        &format!("{cpu}/online"),
        &format!("0-{}\n", FIXTURE_CPUS - 1),
    );
    let states = [("POLL", 0), ("C1", 2), ("C1E", 10), ("C6", 133)];
    for c in 0..FIXTURE_CPUS {
        let d = format!("{cpu}/cpu{c}");
        write(
            root,
            &format!("{d}/cpufreq/scaling_governor"),
            "powersave\n",
        );
        write(
            root,
            &format!("{d}/cpufreq/scaling_available_governors"),
            "performance powersave\n",
        );
        for (i, (name, latency)) in states.iter().enumerate() {
            let s = format!("{d}/cpuidle/state{i}");
            write(root, &format!("{s}/name"), &format!("{name}\n"));
            write(root, &format!("{s}/latency"), &format!("{latency}\n"));
            write(root, &format!("{s}/disable"), "0\n");
        }
    }

    let thp = "/sys/kernel/mm/transparent_hugepage";
    write(root, &format!("{thp}/enabled"), "always [madvise] never\n");
    write(
        root,
        &format!("{thp}/defrag"),
        "always defer defer+madvise [madvise] never\n",
    );
    write(
        root,
        "/proc/swaps",
        "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n\
         /dev/nvme0n1p3                          partition\t8388604\t\t0\t\t-2\n",
    );
    for dev in ["nvme0n1", "nvme1n1", "sda", "loop0"] {
        let sched = if dev.starts_with("sd") {
            "[mq-deadline] kyber bfq none\n"
        } else {
            "[none] mq-deadline kyber bfq\n"
        };
        write(root, &format!("/sys/block/{dev}/queue/scheduler"), sched);
        write(
            root,
            &format!("/sys/block/{dev}/queue/read_ahead_kb"),
            "128\n",
        );
    }

    write(
        root,
        "/etc/fstab",
        "# /etc/fstab: static file system information.\n\
         UUID=0b6c9f4e-1f39-4c5e-9e7b-2a4d5d9b1a11 /               ext4    errors=remount-ro 0       1\n\
         UUID=5d2a-1b3c  /boot/efi       vfat    umask=0077      0       1\n\
         /dev/nvme1n1p1  /data           xfs     defaults,noatime 0      2\n\
         /dev/nvme0n1p3  none            swap    sw              0       0\n",
    );
    let mut mountinfo = String::from(
        "22 1 259:2 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p2 rw,errors=remount-ro\n\
         23 22 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw\n\
         24 22 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:2 - sysfs sysfs rw\n\
         25 22 0:5 / /dev rw,nosuid,relatime shared:8 - devtmpfs udev rw,size=131841244k,nr_inodes=32960311,mode=755,inode64\n\
         26 25 0:23 / /dev/shm rw,nosuid,nodev shared:9 - tmpfs tmpfs rw,inode64\n\
         27 25 0:24 / /dev/pts rw,nosuid,noexec,relatime shared:10 - devpts devpts rw,gid=5,mode=620,ptmxmode=000\n\
         28 22 0:25 / /run rw,nosuid,nodev,noexec,relatime shared:11 - tmpfs tmpfs rw,size=26377812k,mode=755,inode64\n\
         29 24 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:3 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n\
         30 22 259:1 / /boot/efi rw,relatime shared:29 - vfat /dev/nvme0n1p1 rw,fmask=0077,dmask=0077,codepage=437,iocharset=ascii,shortname=mixed,utf8,errors=remount-ro\n",
    );
    for i in 0..20 {
        mountinfo.push_str(&format!(
            "{} 28 0:{} / /run/user/{} rw,nosuid,nodev,relatime shared:{} - tmpfs tmpfs rw,size=26377808k,nr_inodes=6594452,mode=700,uid={},gid={},inode64\n",
            40 + i,
            60 + i,
            1000 + i,
            100 + i,
            1000 + i,
            1000 + i
        ));
    }
    mountinfo.push_str(
        "90 22 259:5 / /data rw,noatime shared:40 - xfs /dev/nvme1n1p1 rw,attr2,inode64,logbufs=8,logbsize=32k,noquota\n",
    );
    write(root, "/proc/self/mountinfo", &mountinfo);

    let mut limits = String::from("# /etc/security/limits.conf\n#\n");
    for _ in 0..50 {
        limits.push_str("#<domain>      <type>  <item>         <value>\n");
    }
    write(root, "/etc/security/limits.conf", &limits);
    write(
        root,
        "/etc/security/limits.d/90-trading.conf",
        "@trading - memlock unlimited\n@trading - rtprio 99\n",
    );
    write(
        root,
        "/etc/security/limits.d/zz-node-agent.conf",
        "* - nofile 1000000\n* - nproc 65536\n* - memlock unlimited\n",
    );
    write(
        root,
        "/etc/sysctl.d/99-sysctl.conf",
        "# /etc/sysctl.conf - Configuration file for setting system variables\n\
         #kernel.domainname = example.com\n#net.ipv4.conf.default.rp_filter=1\n",
    );
    write(
        root,
        "/usr/lib/sysctl.d/50-default.conf",
        "kernel.sysrq = 16\nkernel.core_uses_pid = 1\nnet.ipv4.conf.default.rp_filter = 2\n\
         -net.ipv4.conf.*.rp_filter = 2\nnet.ipv4.conf.default.accept_source_route = 0\n\
         net.ipv4.ping_group_range = 0 2147483647\nnet.core.default_qdisc = fq_codel\n\
         fs.protected_hardlinks = 1\nfs.protected_symlinks = 1\nfs.protected_regular = 1\n",
    );
    write(
        root,
        "/usr/lib/sysctl.d/50-pid-max.conf",
        "kernel.pid_max = 4194304\n",
    );
}

fn main() {
    let search = SearchPath::new(vec![profiles_dir()]);
    let path = profiles_dir().join("trading-latency.toml");
    let profile = profile::load(&path.to_string_lossy(), &search).expect("load trading-latency");
    let host = HostRoot::default();

    // The first verify in a fresh process pays for code, page and allocator first touches,
    // as a one-shot `agentctl` does; the loops below measure the warm steady state.
    let t = Instant::now();
    let first = tuning::verify(&host, &profile);
    let cold = t.elapsed();
    println!(
        "first verify in this process (cold, one sample): {} µs for {} items\n",
        us(cold),
        first.items.len()
    );

    println!("## verify: trading-latency, in-process\n");
    header();
    let n = iters(2000);
    bench_verify("real host: full verify", &host, &profile, n);
    per_class("real host", &host, &profile, n);

    let dir = tempfile::tempdir().expect("tempdir");
    build_fixture(dir.path(), &profile);
    let fixture = HostRoot::new(dir.path());
    let n = iters(500);
    bench_verify(
        &format!("{FIXTURE_CPUS}-CPU fixture: full verify"),
        &fixture,
        &profile,
        n,
    );
    per_class(
        &format!("{FIXTURE_CPUS}-CPU fixture"),
        &fixture,
        &profile,
        n,
    );

    println!("\n## the rest of an agentctl process, in-process\n");
    header();
    process_parts(&profile, iters(2000));
}
