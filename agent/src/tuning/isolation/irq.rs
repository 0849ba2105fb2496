//! IRQ affinity: every IRQ, the default for new IRQs, irqbalance's banned CPUs.
//!
//! - `isolation.irq.<N>`: `/proc/irq/<N>/smp_affinity_list` within the housekeeping CPUs; apply
//!   writes the housekeeping list. Only that one file is read per IRQ (a large host has hundreds
//!   of IRQs). A managed IRQ (its affinity file is read-only: the kernel placed it and answers
//!   writes with EPERM) is `unsupported`, found with one stat before any apply; an IRQ whose
//!   write the kernel refused otherwise during this boot (EIO where the chip cannot move it;
//!   recorded by apply in [`super::REFUSED_FILE`]) is `unsupported` with that refusal.
//! - `isolation.irq.default_smp_affinity`: the mask new IRQs start with, in the kernel's hex
//!   format, as wide as the possible CPUs (nr_cpu_ids).
//! - `isolation.irqbalance.banned_cpus` and `.effective`: a running irqbalance must not spread
//!   IRQs onto the isolated CPUs (see [`verify_irqbalance`]).

use crate::change::{Target, Value};
use crate::host::HostRoot;
use crate::profile::Isolation;
use crate::profile::types::CpuList;
use crate::tuning::{fix_file, read_failure};
use crate::verify::{Class, Item, Status, format_time};

pub const IRQ_DIR: &str = "/proc/irq";
/// The reason for kernel settings on a read-only mount.
pub(super) const READ_ONLY_HERE: &str =
    "mounted read-only here (a container): the host's to set, not this system's";
pub const DEFAULT_AFFINITY: &str = "/proc/irq/default_smp_affinity";
pub const POSSIBLE_CPUS: &str = "/sys/devices/system/cpu/possible";

pub fn verify(host: &HostRoot, iso: &Isolation, out: &mut Vec<Item>) {
    // Without /proc/irq (no IRQ support shown) there is nothing else to check here either.
    if verify_irqs(host, iso, out) {
        verify_default(host, iso, out);
    }
    verify_irqbalance(host, iso, out);
}

/// The kernel's nr_cpu_ids (highest possible CPU + 1): the width, in bits, of every CPU mask it
/// prints (`default_smp_affinity`, workqueue `cpumask`).
pub(super) fn nr_cpu_ids(host: &HostRoot) -> Result<u32, String> {
    let text = host.read_value(POSSIBLE_CPUS).map_err(|e| e.to_string())?;
    let possible = CpuList::parse_kernel(&text).map_err(|e| format!("{POSSIBLE_CPUS}: {e}"))?;
    possible
        .iter()
        .last()
        .map(|c| c + 1)
        .ok_or_else(|| format!("{POSSIBLE_CPUS} lists no CPU"))
}

/// The CPUs of `cpus` outside `allowed`.
pub(super) fn outside(cpus: &CpuList, allowed: &CpuList) -> CpuList {
    cpus.iter().filter(|c| !allowed.contains(*c)).collect()
}

