//! Cost of the stray-task audit (`tuning::isolation::tasks::audit`) on this host's real /proc,
//! per 1,000 tasks, side by side with the floor of reading the same files raw. No criterion:
//! std::time::Instant, many iterations, median and p90. Run with
//! `cargo bench -p node-agent --bench audit` (as root: it starts thousands of processes);
//! see docs/BENCHMARKS.md and scripts/bench-audit.sh.
//!
//! For each N (default 1000 and 3000) the bench starts N `sleep 600` children, in two cases:
//! - **all CPUs**: the children may run anywhere, so with isolated CPUs every one of them is a
//!   stray and the audit also reads each one's cgroup (the worst case: a host before apply);
//! - **housekeeping**: the children are started with `taskset -c 0` (what systemd's
//!   `CPUAffinity=` gives every unit after apply), so only the affinity check runs for them.
//!
//! The layout is housekeeping CPU 0, isolated the other online CPUs. Each iteration runs the
//! audit, then two floors over every file the audit reads in the worst case (stat, status and
//! cgroup of every process, stat and status of every other thread), listed once before timing
//! (the floors list no directories and parse nothing): `cat`-like (open by absolute path,
//! read(2) to EOF, close) and with the audit's own syscalls (openat relative to an open /proc,
//! one read(2), close). Running the three alternately puts this shared VM's noise on all. Every child is killed by its pid when its
//! case ends, also when the bench panics (a drop guard), and reaped.
//!
//! `BENCH_TASKS=1000,3000` sets the Ns, `BENCH_ITERS=N` the iterations per case (default 100).

#![allow(clippy::print_stdout)]

use std::fs::File;
use std::hint::black_box;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::fcntl::{OFlag, openat};
use nix::sys::stat::Mode;
use node_agent::host::HostRoot;
use node_agent::profile::Isolation;
use node_agent::profile::types::CpuList;
use node_agent::tuning::isolation::tasks;

fn env_list(name: &str, default: &[usize]) -> Vec<usize> {
    std::env::var(name)
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .filter(|v: &Vec<usize>| !v.is_empty())
        .unwrap_or_else(|| default.to_vec())
}

/// Children killed by their pids and reaped on drop, also when the bench panics.
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
        }
        for c in &mut self.0 {
            let _ = c.wait();
        }
    }
}

