//! The kernel command line of the isolation layout and the boot loader change that sets it.
//!
//! **Expected arguments** ([`expected_args`]): `isolcpus=managed_irq,domain,<isolated>`,
//! `nohz_full=<isolated>`, `rcu_nocbs=<isolated>`, `irqaffinity=<housekeeping>` (compact CPU
//! ranges), then the profile's `kernel_args` in their order. A `kernel_args` entry naming one of
//! the derived parameters replaces it in place (`isolcpus=nohz,domain,managed_irq,2-15` adds the
//! `nohz` flag); a later entry with the name of an earlier one replaces it too.
//!
//! **Reading /proc/cmdline** ([`parse_cmdline`]) follows the kernel (lib/cmdline.c `next_arg`,
//! kernel/params.c `parse_args`): arguments are separated by the kernel's `isspace`, a value may
//! be quoted (`param="a b"`, or the whole `"param=a b"`), and a bare `--` ends the kernel's
//! arguments (what follows is init's). Names compare with `-` and `_` as the same character
//! (`nohz-full` is `nohz_full`), as the kernel's `parameq` does.
//!
//! **Comparison**: the LAST occurrence of a name is compared. That is what the kernel does for
//! most parameters (each handler overwrites), but a simplification for `isolcpus` and
//! `nohz_full`: there the first CPU mask wins and a later, different one is rejected with a
//! warning. The effective items (`cmdline.effective.*`) catch that case. The CPU-list parameters
//! of the layout compare as CPU sets (`nohz_full=2,3,4-15` is `nohz_full=2-15`), `isolcpus` as
//! its set of flags (none means `domain`) plus its CPU set; other arguments compare as text.
//!
//! **Items** (class `cmdline`): `cmdline.<name>` per expected argument (the name with `_` for
//! `-`), `pass` when /proc/cmdline has it, else `pending-reboot` with the exact change (`add X`,
//! `replace Y with X`). `cmdline.effective.isolated` (/sys/devices/system/cpu/isolated) and
//! `cmdline.effective.nohz_full` (/sys/devices/system/cpu/nohz_full; absent: the kernel is built
//! without NO_HZ_FULL, `unsupported`; `(null)` or empty: none) are the kernel's view: when it
//! differs although /proc/cmdline has the argument, the kernel ignored it, and that is `drift`
//! (the running state is wrong, and neither apply nor a reboot will fix it); when /proc/cmdline
//! lacks the argument it is `pending-reboot`.
//!
//! **The boot loader.** A host is *Debian-style* when `/usr/sbin/update-grub` exists or
//! `/etc/default/grub.d` is a directory: Debian's grub-mkconfig sources
//! `/etc/default/grub.d/*.cfg` after /etc/default/grub, so the agent's drop-in [`DROP_IN`]
//! (`zz` sorts last) appends the expected arguments to `GRUB_CMDLINE_LINUX`. Only there does a
//! `cmdline.*` item carry a fix (that drop-in), which is planned only by
//! `agentctl isolation bootloader --write` (apply with class `cmdline`); apply and rollback then
//! run update-grub. Other hosts get the grubby command in the reason (RHEL-family: `grubby`
//! edits the boot entries itself; when /usr/sbin/grubby is not there either, the reason says
//! the boot loader is unknown). No fix either when the drop-in already has the content (the
//! boot loader is configured: reboot), or when a profile argument holds a character outside
//! [`SHELL_SAFE`] (the drop-in is sourced by sh and ends up in grub.cfg, a script too).
//! Nothing here ever reboots.

use std::collections::BTreeSet;
use std::fmt;
use std::io;

use serde::Serialize;

use crate::change::{Target, Value};
use crate::host::HostRoot;
use crate::profile::Isolation;
use crate::profile::types::CpuList;
use crate::system::UPDATE_GRUB;
use crate::verify::{Class, Item, Status};

pub const PROC_CMDLINE: &str = "/proc/cmdline";
/// The CPUs in the isolcpus `domain` set (empty: none).
pub const ISOLATED_FILE: &str = "/sys/devices/system/cpu/isolated";
/// The nohz_full CPUs; only with CONFIG_NO_HZ_FULL; `(null)` when none.
pub const NOHZ_FULL_FILE: &str = "/sys/devices/system/cpu/nohz_full";
/// Debian's GRUB defaults and their drop-in directory.
pub const GRUB_DEFAULT: &str = "/etc/default/grub";
pub const GRUB_D: &str = "/etc/default/grub.d";
/// The agent's GRUB drop-in (Debian-style hosts).
pub const DROP_IN: &str = "/etc/default/grub.d/zz-node-agent-isolation.cfg";
/// RHEL's boot entry editor.
pub const GRUBBY: &str = "/usr/sbin/grubby";
/// Characters a kernel argument may hold to be written into the drop-in or a printed command:
/// besides ASCII letters and digits, these. Anything else (`$`, `` ` ``, `\`, `;`, quotes, ...)
/// means something to sh or to GRUB's script.
pub const SHELL_SAFE: &str = "=,.-_:/+@%~";
/// Bumped on any incompatible change of [`Bootloader`]'s JSON.
pub const BOOTLOADER_SCHEMA_VERSION: u32 = 1;

