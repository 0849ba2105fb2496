//! The stray-task audit: tasks that may run, or last ran, on an isolated CPU.
//!
//! Every task (/proc/PID/task/TID) is looked at; a task is *on* the isolated CPUs when its
//! affinity (`Cpus_allowed_list` of its status) intersects them or its last CPU (field 39,
//! `processor`, of its stat) is one of them. Of those:
//!
//! - tasks of the engine units (the last `.service`/`.scope` component of the process's systemd
//!   cgroup, `name=systemd` on cgroup v1, else the v2 `0::` line) are where they belong: left out;
//! - kernel threads (PF_KTHREAD) that cannot be moved (PF_NO_SETAFFINITY: per-CPU kworkers,
//!   ksoftirqd/N, migration/N, cpuhp/N, and workqueue workers, whose CPUs follow the workqueue
//!   cpumask that [`super::workqueue`] verifies) or that are bound to exactly one CPU are listed
//!   apart as expected, not as drift;
//! - everything else is a stray task (drift).
//!
//! Zombies (state Z or X) are counted but never reported: they will not run again. Tasks that
//! end during the scan (ENOENT or ESRCH on a read) are skipped without a word: on a live host
//! that is a normal race. A process directory without `task/` (only in fixture trees; every
//! kernel since 2.6 has it) is audited as its main thread alone.
//!
//! Reading as little as possible (the audit walks every task of the host): per process,
//! /proc/PID/stat and /proc/PID/status, which for the thread-group leader show the leader's own
//! flags, last CPU and affinity; `task/` is listed only when stat's `num_threads` is above one,
//! and then each other thread's stat and status are read; /proc/PID/cgroup only for a process
//! with a task on the isolated CPUs that is not a kernel thread (kernel threads live in the root
//! cgroup); status not at all for a zombie. Files are opened relative to an open /proc and read
//! with one read(2) each; one read buffer and one path buffer serve the whole scan; affinity is checked against the isolated CPUs without building a set, and the comm and
//! the CPU list are only copied out for the tasks that are reported.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Write as _};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{OFlag, openat};
use nix::sys::stat::Mode;
use serde::Serialize;

use crate::host::{HostError, HostRoot};
use crate::profile::Isolation;
use crate::profile::types::{CpuList, UnitName};
use crate::verify::{Class, Item, Status};

/// Bumped on any incompatible change of the audit's JSON; additions keep the version.
pub const AUDIT_SCHEMA_VERSION: u32 = 1;

/// `PF_KTHREAD` (include/linux/sched.h): the task is a kernel thread.
pub const PF_KTHREAD: u64 = 0x0020_0000;
/// `PF_NO_SETAFFINITY`: userland may not change the task's affinity (per-CPU kthreads,
/// workqueue workers).
pub const PF_NO_SETAFFINITY: u64 = 0x0400_0000;

const ESRCH: i32 = 3;

/// How many processes the verify item names before `…`.
const NAMED_IN_ITEM: usize = 3;

/// One task on the isolated CPUs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Task {
    pub pid: u32,
    pub tid: u32,
    /// The task's name as stat shows it (kworkers carry their current workqueue: `-events`).
    pub comm: String,
    /// The systemd unit of its process, when it is in one.
    pub unit: Option<String>,
    /// The CPUs it may run on, compact (`0-3,8`).
    pub affinity: CpuList,
    /// The CPU it last ran on.
    pub last_cpu: u32,
    pub kernel_thread: bool,
    /// PF_NO_SETAFFINITY: its affinity cannot be changed from userland.
    pub no_setaffinity: bool,
}

/// The result of one scan of every task of the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TaskAudit {
    pub schema_version: u32,
    pub isolated_cpus: CpuList,
    /// Every task looked at (all of the host's tasks that did not end during the scan).
    pub tasks_scanned: usize,
    /// Tasks that may run, or last ran, on an isolated CPU and belong there neither as an
    /// engine unit's task nor as an immovable kernel thread; by pid, tid.
    pub stray: Vec<Task>,
    /// Kernel threads on the isolated CPUs that cannot be moved (PF_NO_SETAFFINITY) or are
    /// bound to one CPU: expected, not drift; by pid, tid.
    pub expected_kthreads: Vec<Task>,
}