/// One item per IRQ, in number order; false when /proc/irq cannot be listed.
fn verify_irqs(host: &HostRoot, iso: &Isolation, out: &mut Vec<Item>) -> bool {
    let hk = &iso.housekeeping_cpus;
    let expected = hk.to_string();
    let names = match host.list(IRQ_DIR) {
        Ok(n) => n,
        Err(e) => {
            let item = Item::new(Class::Isolation, "isolation.irq", &expected).path(IRQ_DIR);
            out.push(read_failure(item, &e, "this kernel has no /proc/irq"));
            return false;
        }
    };
    if host.on_read_only_mount(IRQ_DIR) {
        out.push(
            Item::new(Class::Isolation, "isolation.irq", &expected)
                .path(IRQ_DIR)
                .status(Status::Unsupported)
                .reason(READ_ONLY_HERE),
        );
        return false;
    }
    let mut irqs: Vec<u32> = names
        .iter()
        .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        .filter_map(|n| n.parse().ok())
        .collect();
    irqs.sort_unstable();
    let refused = super::refusals(host);
    for n in irqs {
        let path = format!("{IRQ_DIR}/{n}/smp_affinity_list");
        let item = Item::new(Class::Isolation, format!("isolation.irq.{n}"), &expected).path(&path);
        let actual = match host.read_value(&path) {
            Ok(a) => a,
            Err(e) => {
                out.push(read_failure(item, &e, "this IRQ has no smp_affinity_list"));
                continue;
            }
        };
        let cpus = match CpuList::parse_kernel(&actual) {
            Ok(c) => c,
            Err(e) => {
                out.push(item.actual(actual).status(Status::Error).reason(e));
                continue;
            }
        };
        if cpus.is_subset(hk) {
            out.push(item.actual(actual));
            continue;
        }
        // The kernel creates a managed IRQ's affinity files read-only (0444; movable IRQs get
        // 0644): one stat, only for IRQs outside housekeeping, tells before any apply.
        if host.is_read_only(&path) {
            out.push(item.actual(actual).status(Status::Unsupported).reason(
                "a managed IRQ: the kernel fixed its affinity (smp_affinity_list is read-only)",
            ));
            continue;
        }
        if let Some(r) = refused.get(&path) {
            let target = Target::KernelFile { path: path.clone() };
            let why = super::expected_refusal(&target, r.errno)
                .unwrap_or("the kernel refuses to move this IRQ");
            out.push(
                item.actual(actual)
                    .status(Status::Unsupported)
                    .reason(format!("{why}: {} (at {})", r.error, format_time(r.at))),
            );
            continue;
        }
        let item = item.actual(&actual).status(Status::Drift).reason(format!(
            "may be delivered to CPU {} outside housekeeping",
            outside(&cpus, hk)
        ));
        out.push(fix_file(item, &path, &actual, &expected));
    }
    true
}

fn verify_default(host: &HostRoot, iso: &Isolation, out: &mut Vec<Item>) {
    check_mask(
        host,
        &iso.housekeeping_cpus,
        nr_cpu_ids(host),
        MaskFile {
            key: "isolation.irq.default_smp_affinity".into(),
            path: DEFAULT_AFFINITY,
            absent_means: "this kernel has no default_smp_affinity",
            outside_means: "new IRQs would start on",
        },
        out,
    );
}

/// A kernel CPU-mask file that must stay within housekeeping.
pub(super) struct MaskFile<'a> {
    pub key: String,
    pub path: &'a str,
    pub absent_means: &'a str,
    /// Completes "… CPU N outside housekeeping".
    pub outside_means: &'a str,
}