/// One kernel argument: `name` or `name=value`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KernelArg {
    pub name: String,
    pub value: Option<String>,
}

impl KernelArg {
    pub fn new(name: impl Into<String>, value: Option<String>) -> KernelArg {
        KernelArg {
            name: name.into(),
            value,
        }
    }

    /// One argument as the kernel would read it (a profile's `kernel_args` entry).
    pub fn parse(token: &str) -> KernelArg {
        let bytes = token.as_bytes();
        let start = skip_spaces(bytes, 0);
        if start >= bytes.len() {
            return KernelArg::new("", None);
        }
        next_arg(bytes, start).0
    }

    /// The name as the kernel compares it: `-` and `_` are the same character.
    pub fn key(&self) -> String {
        self.name.replace('-', "_")
    }

    pub fn same_name(&self, other: &KernelArg) -> bool {
        self.key() == other.key()
    }

    /// Whether this argument (read from /proc/cmdline) sets what `want` asks for.
    pub fn satisfies(&self, want: &KernelArg) -> bool {
        if !self.same_name(want) {
            return false;
        }
        if self.value == want.value {
            return true;
        }
        let (Some(have), Some(w)) = (&self.value, &want.value) else {
            return false;
        };
        match want.key().as_str() {
            "nohz_full" | "rcu_nocbs" | "irqaffinity" => {
                let w: Option<CpuList> = w.parse().ok();
                w.is_some() && w == have.parse().ok()
            }
            "isolcpus" => {
                let w = isolcpus_value(w);
                w.is_some() && w == isolcpus_value(have)
            }
            _ => false,
        }
    }
}

/// `name`, or `name=value` with the value quoted when it holds a space (as the kernel reads it).
impl fmt::Display for KernelArg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            None => f.write_str(&self.name),
            Some(v) if v.bytes().any(is_space) => write!(f, "{}=\"{v}\"", self.name),
            Some(v) => write!(f, "{}={v}", self.name),
        }
    }
}

/// isolcpus' value as the kernel reads it: leading flags (`nohz`, `domain`, `managed_irq`; none
/// means `domain`), then the CPU list. Unknown flags are kept, so they never compare equal to
/// the expected value (the kernel skips them with a warning).
fn isolcpus_value(v: &str) -> Option<(BTreeSet<String>, CpuList)> {
    let mut flags = BTreeSet::new();
    let mut rest = v;
    while rest.starts_with(|c: char| c.is_ascii_alphabetic()) {
        let (flag, tail) = rest.split_once(',')?;
        flags.insert(flag.to_owned());
        rest = tail;
    }
    if flags.is_empty() {
        flags.insert("domain".to_owned());
    }
    Some((flags, rest.parse().ok()?))
}

/// The kernel's `isspace` (lib/ctype.c: 9-13, space, and 0xa0).
fn is_space(b: u8) -> bool {
    matches!(b, b'\t' | b'\n' | 0x0b | 0x0c | b'\r' | b' ' | 0xa0)
}

fn skip_spaces(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && is_space(b[i]) {
        i += 1;
    }
    i
}