/// Starts `n` sleeping children, pinned to CPU 0 with taskset when `pin`; returns once every
/// one of them is `sleep` (taskset has exec'ed it).
fn start(n: usize, pin: bool) -> Children {
    let mut children = Children(Vec::with_capacity(n));
    for _ in 0..n {
        let mut cmd = if pin {
            let mut c = Command::new("taskset");
            c.args(["-c", "0", "sleep", "600"]);
            c
        } else {
            let mut c = Command::new("sleep");
            c.arg("600");
            c
        };
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start a sleeping child");
        children.0.push(child);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    for c in &children.0 {
        let comm = format!("/proc/{}/comm", c.id());
        while std::fs::read_to_string(&comm).ok().as_deref() != Some("sleep\n") {
            assert!(
                Instant::now() < deadline,
                "child {} never became sleep",
                c.id()
            );
            std::thread::yield_now();
        }
    }
    children
}

/// Every file the audit reads in the worst case (absolute, and relative to /proc), and the
/// number of tasks they describe.
fn floor_files() -> (Vec<PathBuf>, Vec<Vec<u8>>, usize) {
    let mut files = Vec::new();
    let mut tasks = 0;
    let numbered = |dir: &Path| -> Vec<u32> {
        std::fs::read_dir(dir)
            .map(|es| {
                es.filter_map(Result::ok)
                    .filter_map(|e| e.file_name().to_str()?.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    };
    for pid in numbered(Path::new("/proc")) {
        let dir = PathBuf::from(format!("/proc/{pid}"));
        files.extend(["stat", "status", "cgroup"].map(|f| dir.join(f)));
        tasks += 1;
        for tid in numbered(&dir.join("task")) {
            if tid != pid {
                let t = dir.join(format!("task/{tid}"));
                files.extend(["stat", "status"].map(|f| t.join(f)));
                tasks += 1;
            }
        }
    }
    let rel = files
        .iter()
        .map(|p| {
            p.strip_prefix("/proc")
                .expect("under /proc")
                .as_os_str()
                .as_bytes()
                .to_vec()
        })
        .collect();
    (files, rel, tasks)
}

/// The `cat` floor: each file opened, read to EOF into one reused buffer, closed. Files of
/// tasks that ended since the list was made are skipped.
fn read_raw(files: &[PathBuf], buf: &mut [u8]) -> usize {
    let mut total = 0;
    for path in files {
        let Ok(mut f) = File::open(path) else {
            continue;
        };
        loop {
            match f.read(buf) {
                Ok(0) => break,
                Ok(n) => total += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    }
    total
}

/// The floor with the audit's own syscalls: openat relative to an open /proc, one read(2).
fn read_min(proc_fd: &File, rel: &[Vec<u8>], buf: &mut [u8]) -> usize {
    let mut total = 0;
    for path in rel {
        let flags = OFlag::O_RDONLY | OFlag::O_CLOEXEC;
        let Ok(fd) = openat(proc_fd, &path[..], flags, Mode::empty()) else {
            continue;
        };
        total += File::from(fd).read(buf).unwrap_or(0);
    }
    total
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    let n = sorted.len();
    sorted[((p * n as f64).ceil() as usize).clamp(1, n) - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Times the audit and the floor alternately; prints one table row.
fn bench_case(case: &str, host: &HostRoot, iso: &Isolation, iters: usize) {
    let (files, rel, floor_tasks) = floor_files();
    let proc_fd = File::open("/proc").expect("open /proc");
    let mut buf = vec![0u8; 8192];
    let first = tasks::audit(host, iso).expect("audit");
    for _ in 0..(iters / 10).max(3) {
        black_box(tasks::audit(host, iso).expect("audit"));
        black_box(read_raw(&files, &mut buf));
        black_box(read_min(&proc_fd, &rel, &mut buf));
    }
    let (mut audit_per_k, mut floor_per_k, mut audit_ms) = (Vec::new(), Vec::new(), Vec::new());
    let (mut min_per_k, mut scanned) = (Vec::new(), Vec::new());
    for _ in 0..iters {
        let t = Instant::now();
        let a = black_box(tasks::audit(host, iso).expect("audit"));
        let d = t.elapsed();
        audit_ms.push(ms(d));
        audit_per_k.push(ms(d) * 1000.0 / a.tasks_scanned as f64);
        scanned.push(a.tasks_scanned);
        let t = Instant::now();
        black_box(read_raw(&files, &mut buf));
        floor_per_k.push(ms(t.elapsed()) * 1000.0 / floor_tasks as f64);
        let t = Instant::now();
        black_box(read_min(&proc_fd, &rel, &mut buf));
        min_per_k.push(ms(t.elapsed()) * 1000.0 / floor_tasks as f64);
    }
    for v in [
        &mut audit_per_k,
        &mut floor_per_k,
        &mut min_per_k,
        &mut audit_ms,
    ] {
        v.sort_by(f64::total_cmp);
    }
    scanned.sort_unstable();
    let ratio = pct(&audit_per_k, 0.5) / pct(&floor_per_k, 0.5);
    println!(
        "| {case} | {} | {} | {} | {} | {iters} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {ratio:.2}x |",
        scanned[scanned.len() / 2],
        first.stray.len(),
        first.expected_kthreads.len(),
        files.len(),
        pct(&audit_ms, 0.5),
        pct(&audit_per_k, 0.5),
        pct(&audit_per_k, 0.9),
        pct(&floor_per_k, 0.5),
        pct(&floor_per_k, 0.9),
        pct(&min_per_k, 0.5),
    );
}

fn main() {
    let online = std::fs::read_to_string("/sys/devices/system/cpu/online").expect("online CPUs");
    let online = CpuList::parse_kernel(online.trim()).expect("online CPU list");
    let isolated: CpuList = online.iter().filter(|&c| c != 0).collect();
    assert!(!isolated.is_empty(), "needs at least two online CPUs");
    let iso: Isolation = toml::from_str(&format!(
        "housekeeping_cpus = \"0\"\nisolated_cpus = \"{isolated}\"\n"
    ))
    .expect("layout");
    let host = HostRoot::default();
    let iters = env_list("BENCH_ITERS", &[100])[0].max(1);

    let t = Instant::now();
    let cold = tasks::audit(&host, &iso).expect("audit");
    println!(
        "first audit in this process (cold, one sample): {:.2} ms for {} tasks\n",
        ms(t.elapsed()),
        cold.tasks_scanned
    );
    println!("## stray-task audit: housekeeping 0, isolated {isolated}\n");
    println!(
        "| case | tasks scanned | stray | expected kthreads | floor files | iterations | \
         audit median ms | audit median ms/1000 | audit p90 ms/1000 | floor median ms/1000 | \
         floor p90 ms/1000 | same-syscalls floor median ms/1000 | audit/floor (median) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    bench_case("this host as it is", &host, &iso, iters);
    for n in env_list("BENCH_TASKS", &[1000, 3000]) {
        for pin in [false, true] {
            let children = start(n, pin);
            let where_ = if pin { "housekeeping" } else { "all CPUs" };
            bench_case(&format!("+{n} sleep, {where_}"), &host, &iso, iters);
            drop(children);
        }
    }
}