/// Checks a mask file (`default_smp_affinity`, workqueue `cpumask`): within housekeeping
/// passes; otherwise drift with a fix writing the housekeeping mask as wide as nr_cpu_ids.
pub(super) fn check_mask(
    host: &HostRoot,
    hk: &CpuList,
    nr: Result<u32, String>,
    f: MaskFile<'_>,
    out: &mut Vec<Item>,
) {
    let item = Item::new(Class::Isolation, f.key, hk.to_string()).path(f.path);
    let raw = match host.read_value(f.path) {
        Ok(r) => r,
        Err(e) => {
            out.push(read_failure(item, &e, f.absent_means));
            return;
        }
    };
    let cpus = match CpuList::parse_mask(&raw) {
        Ok(c) => c,
        Err(e) => {
            out.push(item.actual(raw).status(Status::Error).reason(e));
            return;
        }
    };
    let item = item.actual(cpus.to_string());
    if cpus.is_subset(hk) {
        out.push(item);
        return;
    }
    match nr {
        Ok(nr) => {
            let item = item.status(Status::Drift).reason(format!(
                "{} CPU {} outside housekeeping (mask {raw})",
                f.outside_means,
                outside(&cpus, hk)
            ));
            out.push(fix_file(item, f.path, &raw, &hk.to_mask(nr)));
        }
        Err(e) => out.push(
            item.status(Status::Error)
                .reason(format!("cannot tell the kernel's mask width: {e}")),
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// irqbalance

/// irqbalance's configuration files (Debian, RHEL): it reads them only at start.
pub const IRQBALANCE_CONFIGS: &[&str] = &["/etc/default/irqbalance", "/etc/sysconfig/irqbalance"];

/// The service to restart after `path` changed, so it reads the new file.
pub fn restart_after(path: &str) -> Option<&'static str> {
    IRQBALANCE_CONFIGS
        .contains(&path)
        .then_some("irqbalance.service")
}

/// irqbalance ≥ 1.8: a CPU list.
pub const BANNED_LIST: &str = "IRQBALANCE_BANNED_CPULIST";
/// Before 1.8: a hex mask. 1.9 still reads it, warns that it is deprecated, and lets it win
/// over the list when both are set.
pub const BANNED_MASK: &str = "IRQBALANCE_BANNED_CPUS";

const IRQBALANCE_COMM: &str = "irqbalance";

/// The PIDs of running irqbalance processes: every /proc/PID whose `comm` is `irqbalance`.
/// "Active" means running, found this way rather than asking systemd, so it works without a
/// bus, under any init system, and for an irqbalance started by hand.
pub fn irqbalance_pids(host: &HostRoot) -> Vec<u32> {
    let Ok(names) = host.list("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = names
        .iter()
        .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        .filter_map(|n| n.parse().ok())
        // A process that exits meanwhile is simply not found.
        .filter(|pid| {
            host.read_value(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c == IRQBALANCE_COMM)
        })
        .collect();
    pids.sort_unstable();
    pids
}

/// One `KEY=VALUE` assignment of an environment file, as systemd's `EnvironmentFile=` reads it
/// (and the shell, for the init scripts): blank lines and `#`/`;` comments skipped, whitespace
/// around key and value dropped, one pair of matching quotes removed from the value.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Assignment<'t> {
    /// Index of the line (0-based).
    line: usize,
    key: &'t str,
    value: &'t str,
}

fn assignments(text: &str) -> Vec<Assignment<'_>> {
    text.split('\n')
        .enumerate()
        .filter_map(|(line, l)| {
            let l = l.trim();
            if l.is_empty() || l.starts_with('#') || l.starts_with(';') {
                return None;
            }
            let (key, value) = l.split_once('=')?;
            let value = value.trim();
            let value = ['"', '\'']
                .iter()
                .find_map(|q| value.strip_prefix(*q)?.strip_suffix(*q))
                .unwrap_or(value);
            Some(Assignment {
                line,
                key: key.trim(),
                value,
            })
        })
        .collect()
}

/// What irqbalance bans, decided as its `setup_banned_cpus` does (1.9): a non-empty
/// `IRQBALANCE_BANNED_CPUS` mask wins, else a non-empty `IRQBALANCE_BANNED_CPULIST`; with
/// neither, irqbalance bans the CPUs the kernel runs isolated or nohz_full
/// (/sys/devices/system/cpu/isolated and nohz_full) by itself.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Banned {
    Mask(String, CpuList),
    List(String, CpuList),
    Unset,
}

impl Banned {
    /// From the last value of each variable (later assignments win).
    fn from_vars(mask: Option<&str>, list: Option<&str>) -> Result<Banned, String> {
        if let Some(m) = mask.filter(|m| !m.is_empty()) {
            let cpus = CpuList::parse_mask(m).map_err(|e| format!("{BANNED_MASK}: {e}"))?;
            return Ok(Banned::Mask(m.to_owned(), cpus));
        }
        if let Some(l) = list.filter(|l| !l.is_empty()) {
            // `-` bans nothing (what CRI-O writes to reset it).
            let cpus = if l == "-" {
                CpuList::default()
            } else {
                CpuList::parse_kernel(l).map_err(|e| format!("{BANNED_LIST}: {e}"))?
            };
            return Ok(Banned::List(l.to_owned(), cpus));
        }
        Ok(Banned::Unset)
    }