/// lib/cmdline.c `next_arg`, on a byte slice: the argument at `start` (not a space) and where
/// the next one starts.
fn next_arg(b: &[u8], start: usize) -> (KernelArg, usize) {
    let mut s = start;
    let mut in_quote = false;
    let mut quoted = false;
    if b[s] == b'"' {
        s += 1;
        in_quote = true;
        quoted = true;
    }
    let mut i = 0;
    let mut equals = 0;
    while s + i < b.len() {
        let c = b[s + i];
        if is_space(c) && !in_quote {
            break;
        }
        // As in the kernel, `=` as the first character does not start a value.
        if equals == 0 && c == b'=' {
            equals = i;
        }
        if c == b'"' {
            in_quote = !in_quote;
        }
        i += 1;
    }
    let end = s + i;
    // The kernel cuts a closing quote of a quoted argument (`"a=b c"`).
    let last_is_quote = i > 0 && b[end - 1] == b'"';
    let text = |from: usize, to: usize| {
        if from >= to {
            String::new()
        } else {
            String::from_utf8_lossy(&b[from..to]).into_owned()
        }
    };
    let arg = if equals == 0 {
        let name_end = if quoted && last_is_quote {
            end - 1
        } else {
            end
        };
        KernelArg::new(text(s, name_end), None)
    } else {
        let mut v_start = s + equals + 1;
        let mut v_end = end;
        // "Don't include quotes in value."
        if v_start < end && b[v_start] == b'"' {
            v_start += 1;
            if last_is_quote {
                v_end = end - 1;
            }
        }
        if quoted && last_is_quote {
            v_end = end - 1;
        }
        KernelArg::new(text(s, s + equals), Some(text(v_start, v_end)))
    };
    let next = if end < b.len() { end + 1 } else { end };
    (arg, skip_spaces(b, next))
}

/// The kernel's arguments of a command line: everything before a bare `--` (init's arguments
/// follow it), as the kernel splits them.
pub fn parse_cmdline(cmdline: &str) -> Vec<KernelArg> {
    // /proc/cmdline adds a newline that is not part of the command line.
    let b = cmdline.strip_suffix('\n').unwrap_or(cmdline).as_bytes();
    let mut out = Vec::new();
    let mut i = skip_spaces(b, 0);
    while i < b.len() {
        let (arg, next) = next_arg(b, i);
        if arg.value.is_none() && arg.name == "--" {
            break;
        }
        out.push(arg);
        i = next;
    }
    out
}

/// The arguments the layout needs, in the order they are written (see the module comment for
/// how `kernel_args` combine with the derived ones).
pub fn expected_args(iso: &Isolation) -> Vec<KernelArg> {
    let isolated = iso.isolated_cpus.to_string();
    let housekeeping = iso.housekeeping_cpus.to_string();
    let mut out = vec![
        KernelArg::new("isolcpus", Some(format!("managed_irq,domain,{isolated}"))),
        KernelArg::new("nohz_full", Some(isolated.clone())),
        KernelArg::new("rcu_nocbs", Some(isolated)),
        KernelArg::new("irqaffinity", Some(housekeeping)),
    ];
    for token in &iso.kernel_args {
        let arg = KernelArg::parse(token);
        match out.iter_mut().find(|a| a.same_name(&arg)) {
            Some(slot) => *slot = arg,
            None => out.push(arg),
        }
    }
    out
}

/// The arguments as one line, space-separated.
pub fn args_line(args: &[KernelArg]) -> String {
    args.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" ")
}

fn shell_safe(arg: &KernelArg) -> bool {
    arg.to_string()
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || SHELL_SAFE.as_bytes().contains(&b))
}

/// The drop-in's content for the arguments that may be written (see [`SHELL_SAFE`]).
pub fn drop_in_content(iso: &Isolation) -> String {
    let args: Vec<KernelArg> = expected_args(iso).into_iter().filter(shell_safe).collect();
    format!(
        "# Written by node-agent (agentctl isolation bootloader --write); do not edit.\n\
         # Removed by `agentctl tune rollback`, which runs update-grub again.\n\
         # CPU isolation: housekeeping {}, isolated {}. Sourced by update-grub after\n\
         # /etc/default/grub; takes effect at the next boot.\n\
         GRUB_CMDLINE_LINUX=\"$GRUB_CMDLINE_LINUX {}\"\n",
        iso.housekeeping_cpus,
        iso.isolated_cpus,
        args_line(&args)
    )
}

/// How this host's boot loader gets its command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BootLoaderKind {
    /// update-grub or /etc/default/grub.d: the agent's drop-in, then update-grub.
    DebianGrub,
    /// /usr/sbin/grubby (RHEL family): grubby edits the boot entries.
    Grubby,
    /// Neither: the operator knows where the command line is set.
    Unknown,
}

impl BootLoaderKind {
    /// Debian-style when update-grub exists or /etc/default/grub.d is a directory; else grubby
    /// when it exists.
    pub fn of(host: &HostRoot) -> BootLoaderKind {
        let grub_d = host.path(GRUB_D).is_ok_and(|p| p.is_dir());
        if grub_d || host.exists(UPDATE_GRUB) {
            BootLoaderKind::DebianGrub
        } else if host.exists(GRUBBY) {
            BootLoaderKind::Grubby
        } else {
            BootLoaderKind::Unknown
        }
    }
}