impl TaskAudit {
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

/// Scans every task of the host. Errors are listing /proc itself, or reading a task's files
/// failing for another reason than the task having ended, or a file not in the kernel's format.
pub fn audit(host: &HostRoot, iso: &Isolation) -> Result<TaskAudit, HostError> {
    let proc_dir = host.path("/proc")?;
    let proc_fd = File::open(&proc_dir).map_err(|source| HostError::List {
        path: proc_dir.clone(),
        source,
    })?;
    let isolated: Vec<u32> = iso.isolated_cpus.iter().collect();
    let mut scan = Scan {
        isolated: &isolated,
        engine: &iso.engine_units,
        proc_dir: &proc_dir,
        proc_fd,
        rel: Vec::with_capacity(48),
        buf: vec![0; 4096],
        comm: Vec::with_capacity(64),
        scanned: 0,
        stray: Vec::new(),
        expected: Vec::new(),
    };
    let list_err = |source| HostError::List {
        path: proc_dir.clone(),
        source,
    };
    for entry in std::fs::read_dir(&proc_dir).map_err(list_err)? {
        let entry = entry.map_err(list_err)?;
        if let Some(pid) = number(entry.file_name().as_bytes()) {
            scan.process(pid)?;
        }
    }
    let key = |t: &Task| (t.pid, t.tid);
    scan.stray.sort_by_key(key);
    scan.expected.sort_by_key(key);
    Ok(TaskAudit {
        schema_version: AUDIT_SCHEMA_VERSION,
        isolated_cpus: iso.isolated_cpus.clone(),
        tasks_scanned: scan.scanned,
        stray: scan.stray,
        expected_kthreads: scan.expected,
    })
}

/// The verify item `isolation.stray_tasks`. Apply never moves foreign tasks (a task's affinity
/// is its owner's decision; the fix is the owner's unit or systemd's `CPUAffinity=`), so a
/// drift carries no fix.
pub fn verify(host: &HostRoot, iso: &Isolation, out: &mut Vec<Item>) {
    let item = Item::new(Class::Isolation, "isolation.stray_tasks", "none");
    out.push(match audit(host, iso) {
        Ok(a) if a.stray.is_empty() => item.actual("none"),
        Ok(a) => item
            .actual(stray_summary(&a.stray))
            .status(Status::Drift)
            .reason(format!(
                "tasks outside the engine units may run on isolated CPUs {}; apply does not \
                 move foreign tasks: `agentctl isolation audit` lists them",
                a.isolated_cpus
            )),
        Err(e) => item
            .status(Status::Error)
            .reason(format!("task audit failed: {e}")),
    });
}

/// `3 tasks: chronyd (812), sshd (955), …`: the count, then the first processes by pid.
fn stray_summary(stray: &[Task]) -> String {
    let mut named: Vec<&Task> = Vec::new();
    let mut more = false;
    for t in stray {
        if named.last().is_some_and(|n| n.pid == t.pid) {
            continue;
        }
        if named.len() == NAMED_IN_ITEM {
            more = true;
            break;
        }
        named.push(t);
    }
    let mut s = format!(
        "{} task{}: ",
        stray.len(),
        if stray.len() == 1 { "" } else { "s" }
    );
    let names: Vec<String> = named
        .iter()
        .map(|t| format!("{} ({})", t.comm, t.pid))
        .collect();
    s.push_str(&names.join(", "));
    if more {
        s.push_str(", …");
    }
    s
}

/// Table widths; with the single spaces between them a line is at most 91 columns.
const W_PID: usize = 7;
const W_COMM: usize = 16;
const W_UNIT: usize = 28;
const W_AFF: usize = 20;
const W_LAST: usize = 8;
const MAX_LINE: usize = 100;

/// The audit for people: a header line, the stray tasks as a table (PID TID COMM UNIT AFFINITY
/// LAST-CPU), then the expected kernel threads as one line per affinity (`CPU 5 (4): …`).
pub fn render(a: &TaskAudit, out: &mut dyn io::Write) -> io::Result<()> {
    let cpus = &a.isolated_cpus;
    if a.stray.is_empty() {
        writeln!(
            out,
            "no stray tasks on isolated CPUs {cpus} ({} tasks scanned)",
            a.tasks_scanned
        )?;
    } else {
        writeln!(
            out,
            "{} stray task{} on isolated CPUs {cpus} ({} tasks scanned):",
            a.stray.len(),
            if a.stray.len() == 1 { "" } else { "s" },
            a.tasks_scanned
        )?;
        writeln!(
            out,
            "{:>W_PID$} {:>W_PID$} {:<W_COMM$} {:<W_UNIT$} {:<W_AFF$} {:>W_LAST$}",
            "PID", "TID", "COMM", "UNIT", "AFFINITY", "LAST-CPU"
        )?;
        for t in &a.stray {
            writeln!(
                out,
                "{:>W_PID$} {:>W_PID$} {:<W_COMM$} {:<W_UNIT$} {:<W_AFF$} {:>W_LAST$}",
                t.pid,
                t.tid,
                fit(&t.comm, W_COMM),
                fit(t.unit.as_deref().unwrap_or("-"), W_UNIT),
                fit(&t.affinity.to_string(), W_AFF),
                t.last_cpu
            )?;
        }
    }
    if a.expected_kthreads.is_empty() {
        return Ok(());
    }
    writeln!(
        out,
        "{} expected kernel thread{} on isolated CPUs (per-CPU or not movable):",
        a.expected_kthreads.len(),
        if a.expected_kthreads.len() == 1 {
            ""
        } else {
            "s"
        }
    )?;
    // One line per affinity: single CPUs first, by CPU, then the wider ones.
    let mut groups: Vec<(&CpuList, Vec<&str>)> = Vec::new();
    for t in &a.expected_kthreads {
        match groups.iter_mut().find(|(c, _)| **c == t.affinity) {
            Some((_, names)) => names.push(&t.comm),
            None => groups.push((&t.affinity, vec![&t.comm])),
        }
    }
    groups.sort_by_key(|(c, _)| (c.len() != 1, c.iter().next(), c.len()));
    for (cpus, names) in groups {
        let label = if cpus.len() == 1 { "CPU" } else { "CPUs" };
        let head = format!("  {label} {cpus} ({}): ", names.len());
        writeln!(out, "{}", joined_to_fit(head, &names, MAX_LINE))?;
    }
    Ok(())
}

/// `s` cut to `width` characters, the last one `…` when cut.
fn fit(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        return s.to_owned();
    }
    let mut cut: String = s.chars().take(width - 1).collect();
    cut.push('…');
    cut
}