    fn of_file(text: &str) -> Result<Banned, String> {
        let a = assignments(text);
        let last = |k: &str| a.iter().rev().find(|x| x.key == k).map(|x| x.value);
        Banned::from_vars(last(BANNED_MASK), last(BANNED_LIST))
    }

    /// From /proc/PID/environ (NUL-separated `KEY=VALUE`).
    fn of_environ(bytes: &[u8]) -> Result<Banned, String> {
        let vars: Vec<(&[u8], &[u8])> = bytes
            .split(|b| *b == 0)
            .filter_map(|kv| {
                let eq = kv.iter().position(|b| *b == b'=')?;
                Some((&kv[..eq], &kv[eq + 1..]))
            })
            .collect();
        let get = |k: &str| {
            vars.iter()
                .rev()
                .find(|(key, _)| *key == k.as_bytes())
                .map(|(_, v)| std::str::from_utf8(v).map(str::trim).unwrap_or(""))
        };
        Banned::from_vars(get(BANNED_MASK), get(BANNED_LIST))
    }

    fn cpus(&self) -> Option<&CpuList> {
        match self {
            Banned::Mask(_, c) | Banned::List(_, c) => Some(c),
            Banned::Unset => None,
        }
    }

    fn describe(&self) -> String {
        match self {
            Banned::Mask(m, c) => format!("{c} ({BANNED_MASK}={m})"),
            Banned::List(_, c) if c.is_empty() => "none".to_owned(),
            Banned::List(_, c) => c.to_string(),
            Banned::Unset => "not set".to_owned(),
        }
    }
}

/// The CPUs the kernel runs isolated or nohz_full, which irqbalance bans when its
/// configuration bans nothing.
fn kernel_isolated(host: &HostRoot) -> CpuList {
    ["isolated", "nohz_full"]
        .iter()
        .filter_map(|f| host.read_value(format!("/sys/devices/system/cpu/{f}")).ok())
        .filter_map(|t| CpuList::parse_kernel(&t).ok())
        .flat_map(|l| l.iter().collect::<Vec<_>>())
        .collect()
}

/// A running irqbalance must leave the isolated CPUs alone: its configuration file sets the
/// banned CPUs (`isolation.irqbalance.banned_cpus`, fixed by rewriting that one line; apply
/// then restarts irqbalance, which reads the file only at start), and the running process was
/// started with them (`….effective`, from its environment).
///
/// The file must name the CPUs explicitly even though irqbalance bans the kernel's isolated
/// and nohz_full CPUs by itself when nothing is set: before the host boots with isolcpus (the
/// command line is `pending-reboot` until then) the kernel isolates nothing, and an explicit
/// list does not depend on the boot arguments.
///
/// When irqbalance is not running there is one `pass` item saying so, and nothing else: the
/// report shows it was looked for, and a stopped irqbalance moves no IRQ.
pub fn verify_irqbalance(host: &HostRoot, iso: &Isolation, out: &mut Vec<Item>) {
    let iso_cpus = &iso.isolated_cpus;
    let expected = iso_cpus.to_string();
    let key = "isolation.irqbalance.banned_cpus";
    let pids = irqbalance_pids(host);
    if pids.is_empty() {
        out.push(
            Item::new(Class::Isolation, key, &expected)
                .actual("irqbalance not running")
                .reason("no process named irqbalance: nothing spreads IRQs onto other CPUs"),
        );
        return;
    }
    out.push(banned_in_config(host, iso_cpus));
    for pid in pids {
        let path = format!("/proc/{pid}/environ");
        let item = Item::new(Class::Isolation, format!("{key}.effective"), &expected).path(&path);
        let env = match host.read_bytes(&path) {
            Ok(e) => e,
            Err(e) => {
                out.push(read_failure(item, &e, "irqbalance exited meanwhile"));
                continue;
            }
        };
        let banned = match Banned::of_environ(&env) {
            Ok(b) => b,
            Err(e) => {
                out.push(item.status(Status::Error).reason(e));
                continue;
            }
        };
        let cpus = match banned.cpus() {
            Some(c) => c.clone(),
            None => kernel_isolated(host),
        };
        let actual = match &banned {
            Banned::Unset if cpus.is_empty() => "none (not set; the kernel isolates none)".into(),
            Banned::Unset => format!("{cpus} (not set: the kernel's isolated and nohz_full CPUs)"),
            b => b.describe(),
        };
        let item = item.actual(actual);
        out.push(if iso_cpus.is_subset(&cpus) {
            item
        } else {
            item.status(Status::Drift).reason(format!(
                "irqbalance (pid {pid}) may put IRQs on CPU {}: it reads its configuration \
                 only at start; restart it (systemctl restart irqbalance) once the file is right \
                 (apply does when it changes the file)",
                outside(iso_cpus, &cpus)
            ))
        });
    }
}