/// The state of one expected argument on the running kernel's command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// The command line has it.
    Ok,
    /// The command line lacks the name.
    Add,
    /// The command line has the name with another value (its last occurrence).
    Replace,
}

/// One expected argument against the running command line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ArgState {
    /// The name with `_` for `-` (the item key is `cmdline.<name>`).
    pub name: String,
    pub expected: String,
    /// The last occurrence on /proc/cmdline, as the kernel read it.
    pub actual: Option<String>,
    pub action: Action,
    /// How often /proc/cmdline has the name (either spelling).
    pub occurrences: usize,
    /// Where a conflicting value is set in the GRUB defaults, found by reading their
    /// `GRUB_CMDLINE_LINUX*` lines: a hint, not a parse of sh.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub set_in: Vec<SetIn>,
    /// Not written by the agent: holds a character outside [`SHELL_SAFE`].
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub refused: bool,
}

impl ArgState {
    /// `add X` / `replace Y with X`, or `None` when the argument is there.
    pub fn change(&self) -> Option<String> {
        match (self.action, &self.actual) {
            (Action::Ok, _) => None,
            (Action::Replace, Some(have)) => Some(format!("replace {have} with {}", self.expected)),
            _ => Some(format!("add {}", self.expected)),
        }
    }

    /// What to remove from where: `isolcpus=1 from /etc/default/grub:10`, or the running value
    /// from the boot loader configuration when it was not found in the GRUB defaults.
    fn removal(&self) -> Option<String> {
        let have = self
            .actual
            .as_ref()
            .filter(|_| self.action == Action::Replace)?;
        Some(if self.set_in.is_empty() {
            format!("{have} from the boot loader configuration")
        } else {
            self.set_in
                .iter()
                .map(|s| format!("{} from {}", s.arg, s.at))
                .collect::<Vec<_>>()
                .join(", ")
        })
    }
}

/// A conflicting argument in a GRUB defaults file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SetIn {
    /// `FILE:LINE`.
    pub at: String,
    /// The argument as written there.
    pub arg: String,
}

/// Every expected argument against `running` (the parsed command line).
fn arg_states(host: &HostRoot, expected: &[KernelArg], running: &[KernelArg]) -> Vec<ArgState> {
    let mut out = Vec::new();
    for want in expected {
        let same: Vec<&KernelArg> = running.iter().filter(|a| a.same_name(want)).collect();
        let last = same.last().copied();
        let action = match last {
            Some(have) if have.satisfies(want) => Action::Ok,
            Some(_) => Action::Replace,
            None => Action::Add,
        };
        out.push(ArgState {
            name: want.key(),
            expected: want.to_string(),
            actual: last.map(ToString::to_string),
            action,
            occurrences: same.len(),
            set_in: if action == Action::Replace {
                set_in(host, want)
            } else {
                Vec::new()
            },
            refused: !shell_safe(want),
        });
    }
    out
}

/// Every `GRUB_CMDLINE_LINUX` / `GRUB_CMDLINE_LINUX_DEFAULT` assignment in the GRUB defaults
/// (not the agent's drop-in) that sets `want`'s name to another value.
fn set_in(host: &HostRoot, want: &KernelArg) -> Vec<SetIn> {
    let mut files = vec![GRUB_DEFAULT.to_owned()];
    if let Ok(names) = host.list(GRUB_D) {
        files.extend(
            names
                .into_iter()
                .filter(|n| n.ends_with(".cfg"))
                .map(|n| format!("{GRUB_D}/{n}"))
                .filter(|p| p != DROP_IN),
        );
    }
    let mut out = Vec::new();
    for file in files {
        let Ok(text) = host.read(&file) else {
            continue;
        };
        for (n, line) in text.lines().enumerate() {
            let line = line.trim_start();
            let line = line.strip_prefix("export ").unwrap_or(line).trim_start();
            let Some(value) = ["GRUB_CMDLINE_LINUX=", "GRUB_CMDLINE_LINUX_DEFAULT="]
                .iter()
                .find_map(|v| line.strip_prefix(v))
            else {
                continue;
            };
            let words = value.replace(['"', '\''], " ");
            for a in parse_cmdline(&words)
                .iter()
                .filter(|a| a.same_name(want) && !a.satisfies(want))
            {
                out.push(SetIn {
                    at: format!("{file}:{}", n + 1),
                    arg: a.to_string(),
                });
            }
        }
    }
    out
}