/// `head` then `names` joined by `, `, stopping with `, …` before the line passes `max`.
fn joined_to_fit(mut line: String, names: &[&str], max: usize) -> String {
    const MORE: &str = ", …";
    for (i, name) in names.iter().enumerate() {
        let sep = if i == 0 { "" } else { ", " };
        let room_for_more = if i + 1 == names.len() { 0 } else { 3 };
        if line.chars().count() + sep.len() + name.chars().count() + room_for_more > max {
            line.push_str(if i == 0 { "…" } else { MORE });
            return line;
        }
        line.push_str(sep);
        line.push_str(name);
    }
    line
}

// ---------------------------------------------------------------------------------------------
// The scan

struct Scan<'a> {
    /// Sorted.
    isolated: &'a [u32],
    engine: &'a [UnitName],
    /// The real /proc directory (for listing task/ and for error messages) and an open
    /// descriptor of it: files are opened relative to it, which spares the kernel the lookup
    /// of the path's first components on every open.
    proc_dir: &'a Path,
    proc_fd: File,
    /// The file being read, relative to /proc (`PID/stat`, `PID/task/TID/status`).
    rel: Vec<u8>,
    /// The read buffer, zero-filled once and grown as needed; only `..len` of a read counts.
    buf: Vec<u8>,
    /// The comm of the task being read.
    comm: Vec<u8>,
    scanned: usize,
    stray: Vec<Task>,
    expected: Vec<Task>,
}

/// What one task's stat and status gave.
struct Seen {
    num_threads: u32,
    flags: u64,
    last_cpu: u32,
    /// Comm and affinity, copied out only for a task on the isolated CPUs.
    on_isolated: Option<(String, CpuList)>,
}

/// The unit of a process, read once per process and only when needed.
enum Unit {
    NotRead,
    Gone,
    Known(Option<String>),
}