/// The configuration file irqbalance reads: the first of [`IRQBALANCE_CONFIGS`] that exists;
/// when none does, the first whose directory exists (that is the distribution's), else the
/// first.
fn config_path(host: &HostRoot) -> &'static str {
    let dir = |p: &str| p.rsplit_once('/').map_or("/", |(d, _)| d).to_owned();
    IRQBALANCE_CONFIGS
        .iter()
        .find(|p| host.exists(p))
        .or_else(|| IRQBALANCE_CONFIGS.iter().find(|p| host.exists(dir(p))))
        .copied()
        .unwrap_or(IRQBALANCE_CONFIGS[0])
}

fn banned_in_config(host: &HostRoot, iso_cpus: &CpuList) -> Item {
    let path = config_path(host);
    let target = Target::ConfigFile {
        path: path.to_owned(),
    };
    let item = Item::new(
        Class::Isolation,
        "isolation.irqbalance.banned_cpus",
        iso_cpus.to_string(),
    )
    .path(path);
    let current = match crate::change::observe(host, &target) {
        Ok(c) => c,
        Err(e) => return item.status(Status::Error).reason(e.to_string()),
    };
    let text = match &current {
        Value::Text { value } => value.as_str(),
        _ => "",
    };
    let banned = match Banned::of_file(text) {
        Ok(b) => b,
        Err(e) => return item.status(Status::Error).reason(format!("{path}: {e}")),
    };
    let item = item.actual(match current {
        Value::Absent => "no file".to_owned(),
        _ => banned.describe(),
    });
    let have = banned.cpus().cloned().unwrap_or_default();
    if iso_cpus.is_subset(&have) {
        return item;
    }
    // Keep what is banned already (an admin may ban more than the isolated CPUs).
    let want: CpuList = have.iter().chain(iso_cpus.iter()).collect();
    let content = with_banned_list(text, &want);
    item.status(Status::Drift)
        .reason(match banned {
            Banned::Unset => format!(
                "neither {BANNED_LIST} nor {BANNED_MASK} is set: irqbalance then bans only the \
                 CPUs the kernel isolates (none before a reboot with isolcpus/nohz_full)"
            ),
            _ => format!(
                "irqbalance may put IRQs on CPU {}",
                outside(iso_cpus, &have)
            ),
        })
        .fix(target, current, Value::text(content))
}