/// The grubby command that sets every expected argument (removing conflicting spellings first).
fn grubby_command(args: &[&KernelArg], remove: &[String]) -> String {
    let mut cmd = "grubby --update-kernel=ALL".to_owned();
    if !remove.is_empty() {
        cmd.push_str(&format!(" --remove-args=\"{}\"", remove.join(" ")));
    }
    let line: Vec<String> = args.iter().map(ToString::to_string).collect();
    cmd.push_str(&format!(" --args=\"{}\"", line.join(" ")));
    cmd
}

/// The names as spelled on /proc/cmdline of the arguments whose value conflicts with `want`.
fn conflicting_spellings(running: &[KernelArg], want: &KernelArg, into: &mut Vec<String>) {
    for a in running
        .iter()
        .filter(|a| a.same_name(want) && !a.satisfies(want))
    {
        if !into.contains(&a.name) {
            into.push(a.name.clone());
        }
    }
}

/// What the boot loader side looks like now.
struct BootState {
    kind: BootLoaderKind,
    content: String,
    /// The drop-in as it is (Debian-style hosts), or why it could not be read.
    drop_in: Result<Value, String>,
}

impl BootState {
    fn observe(host: &HostRoot, iso: &Isolation) -> BootState {
        let target = drop_in_target();
        BootState {
            kind: BootLoaderKind::of(host),
            content: drop_in_content(iso),
            drop_in: crate::change::observe(host, &target).map_err(|e| e.to_string()),
        }
    }

    fn configured(&self) -> bool {
        matches!(&self.drop_in, Ok(v) if *v == Value::text(self.content.clone()))
    }
}

fn drop_in_target() -> Target {
    Target::ConfigFile {
        path: DROP_IN.to_owned(),
    }
}

/// The /proc/cmdline text, or why it could not be read.
fn read_cmdline(host: &HostRoot) -> Result<String, String> {
    host.read(PROC_CMDLINE).map_err(|e| e.to_string())
}