impl Scan<'_> {
    /// Every task of one process.
    fn process(&mut self, pid: u32) -> Result<(), HostError> {
        let Some(leader) = self.task(pid, None)? else {
            return Ok(());
        };
        let mut unit = Unit::NotRead;
        let threads = leader.num_threads;
        self.classify(pid, pid, leader, &mut unit)?;
        if threads <= 1 {
            return Ok(());
        }
        self.set_path(pid, None, "task");
        let dir = self.full_path();
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            // The process ended, or a fixture tree without task/: its main thread alone.
            Err(e) if gone(&e) => return Ok(()),
            Err(source) => return Err(HostError::List { path: dir, source }),
        };
        for entry in entries {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) if gone(&e) => return Ok(()),
                Err(source) => return Err(HostError::List { path: dir, source }),
            };
            let Some(tid) = number(entry.file_name().as_bytes()) else {
                continue;
            };
            if tid == pid {
                continue;
            }
            if let Some(seen) = self.task(pid, Some(tid))? {
                self.classify(pid, tid, seen, &mut unit)?;
            }
        }
        Ok(())
    }

    /// Reads one task's stat (and status unless it is a zombie). `None`: it has ended.
    fn task(&mut self, pid: u32, tid: Option<u32>) -> Result<Option<Seen>, HostError> {
        self.set_path(pid, tid, "stat");
        let Some(len) = self.read()? else {
            return Ok(None);
        };
        let Some(fields) = parse_stat(&self.buf[..len]) else {
            return Err(self.bad_format("no pid (comm) state ... processor fields"));
        };
        self.scanned += 1;
        let mut seen = Seen {
            num_threads: fields.num_threads,
            flags: fields.flags,
            last_cpu: fields.processor,
            on_isolated: None,
        };
        if matches!(fields.state, b'Z' | b'X' | b'x') {
            return Ok(Some(seen));
        }
        // Kept aside (no allocation) while status is read into the same buffer.
        self.comm.clear();
        self.comm
            .extend_from_slice(&self.buf[fields.comm.0..fields.comm.1]);
        let last_isolated = self.isolated.binary_search(&fields.processor).is_ok();
        self.set_path(pid, tid, "status");
        let Some(len) = self.read()? else {
            return Ok(None);
        };
        let Some(list) = allowed_list(&self.buf[..len]) else {
            return Err(self.bad_format("no Cpus_allowed_list line"));
        };
        let Some(allowed_isolated) = intersects(list, self.isolated) else {
            return Err(self.bad_format("Cpus_allowed_list is not a CPU list"));
        };
        if allowed_isolated || last_isolated {
            let text = std::str::from_utf8(list).unwrap_or_default();
            let Ok(affinity) = CpuList::parse_kernel(text) else {
                return Err(self.bad_format("Cpus_allowed_list is not a CPU list"));
            };
            let comm = String::from_utf8_lossy(&self.comm).into_owned();
            seen.on_isolated = Some((comm, affinity));
        }
        Ok(Some(seen))
    }

    /// Files a task on the isolated CPUs as stray or expected, or leaves it out (engine unit).
    fn classify(
        &mut self,
        pid: u32,
        tid: u32,
        seen: Seen,
        unit: &mut Unit,
    ) -> Result<(), HostError> {
        let Some((comm, affinity)) = seen.on_isolated else {
            return Ok(());
        };
        let kernel_thread = seen.flags & PF_KTHREAD != 0;
        let no_setaffinity = seen.flags & PF_NO_SETAFFINITY != 0;
        let unit_name = if kernel_thread {
            None
        } else {
            if matches!(unit, Unit::NotRead) {
                *unit = self.unit(pid)?;
            }
            match unit {
                Unit::Known(u) => u.clone(),
                Unit::Gone | Unit::NotRead => return Ok(()),
            }
        };
        if let Some(u) = &unit_name
            && self.engine.iter().any(|e| e.as_str() == u)
        {
            return Ok(());
        }
        let expected = kernel_thread && (no_setaffinity || affinity.len() == 1);
        let task = Task {
            pid,
            tid,
            comm,
            unit: unit_name,
            affinity,
            last_cpu: seen.last_cpu,
            kernel_thread,
            no_setaffinity,
        };
        if expected {
            self.expected.push(task);
        } else {
            self.stray.push(task);
        }
        Ok(())
    }

    /// The unit of a process from /proc/PID/cgroup.
    fn unit(&mut self, pid: u32) -> Result<Unit, HostError> {
        self.set_path(pid, None, "cgroup");
        Ok(match self.read()? {
            None => Unit::Gone,
            Some(len) => Unit::Known(unit_of_cgroup(&String::from_utf8_lossy(&self.buf[..len]))),
        })
    }

    /// `PID/FILE` or `PID/task/TID/FILE` (relative to /proc) into the path buffer.
    fn set_path(&mut self, pid: u32, tid: Option<u32>, file: &str) {
        self.rel.clear();
        // Writing into a Vec cannot fail.
        let _ = match tid {
            None => write!(self.rel, "{pid}/{file}"),
            Some(tid) => write!(self.rel, "{pid}/task/{tid}/{file}"),
        };
    }

    /// The real path of the file in the path buffer.
    fn full_path(&self) -> PathBuf {
        self.proc_dir.join(OsStr::from_bytes(&self.rel))
    }

    /// Reads the file named by the path buffer into the read buffer: its length, or `None`
    /// when the task has ended (ENOENT, ESRCH).
    fn read(&mut self) -> Result<Option<usize>, HostError> {
        let opened = openat(
            &self.proc_fd,
            &self.rel[..],
            OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        );
        match opened
            .map_err(io::Error::from)
            .and_then(|fd| read_into(File::from(fd), &mut self.buf))
        {
            Ok(len) => Ok(Some(len)),
            Err(e) if gone(&e) => Ok(None),
            Err(source) => Err(HostError::Read {
                path: self.full_path(),
                source,
            }),
        }
    }

    fn bad_format(&self, what: &str) -> HostError {
        HostError::Read {
            path: self.full_path(),
            source: io::Error::new(
                io::ErrorKind::InvalidData,
                format!("unexpected format: {what}"),
            ),
        }
    }
}