/// `text` with `IRQBALANCE_BANNED_CPULIST=<cpus>`: the last assignment of the list replaced in
/// place, else the last mask assignment (the deprecated form) replaced by the list, else the
/// line appended. Every other byte stays, comments included; a non-empty mask assignment left
/// elsewhere is commented out, since irqbalance would let it win over the list.
pub fn with_banned_list(text: &str, cpus: &CpuList) -> String {
    let new_line = format!("{BANNED_LIST}={cpus}");
    let a = assignments(text);
    let last = |k: &str| a.iter().rev().find(|x| x.key == k).map(|x| x.line);
    let replace = last(BANNED_LIST).or_else(|| last(BANNED_MASK));
    let masks: Vec<usize> = a
        .iter()
        .filter(|x| x.key == BANNED_MASK && !x.value.is_empty())
        .map(|x| x.line)
        .collect();
    let mut out = String::with_capacity(text.len() + new_line.len() + 1);
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let ending = if line.ends_with('\n') { "\n" } else { "" };
        if Some(i) == replace {
            out.push_str(&new_line);
            out.push_str(ending);
        } else if masks.contains(&i) {
            out.push('#');
            out.push_str(line);
        } else {
            out.push_str(line);
        }
    }
    if replace.is_none() {
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(&new_line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(s: &str) -> CpuList {
        s.parse().unwrap()
    }

    #[test]
    fn environment_file_assignments() {
        let text = "# comment\n ; other\nA=1\n  B = \"two words\" \nC='x'\nnot an assignment\n";
        let got: Vec<(usize, &str, &str)> = assignments(text)
            .iter()
            .map(|a| (a.line, a.key, a.value))
            .collect();
        assert_eq!(got, [(2, "A", "1"), (3, "B", "two words"), (4, "C", "x")]);
    }

    #[test]
    fn banned_as_irqbalance_decides() {
        assert_eq!(Banned::of_file("").unwrap(), Banned::Unset);
        assert_eq!(
            Banned::of_file("IRQBALANCE_BANNED_CPULIST=\n").unwrap(),
            Banned::Unset
        );
        assert_eq!(
            Banned::of_file("IRQBALANCE_BANNED_CPULIST=2-3\nIRQBALANCE_BANNED_CPULIST=2-15\n")
                .unwrap(),
            Banned::List("2-15".into(), l("2-15"))
        );
        // The mask wins over the list when both are set.
        assert_eq!(
            Banned::of_file("IRQBALANCE_BANNED_CPULIST=2-15\nIRQBALANCE_BANNED_CPUS=c\n").unwrap(),
            Banned::Mask("c".into(), l("2-3"))
        );
        assert_eq!(
            Banned::of_file("IRQBALANCE_BANNED_CPULIST=-\n").unwrap(),
            Banned::List("-".into(), CpuList::default())
        );
        assert!(Banned::of_file("IRQBALANCE_BANNED_CPULIST=x\n").is_err());
        assert_eq!(
            Banned::of_environ(
                b"PATH=/usr/bin\0IRQBALANCE_BANNED_CPULIST=2-15\0IRQBALANCE_ARGS=\0"
            )
            .unwrap(),
            Banned::List("2-15".into(), l("2-15"))
        );
        assert_eq!(Banned::of_environ(b"").unwrap(), Banned::Unset);
    }

    #[test]
    fn banned_list_line_replaced_or_appended() {
        let cpus = l("2-15");
        assert_eq!(
            with_banned_list("#IRQBALANCE_BANNED_CPULIST=\nX=1\n", &cpus),
            "#IRQBALANCE_BANNED_CPULIST=\nX=1\nIRQBALANCE_BANNED_CPULIST=2-15\n"
        );
        assert_eq!(
            with_banned_list("X=1", &cpus),
            "X=1\nIRQBALANCE_BANNED_CPULIST=2-15\n"
        );
        assert_eq!(
            with_banned_list("", &cpus),
            "IRQBALANCE_BANNED_CPULIST=2-15\n"
        );
        assert_eq!(
            with_banned_list("# c\nIRQBALANCE_BANNED_CPULIST=\"2-3\"\r\nY=2\n", &cpus),
            "# c\nIRQBALANCE_BANNED_CPULIST=2-15\nY=2\n"
        );
        // The deprecated mask becomes the list; a second, earlier mask is commented out.
        assert_eq!(
            with_banned_list(
                "IRQBALANCE_BANNED_CPUS=f0\nA=1\nIRQBALANCE_BANNED_CPUS=c\n",
                &cpus
            ),
            "#IRQBALANCE_BANNED_CPUS=f0\nA=1\nIRQBALANCE_BANNED_CPULIST=2-15\n"
        );
        // With both, the list line is replaced and the mask, which would win, commented out.
        assert_eq!(
            with_banned_list(
                "IRQBALANCE_BANNED_CPULIST=2\nIRQBALANCE_BANNED_CPUS=4\n",
                &cpus
            ),
            "IRQBALANCE_BANNED_CPULIST=2-15\n#IRQBALANCE_BANNED_CPUS=4\n"
        );
    }
}