/// One item per expected argument, then the kernel's effective view (see the module comment).
pub fn verify(host: &HostRoot, iso: &Isolation, out: &mut Vec<Item>) {
    let expected = expected_args(iso);
    let running = read_cmdline(host).map(|c| parse_cmdline(&c));
    let states = match &running {
        Ok(args) => arg_states(host, &expected, args),
        Err(e) => {
            out.push(
                Item::new(Class::Cmdline, "cmdline", args_line(&expected))
                    .path(PROC_CMDLINE)
                    .status(Status::Error)
                    .reason(e.clone()),
            );
            Vec::new()
        }
    };
    let boot = BootState::observe(host, iso);
    for (want, st) in expected.iter().zip(&states) {
        let item = Item::new(Class::Cmdline, format!("cmdline.{}", st.name), &st.expected)
            .path(PROC_CMDLINE);
        let item = match &st.actual {
            Some(a) => item.actual(a),
            None => item,
        };
        let Some(change) = st.change() else {
            out.push(item);
            continue;
        };
        let item = item.status(Status::PendingReboot);
        let remove = st
            .removal()
            .map_or_else(String::new, |r| format!(" and remove {r}"));
        if st.refused {
            out.push(item.reason(format!(
                "{change}: node-agent does not write arguments with characters other than \
                 letters, digits and {SHELL_SAFE} (sh and GRUB would interpret them); set it by \
                 hand{remove}, then reboot"
            )));
            continue;
        }
        out.push(match boot.kind {
            BootLoaderKind::DebianGrub => match &boot.drop_in {
                Ok(_) if boot.configured() => item.reason(format!(
                    "{change}: the boot loader is configured ({DROP_IN}){remove}; reboot to apply"
                )),
                Ok(current) => item
                    .reason(format!(
                        "{change}: run `agentctl isolation bootloader --write` (writes \
                         {DROP_IN}, runs update-grub){remove}, then reboot"
                    ))
                    .fix(
                        drop_in_target(),
                        current.clone(),
                        Value::text(boot.content.clone()),
                    ),
                Err(e) => item.reason(format!("{change}: {e}")),
            },
            BootLoaderKind::Grubby | BootLoaderKind::Unknown => {
                let mut spellings = Vec::new();
                if let Ok(running) = &running {
                    conflicting_spellings(running, want, &mut spellings);
                }
                let cmd = grubby_command(&[want], &spellings);
                if boot.kind == BootLoaderKind::Grubby {
                    item.reason(format!("{change}: run `{cmd}`, then reboot"))
                } else {
                    item.reason(format!(
                        "{change}: this host has neither {UPDATE_GRUB}, {GRUB_D} nor {GRUBBY}; \
                         on RHEL run `{cmd}`, otherwise set it where this host's boot loader \
                         takes the kernel command line; then reboot"
                    ))
                }
            }
        });
    }
    let on_cmdline = |name: &str| -> Option<bool> {
        running.as_ref().ok()?;
        Some(
            states
                .iter()
                .any(|s| s.name == name && s.action == Action::Ok),
        )
    };
    let occurrences = |name: &str| -> String {
        let Ok(args) = &running else {
            return String::new();
        };
        let same: Vec<String> = args
            .iter()
            .filter(|a| a.key() == name)
            .map(ToString::to_string)
            .collect();
        if same.len() < 2 {
            return String::new();
        }
        format!(
            "; /proc/cmdline has it {} times ({}): the kernel keeps the first CPU list and \
             rejects a different later one, so remove the others from the boot loader \
             configuration",
            same.len(),
            same.join(" ")
        )
    };
    for (key, path, param) in [
        ("cmdline.effective.isolated", ISOLATED_FILE, "isolcpus"),
        ("cmdline.effective.nohz_full", NOHZ_FULL_FILE, "nohz_full"),
    ] {
        let want = &iso.isolated_cpus;
        let arg = expected
            .iter()
            .find(|a| a.key() == param)
            .map_or_else(String::new, ToString::to_string);
        let item = Item::new(Class::Cmdline, key, want.to_string()).path(path);
        let raw = match host.read_value(path) {
            Ok(raw) => raw,
            Err(e) if e.is_not_found() => {
                out.push(
                    item.status(Status::Unsupported)
                        .reason(if param == "nohz_full" {
                            "the kernel is built without NO_HZ_FULL: nohz_full= has no effect"
                                .to_owned()
                        } else {
                            format!("this kernel does not report its isolated CPUs ({path})")
                        }),
                );
                continue;
            }
            Err(e) => {
                out.push(item.status(Status::Error).reason(e.to_string()));
                continue;
            }
        };
        let have = if raw == "(null)" {
            Ok(CpuList::default())
        } else {
            CpuList::parse_kernel(&raw)
        };
        let have = match have {
            Ok(h) => h,
            Err(e) => {
                out.push(item.actual(raw).status(Status::Error).reason(e));
                continue;
            }
        };
        let shown = if have.is_empty() {
            "none".to_owned()
        } else {
            have.to_string()
        };
        let item = item.actual(&shown);
        if have == *want {
            out.push(item);
            continue;
        }
        out.push(match on_cmdline(param) {
            Some(true) => item.status(Status::Drift).reason(format!(
                "the kernel ignored {arg}: /proc/cmdline has it, yet the kernel's CPUs are \
                 {shown} (see `dmesg | grep -i -e isol -e nohz -e housekeeping`){}",
                occurrences(param)
            )),
            Some(false) => item.status(Status::PendingReboot).reason(format!(
                "the running kernel was booted without {arg} (cmdline.{param}): reboot after \
                 the boot loader sets it"
            )),
            None => item
                .status(Status::Error)
                .reason("/proc/cmdline could not be read: cannot tell whether a reboot fixes it"),
        });
    }
}

/// `agentctl isolation bootloader`: the change for the boot loader, for people and for JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Bootloader {
    pub schema_version: u32,
    pub housekeeping_cpus: String,
    pub isolated_cpus: String,
    /// Every expected argument, as one line.
    pub expected: String,
    /// The running kernel's arguments (before `--`), as the kernel read them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub running: Option<String>,
    /// Why /proc/cmdline could not be read (every argument is then listed as `add`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub running_error: Option<String>,
    /// Every expected argument against the running command line.
    pub args: Vec<ArgState>,
    /// The running kernel lacks an argument (or has it with another value).
    pub reboot_needed: bool,
    /// What this host looks like.
    pub boot_loader: BootLoaderKind,
    pub debian: DebianGrub,
    pub rhel: RhelGrubby,
}

/// The Debian (GRUB) way: the agent's drop-in, then update-grub.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DebianGrub {
    pub drop_in: String,
    pub content: String,
    /// `absent`, `current` (holds exactly `content`), `other`, or the read error.
    pub drop_in_state: String,
    /// The drop-in must be written (an argument is missing and the drop-in is not current).
    pub write_needed: bool,
    pub command: String,
}

/// The RHEL way: grubby edits every boot entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RhelGrubby {
    pub command: String,
    /// Removes every expected argument again (puts back no replaced value).
    pub undo: String,
}