/// The task has ended (or, in a fixture tree, its file is missing).
fn gone(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(ESRCH)
}

/// Reads a whole file into `buf` (grown as needed). A read that does not fill the buffer ends
/// it: /proc's stat, status and cgroup are seq_files that return their whole text to a read
/// large enough for it (so a short read is the end of the file), as regular files do; this
/// spares the second read(2) that would only return 0, one syscall in four per file.
fn read_into(mut file: File, buf: &mut Vec<u8>) -> io::Result<usize> {
    let mut len = 0;
    loop {
        if len == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
        match file.read(&mut buf[len..]) {
            Ok(0) => return Ok(len),
            Ok(n) => {
                len += n;
                if len < buf.len() {
                    return Ok(len);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// A decimal number (a /proc entry name, a stat field).
fn number<T: std::str::FromStr>(b: &[u8]) -> Option<T> {
    if b.is_empty() || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(b).ok()?.parse().ok()
}

/// The fields of /proc/PID/stat the audit needs.
#[derive(Debug, PartialEq, Eq)]
struct StatFields {
    /// Byte range of the comm, between the first `(` and the last `)`.
    comm: (usize, usize),
    state: u8,
    flags: u64,
    num_threads: u32,
    processor: u32,
}

/// `pid (comm) state ppid ...`: the comm may hold spaces and parentheses, so the fields are
/// counted from the last `)`. Field 3 state, 9 flags, 20 num_threads, 39 processor.
fn parse_stat(b: &[u8]) -> Option<StatFields> {
    let open = b.iter().position(|&c| c == b'(')?;
    let close = b.iter().rposition(|&c| c == b')')?;
    if close < open {
        return None;
    }
    let mut f = b.get(close + 2..)?.split(|&c| c == b' ');
    let state = *f.next()?.first()?;
    let flags = number(f.nth(5)?)?;
    let num_threads = number(f.nth(10)?)?;
    let processor = number(f.nth(18)?)?;
    Some(StatFields {
        comm: (open + 1, close),
        state,
        flags,
        num_threads,
        processor,
    })
}

/// The value of status's `Cpus_allowed_list:` line (near the end: searched from there).
fn allowed_list(status: &[u8]) -> Option<&[u8]> {
    status
        .rsplit(|&c| c == b'\n')
        .find_map(|l| l.strip_prefix(b"Cpus_allowed_list:"))
        .map(<[u8]>::trim_ascii)
}

/// Whether a CPU list (`0-3,8`) holds any of `sorted`; `None` when it is not a CPU list.
fn intersects(list: &[u8], sorted: &[u32]) -> Option<bool> {
    let mut hit = false;
    for part in list.split(|&c| c == b',') {
        let (lo, hi): (u32, u32) = match part.iter().position(|&c| c == b'-') {
            Some(i) => (number(&part[..i])?, number(&part[i + 1..])?),
            None => {
                let n = number(part)?;
                (n, n)
            }
        };
        let i = sorted.partition_point(|&c| c < lo);
        hit |= sorted.get(i).is_some_and(|&c| c <= hi);
    }
    Some(hit)
}

/// The systemd unit of a process from its /proc/PID/cgroup: the path of the `name=systemd`
/// hierarchy (cgroup v1 and hybrid), else of the unified `0::` one (v2), and in it the last
/// component that is a service or a scope (`/system.slice/foo.service/payload` → `foo.service`).
pub fn unit_of_cgroup(text: &str) -> Option<String> {
    let (mut v1, mut v2) = (None, None);
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if controllers == "name=systemd" {
            v1 = Some(path);
        } else if id == "0" && controllers.is_empty() {
            v2 = Some(path);
        }
    }
    v1.or(v2)?
        .rsplit('/')
        .find(|c| c.ends_with(".service") || c.ends_with(".scope"))
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KSOFTIRQD: &[u8] = b"22 (ksoftirqd/1) S 2 0 0 0 -1 69238848 0 0 0 0 0 560 0 0 20 0 1 0 \
        23 0 0 18446744073709551615 0 0 0 0 0 0 0 2147483647 0 1 0 0 17 1 0 0 0 0 0 0 0 0 0 0 0 0 0\n";

    #[test]
    fn stat_fields_count_from_the_last_paren() {
        let f = parse_stat(KSOFTIRQD).unwrap();
        assert_eq!(&KSOFTIRQD[f.comm.0..f.comm.1], b"ksoftirqd/1");
        assert_eq!(
            (f.state, f.flags, f.num_threads, f.processor),
            (b'S', 0x0420_8040, 1, 1)
        );
        let odd = b"7 (a) b (c)) R 1 7 7 0 -1 4194304 0 0 0 0 0 0 0 0 20 0 3 0 9 0 0 1 0 0 0 0 0 \
            0 0 0 0 0 0 0 17 12 0 0 0 0 0 0 0 0 0 0 0 0 0\n";
        let f = parse_stat(odd).unwrap();
        assert_eq!(&odd[f.comm.0..f.comm.1], b"a) b (c)");
        assert_eq!((f.state, f.num_threads, f.processor), (b'R', 3, 12));
        assert_eq!(parse_stat(b"7 (short) S 1 2 3\n"), None);
        assert_eq!(parse_stat(b"no parens at all"), None);
    }

    #[test]
    fn cpu_lists_intersect_without_a_set() {
        let iso = [2, 3, 4, 5, 15];
        for (list, want) in [
            ("0-15", Some(true)),
            ("0-1", Some(false)),
            ("0-1,6-14", Some(false)),
            ("0,5", Some(true)),
            ("15", Some(true)),
            ("16-31", Some(false)),
            ("", None),
            ("0-", None),
            ("x", None),
        ] {
            assert_eq!(intersects(list.as_bytes(), &iso), want, "{list:?}");
        }
    }

    #[test]
    fn units_from_cgroup_v2_v1_and_hybrid() {
        let u = |s: &str| unit_of_cgroup(s);
        assert_eq!(
            u("0::/system.slice/chrony.service\n").as_deref(),
            Some("chrony.service")
        );
        assert_eq!(
            u("0::/system.slice/engine.service/payload\n").as_deref(),
            Some("engine.service")
        );
        assert_eq!(
            u("0::/user.slice/user-0.slice/session-3.scope\n").as_deref(),
            Some("session-3.scope")
        );
        assert_eq!(u("0::/init.scope\n").as_deref(), Some("init.scope"));
        assert_eq!(u("0::/\n"), None);
        assert_eq!(u("0::/user.slice\n"), None);
        let v1 = "12:cpuset:/\n4:memory:/system.slice/sshd.service\n\
                  1:name=systemd:/system.slice/ssh.service\n";
        assert_eq!(u(v1).as_deref(), Some("ssh.service"));
        // Hybrid: name=systemd wins over the unified line.
        let hybrid = "1:name=systemd:/system.slice/cron.service\n0::/\n";
        assert_eq!(u(hybrid).as_deref(), Some("cron.service"));
    }

    #[test]
    fn long_lists_are_cut_before_the_margin() {
        let names: Vec<String> = (0..40).map(|i| format!("kworker/5:{i}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let line = joined_to_fit("  CPU 5 (40): ".into(), &names, 100);
        assert!(line.chars().count() <= 100, "{line}");
        assert!(line.ends_with(", …"), "{line}");
        let line = joined_to_fit("  CPU 5 (2): ".into(), &names[..2], 100);
        assert_eq!(line, "  CPU 5 (2): kworker/5:0, kworker/5:1");
        assert_eq!(fit("kworker/5:0H-events_highpri", 16), "kworker/5:0H-ev…");
    }
}