/// The boot loader change for `iso` on this host (reads /proc/cmdline, the GRUB defaults and
/// the drop-in; changes nothing).
pub fn bootloader(host: &HostRoot, iso: &Isolation) -> Bootloader {
    let expected = expected_args(iso);
    let (running, running_error) = match read_cmdline(host) {
        Ok(c) => (Some(parse_cmdline(&c)), None),
        Err(e) => (None, Some(e)),
    };
    let args = arg_states(host, &expected, running.as_deref().unwrap_or_default());
    let boot = BootState::observe(host, iso);
    let writable: Vec<&KernelArg> = expected.iter().filter(|a| shell_safe(a)).collect();
    let mut remove = Vec::new();
    for want in &writable {
        conflicting_spellings(running.as_deref().unwrap_or_default(), want, &mut remove);
    }
    let reboot_needed = args.iter().any(|a| a.action != Action::Ok);
    let names: Vec<String> = writable.iter().map(|a| a.name.clone()).collect();
    Bootloader {
        schema_version: BOOTLOADER_SCHEMA_VERSION,
        housekeeping_cpus: iso.housekeeping_cpus.to_string(),
        isolated_cpus: iso.isolated_cpus.to_string(),
        expected: args_line(&expected),
        running: running.as_deref().map(args_line),
        running_error,
        reboot_needed,
        boot_loader: boot.kind,
        debian: DebianGrub {
            drop_in: DROP_IN.to_owned(),
            drop_in_state: match &boot.drop_in {
                Ok(Value::Absent) => "absent".to_owned(),
                Ok(_) if boot.configured() => "current".to_owned(),
                Ok(_) => "other".to_owned(),
                Err(e) => e.clone(),
            },
            write_needed: reboot_needed && !boot.configured(),
            content: boot.content,
            command: "update-grub".to_owned(),
        },
        rhel: RhelGrubby {
            command: grubby_command(&writable, &remove),
            undo: format!(
                "grubby --update-kernel=ALL --remove-args=\"{}\"",
                names.join(" ")
            ),
        },
        args,
    }
}

/// The boot loader change as text an operator can follow: what the running kernel lacks, the
/// Debian and RHEL recipes (this host's first), how to undo, and that a reboot is theirs to do.
pub fn render(b: &Bootloader, out: &mut dyn io::Write) -> io::Result<()> {
    writeln!(
        out,
        "Kernel command line for CPU isolation: housekeeping {}, isolated {}",
        b.housekeeping_cpus, b.isolated_cpus
    )?;
    writeln!(out, "\nExpected arguments:\n  {}", b.expected)?;
    match (&b.running_error, &b.running) {
        (Some(e), _) => writeln!(out, "\nThe running command line could not be read: {e}")?,
        (None, Some(r)) => writeln!(
            out,
            "\nRunning kernel ({PROC_CMDLINE}, before `--`):\n  {r}"
        )?,
        (None, None) => {}
    }
    writeln!(out)?;
    for a in &b.args {
        match (a.action, &a.actual) {
            (Action::Ok, _) => writeln!(out, "  ok       {}", a.expected)?,
            (Action::Replace, Some(have)) => {
                writeln!(out, "  replace  {have}  with  {}", a.expected)?;
                if let Some(r) = a.removal() {
                    writeln!(out, "           remove {r}")?;
                }
            }
            _ => writeln!(out, "  add      {}", a.expected)?,
        }
        if a.occurrences > 1 {
            writeln!(
                out,
                "           ({} appears {} times; the last one is shown)",
                a.name, a.occurrences
            )?;
        }
        if a.refused {
            writeln!(
                out,
                "           NOT written by node-agent: characters other than letters, digits \
                 and {SHELL_SAFE}; set it by hand"
            )?;
        }
    }
    if !b.reboot_needed {
        writeln!(
            out,
            "\nThe running kernel has every argument: nothing to change, no reboot needed."
        )?;
        if b.debian.drop_in_state == "other" {
            writeln!(
                out,
                "Note: {} differs from what this layout writes; the next update-grub uses it. \
                 Run `agentctl isolation bootloader --write` or `agentctl tune rollback`.",
                b.debian.drop_in
            )?;
        }
        return Ok(());
    }
    let this = |k: BootLoaderKind| {
        if b.boot_loader == k {
            "  <- this host"
        } else {
            ""
        }
    };
    writeln!(
        out,
        "\nDebian/Ubuntu (GRUB){}",
        this(BootLoaderKind::DebianGrub)
    )?;
    if b.debian.write_needed {
        writeln!(
            out,
            "  node-agent writes the drop-in and runs update-grub (journaled):\n    \
             agentctl isolation bootloader --write\n  \
             or by hand, write {} with:",
            b.debian.drop_in
        )?;
        for line in b.debian.content.lines() {
            writeln!(out, "    {line}")?;
        }
        writeln!(out, "  then run: {}", b.debian.command)?;
    } else {
        writeln!(
            out,
            "  {} is in place: the boot loader is configured (if update-grub failed, run it).",
            b.debian.drop_in
        )?;
    }
    writeln!(
        out,
        "  Undo: agentctl tune rollback (removes the drop-in, runs update-grub again)"
    )?;
    writeln!(
        out,
        "\nRHEL/Rocky/Alma (grubby){}",
        this(BootLoaderKind::Grubby)
    )?;
    writeln!(out, "  {}", b.rhel.command)?;
    writeln!(
        out,
        "  Undo: {}\n        (re-add any value shown as `replace` above)",
        b.rhel.undo
    )?;
    writeln!(
        out,
        "\nA reboot is needed; node-agent never reboots. Reboot in a maintenance window, then\n\
         check with `agentctl tune verify`: the cmdline items must pass."
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arg(name: &str, value: Option<&str>) -> KernelArg {
        KernelArg::new(name, value.map(str::to_owned))
    }

    #[test]
    fn splits_like_the_kernel() {
        assert_eq!(
            parse_cmdline("  ro  quiet\tfoo=bar=baz =x\n"),
            [
                arg("ro", None),
                arg("quiet", None),
                arg("foo", Some("bar=baz")),
                arg("=x", None),
            ]
        );
        assert_eq!(parse_cmdline(""), []);
        assert_eq!(parse_cmdline("\n"), []);
        assert_eq!(parse_cmdline("a= b"), [arg("a", Some("")), arg("b", None)]);
    }

    #[test]
    fn quotes_as_next_arg_handles_them() {
        assert_eq!(
            parse_cmdline(r#"dyndbg="file foo.c +p" x"#),
            [arg("dyndbg", Some("file foo.c +p")), arg("x", None)]
        );
        // The whole argument quoted.
        assert_eq!(
            parse_cmdline(r#""acpi_osi=!Windows 2012" y"#),
            [arg("acpi_osi", Some("!Windows 2012")), arg("y", None)]
        );
        // A quote inside a value: kept, and it still protects the space.
        assert_eq!(
            parse_cmdline(r#"a=b"c d" e"#),
            [arg("a", Some(r#"b"c d""#)), arg("e", None)]
        );
        // Unterminated: runs to the end.
        assert_eq!(parse_cmdline(r#"a="b c"#), [arg("a", Some("b c"))]);
        // An empty quoted value.
        assert_eq!(
            parse_cmdline(r#"a="" b"#),
            [arg("a", Some("")), arg("b", None)]
        );
        assert_eq!(arg("a", Some("b c")).to_string(), r#"a="b c""#);
    }

    #[test]
    fn stops_at_a_bare_double_dash() {
        assert_eq!(parse_cmdline("ro -- nohz_full=1 --x"), [arg("ro", None)]);
        // Quoted, it is still a bare `--` to the kernel; with a value it is not.
        assert_eq!(parse_cmdline(r#"a "--" b"#), [arg("a", None)]);
        assert_eq!(
            parse_cmdline("--=1 b -- c"),
            [arg("--", Some("1")), arg("b", None)]
        );
    }

    #[test]
    fn names_compare_with_hyphens_as_underscores_and_cpu_lists_as_sets() {
        let want = arg("nohz_full", Some("2-15"));
        assert!(arg("nohz-full", Some("2-15")).satisfies(&want));
        assert!(arg("nohz_full", Some("2,3,4-15")).satisfies(&want));
        assert!(!arg("nohz_full", Some("2-14")).satisfies(&want));
        assert!(!arg("nohz_full", None).satisfies(&want));
        let iso = arg("isolcpus", Some("managed_irq,domain,2-15"));
        assert!(arg("isolcpus", Some("domain,managed_irq,2-7,8-15")).satisfies(&iso));
        assert!(!arg("isolcpus", Some("2-15")).satisfies(&iso));
        assert!(arg("isolcpus", Some("2-15")).satisfies(&arg("isolcpus", Some("domain,2-15"))));
        // Other arguments compare as text.
        assert!(!arg("skew_tick", Some("01")).satisfies(&arg("skew_tick", Some("1"))));
        assert!(arg("nosoftlockup", None).satisfies(&arg("nosoftlockup", None)));
    }
}
