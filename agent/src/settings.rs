//! The agent's settings file, /etc/node-agent/agent.toml: strict TOML validated into typed
//! settings that are passed explicitly. A missing file means the defaults (the operations
//! manual's platform, the daemon in observe mode on the local socket only); an invalid one is an
//! error naming file, line, column and key.
//!
//! Validation happens while parsing, as for profiles (docs/ARCHITECTURE.md): every value is a
//! newtype or a bounded field whose serde impl refuses a bad value where the TOML parser knows
//! its position; rules across the keys of one table are `try_from` raw structs (the error points
//! at the table); the one rule across tables (`listen.tcp` needs `[tls]`) is checked right after
//! parsing on spanned values, so it points at `listen.tcp` too.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

use crate::tomlfile::{self, Invalid};
use crate::verify::{Class, Item};

pub const SETTINGS_ENV: &str = "NODE_AGENT_SETTINGS";
pub const DEFAULT_SETTINGS: &str = "/etc/node-agent/agent.toml";

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("failed to read settings {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}:{line}:{column}: {message}", path.display())]
    Invalid {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
}

pub use crate::profile::types::{ProfileName, UnitName};

use crate::profile::types::serde_via_str;

// ---------------------------------------------------------------------------------------------
// Durations and bounded numbers
// ---------------------------------------------------------------------------------------------

/// A duration written as systemd writes them: `30s`, `500ms`, `2min`, `1h`, or whole seconds.
/// Every duration in the settings is one; a bare `Timeout` is above 0 and at most 24 h, and a
/// key with its own range says so (`agent.verify_interval`: 1 s to 1 h).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timeout(pub Duration);

/// The syntax alone: a number and a unit.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration {s:?}: expected e.g. \"30s\", \"500ms\", \"2min\"");
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| bad())?;
    let secs = |factor: u64| n.checked_mul(factor).map(Duration::from_secs);
    match unit.trim() {
        "" | "s" | "sec" => secs(1),
        "ms" | "msec" => Some(Duration::from_millis(n)),
        "m" | "min" => secs(60),
        "h" | "hr" => secs(3600),
        _ => None,
    }
    .ok_or_else(bad)
}

impl FromStr for Timeout {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let d = parse_duration(s)?;
        if d.is_zero() || d > Duration::from_secs(24 * 3600) {
            return Err(format!(
                "invalid duration {s:?}: must be above 0 and at most 24h"
            ));
        }
        Ok(Timeout(d))
    }
}

impl fmt::Display for Timeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms.is_multiple_of(1000) {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

/// A duration as written, not yet range-checked: a string such as "30s" or whole seconds.
struct DurationText(String);

impl<'de> Deserialize<'de> for DurationText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = DurationText;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"30s\" or a number of seconds")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<DurationText, E> {
                Ok(DurationText(s.to_owned()))
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<DurationText, E> {
                Ok(DurationText(n.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for Timeout {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        DurationText::deserialize(d)?
            .0
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl Serialize for Timeout {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A duration in the largest unit that divides it: `1h`, `90s`, `500ms`.
fn show_duration(d: Duration) -> String {
    let ms = d.as_millis();
    match ms {
        0 => "0s".into(),
        _ if ms.is_multiple_of(3_600_000) => format!("{}h", ms / 3_600_000),
        _ if ms.is_multiple_of(60_000) => format!("{}min", ms / 60_000),
        _ if ms.is_multiple_of(1000) => format!("{}s", ms / 1000),
        _ => format!("{ms}ms"),
    }
}

/// serde `deserialize_with` for a duration key with its own range, in whole seconds.
fn duration_in<'de, D: Deserializer<'de>, const MIN_S: u64, const MAX_S: u64>(
    d: D,
) -> Result<Timeout, D::Error> {
    duration_between(d, Duration::from_secs(MIN_S), Duration::from_secs(MAX_S))
}

/// serde `deserialize_with` for a short duration key with its own range, in milliseconds.
fn duration_ms_in<'de, D: Deserializer<'de>, const MIN_MS: u64, const MAX_MS: u64>(
    d: D,
) -> Result<Timeout, D::Error> {
    duration_between(
        d,
        Duration::from_millis(MIN_MS),
        Duration::from_millis(MAX_MS),
    )
}

fn duration_between<'de, D: Deserializer<'de>>(
    d: D,
    min: Duration,
    max: Duration,
) -> Result<Timeout, D::Error> {
    let text = DurationText::deserialize(d)?.0;
    let v = parse_duration(&text).map_err(serde::de::Error::custom)?;
    if v < min || v > max {
        return Err(serde::de::Error::custom(format!(
            "{} is out of range: must be from {} to {}",
            show_duration(v),
            show_duration(min),
            show_duration(max)
        )));
    }
    Ok(Timeout(v))
}

/// serde `deserialize_with` for a count with its own range.
fn count_in<'de, D, T, const MIN: u64, const MAX: u64>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<u64>,
{
    // TOML integers are i64: a negative count gets the range, not "expected u64".
    let n = i64::deserialize(d)?;
    u64::try_from(n)
        .ok()
        .filter(|u| (MIN..=MAX).contains(u))
        .and_then(|u| T::try_from(u).ok())
        .ok_or_else(|| {
            serde::de::Error::custom(format!("{n} is out of range: must be from {MIN} to {MAX}"))
        })
}

/// A size in bytes, shown with its binary unit: `64 KiB (65536)`.
fn show_bytes(n: u64) -> String {
    if n >= 1 << 20 && n.is_multiple_of(1 << 20) {
        format!("{} MiB ({n})", n >> 20)
    } else if n >= 1 << 10 && n.is_multiple_of(1 << 10) {
        format!("{} KiB ({n})", n >> 10)
    } else {
        n.to_string()
    }
}

const MIN_MESSAGE_BYTES: u64 = 64 << 10;
const MAX_MESSAGE_BYTES: u64 = 64 << 20;

/// serde `deserialize_with` for `rpc.max_message_bytes`.
fn message_bytes<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    let n = i64::deserialize(d)?;
    u64::try_from(n)
        .ok()
        .filter(|u| (MIN_MESSAGE_BYTES..=MAX_MESSAGE_BYTES).contains(u))
        .and_then(|u| usize::try_from(u).ok())
        .ok_or_else(|| {
            serde::de::Error::custom(format!(
                "{n} bytes is out of range: must be from {} to {}",
                show_bytes(MIN_MESSAGE_BYTES),
                show_bytes(MAX_MESSAGE_BYTES)
            ))
        })
}

// ---------------------------------------------------------------------------------------------
// Paths and names
// ---------------------------------------------------------------------------------------------

/// An absolute, normalised file path (no `.`/`..`, no empty components, no trailing slash): the
/// daemon does not run in a fixed directory, so a relative path would mean nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
struct AbsPath(PathBuf);

impl FromStr for AbsPath {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("invalid path {s:?}: {why}");
        if !s.starts_with('/') {
            return Err(bad("must be absolute"));
        }
        if s.chars().any(|c| c.is_control()) {
            return Err(bad("control characters are not allowed"));
        }
        if s == "/" || s.ends_with('/') {
            return Err(bad("names a directory: remove the trailing '/'"));
        }
        if s[1..]
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(bad("empty, '.' and '..' components are not allowed"));
        }
        Ok(AbsPath(PathBuf::from(s)))
    }
}

impl fmt::Display for AbsPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.display().fmt(f)
    }
}
serde_via_str!(AbsPath, "an absolute path");

/// A Unix socket path: absolute, and short enough for `sun_path` (108 bytes with the NUL).
#[derive(Debug, Clone, PartialEq, Eq)]
struct SocketPath(PathBuf);

const SUN_PATH_MAX: usize = 107;

impl FromStr for SocketPath {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let AbsPath(p) = s.parse()?;
        if s.len() > SUN_PATH_MAX {
            return Err(format!(
                "socket path {s:?} is {} bytes: a Unix socket path must fit in {SUN_PATH_MAX}",
                s.len()
            ));
        }
        Ok(SocketPath(p))
    }
}

impl fmt::Display for SocketPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.display().fmt(f)
    }
}
serde_via_str!(SocketPath, "an absolute socket path");

/// A group name as shadow-utils and systemd's strict mode accept it: 1-32 characters of
/// letters, digits, `_` and `-`, starting with a letter or `_`. Whether the group exists is the
/// daemon's check at start, not the parser's: settings are validated on machines without it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupName(String);

impl GroupName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for GroupName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let valid = (1..=32).contains(&s.len())
            && s.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'));
        if !valid {
            return Err(format!(
                "invalid group name {s:?}: 1-32 characters of letters, digits, '_' and '-', \
                 starting with a letter or '_'"
            ));
        }
        Ok(GroupName(s.to_owned()))
    }
}

impl fmt::Display for GroupName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
serde_via_str!(GroupName, "a group name such as \"node-agent-admin\"");

/// A listening address: `IP:PORT` (`0.0.0.0:9443`, `[::1]:9750`), no host names (the daemon
/// must not wait on DNS to start) and no port 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ListenAddr(SocketAddr);

impl FromStr for ListenAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let addr: SocketAddr = s.parse().map_err(|_| {
            format!(
                "invalid address {s:?}: expected IP:PORT such as \"0.0.0.0:9443\" or \
                 \"[::1]:9443\""
            )
        })?;
        if addr.port() == 0 {
            return Err(format!(
                "invalid address {s:?}: port 0 would pick a random port; give a fixed one"
            ));
        }
        Ok(ListenAddr(addr))
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}
serde_via_str!(ListenAddr, "an address such as \"0.0.0.0:9443\"");

// ---------------------------------------------------------------------------------------------
// [agent]
// ---------------------------------------------------------------------------------------------

/// `agent.mode`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Verify and report drift; never change the host on its own.
    #[default]
    Observe,
    /// Also re-apply drifted items that `[enforce]` covers, rate-limited and audited.
    Enforce,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Observe => "observe",
            Mode::Enforce => "enforce",
        }
    }
}

impl FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "observe" => Ok(Mode::Observe),
            "enforce" => Ok(Mode::Enforce),
            _ => Err(format!("invalid mode {s:?}: expected observe or enforce")),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
serde_via_str!(Mode, "\"observe\" or \"enforce\"");

/// `agent.profile`: a name looked up on the profile search path, or an absolute path (a
/// relative one would depend on the daemon's working directory). The same spelling as
/// `agentctl --profile`, so `to_string()` can be handed to `profile::load`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProfileSpec {
    Name(ProfileName),
    Path(PathBuf),
}

impl FromStr for ProfileSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        // As `profile::resolve` reads `--profile`: a path when it has a '/' or ends in .toml.
        if s.contains('/') || s.ends_with(".toml") {
            return match s.parse::<AbsPath>() {
                Ok(AbsPath(p)) => Ok(ProfileSpec::Path(p)),
                Err(_) if !s.starts_with('/') => Err(format!(
                    "invalid profile {s:?}: a path must be absolute; a name is looked up on the \
                     profile search path without '/' or .toml"
                )),
                Err(e) => Err(e),
            };
        }
        s.parse().map(ProfileSpec::Name)
    }
}

impl fmt::Display for ProfileSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProfileSpec::Name(n) => n.fmt(f),
            ProfileSpec::Path(p) => p.display().fmt(f),
        }
    }
}
serde_via_str!(
    ProfileSpec,
    "a profile name such as \"trading-latency\" or an absolute path"
);

/// `[agent]`: what the daemon runs and how.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Agent {
    /// The profile the daemon keeps; required to run the daemon, and `agentctl`'s profile
    /// when `--profile` is absent. None by default: the package does not pick one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<ProfileSpec>,
    pub mode: Mode,
    /// How often the daemon verifies the host: 1 s to 1 h.
    #[serde(deserialize_with = "duration_in::<_, 1, 3600>")]
    pub verify_interval: Timeout,
    /// Apply the profile before the daemon reports READY. Off by default, so installing the
    /// package never retunes a host by surprise.
    pub apply_on_start: bool,
}

impl Default for Agent {
    fn default() -> Self {
        Agent {
            profile: None,
            mode: Mode::Observe,
            verify_interval: Timeout(Duration::from_secs(10)),
            apply_on_start: false,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// [enforce]
// ---------------------------------------------------------------------------------------------

/// Every report class, in the report's order.
const CLASSES: [Class; 10] = [
    Class::Sysctl,
    Class::Cpu,
    Class::Memory,
    Class::Block,
    Class::Limits,
    Class::Mount,
    Class::Clocksource,
    Class::Isolation,
    Class::Units,
    Class::Cmdline,
];

/// Why enforce mode may never re-apply items of `class`; None when it may. Exhaustive, so a
/// new class has to be decided here (and added to `CLASSES`).
fn never_enforced(class: Class) -> Option<&'static str> {
    match class {
        Class::Sysctl
        | Class::Cpu
        | Class::Memory
        | Class::Block
        | Class::Limits
        | Class::Mount
        | Class::Clocksource
        | Class::Isolation
        | Class::Units => None,
        Class::Cmdline => Some(
            "the kernel command line changes only with `agentctl isolation bootloader --write` \
             and a reboot",
        ),
    }
}

/// The components after `memory.` that memory items have (tuning::memory).
const MEMORY_KEYS: [&str; 4] = ["transparent_hugepage", "swap", "ksm", "hugepages"];

/// One entry of `enforce.targets`: a class (`memory`), or a key prefix within a class ending
/// on a `.` boundary (`memory.transparent_hugepage`, `cpu.3`, `sysctl.net.ipv4`). `*` stands
/// for exactly one component (`cpu.*.governor`).
///
/// The key a selector matches is the report's item key, with the class put in front where the
/// key does not already start with it (sysctl items are keyed by the sysctl name alone:
/// `net.core.somaxconn` is `sysctl.net.core.somaxconn` here).
///
/// `memory.swap` is covered only by a selector that names it: swapoff moves every swapped page
/// back into memory, which must never happen because `memory` was listed for THP.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Selector {
    class: Class,
    /// Components after the class; empty for the whole class.
    path: Vec<String>,
}

impl Selector {
    pub fn class(&self) -> Class {
        self.class
    }

    /// The components after the class; empty when the selector is the whole class.
    pub fn path(&self) -> &[String] {
        &self.path
    }

    /// Whether this selector selects the item.
    pub fn covers(&self, item: &Item) -> bool {
        if item.class != self.class {
            return false;
        }
        let key = item_components(item);
        self.path.len() <= key.len()
            && self.path.iter().zip(&key).all(|(p, k)| p == "*" || p == k)
            && (!explicit_only(self.class, &key) || self.names_explicit())
    }

    /// Whether every item this selector covers is covered by `other` too.
    fn within(&self, other: &Selector) -> bool {
        self.class == other.class
            && other.path.len() <= self.path.len()
            && other
                .path
                .iter()
                .zip(&self.path)
                .all(|(o, s)| o == "*" || o == s)
            && (!self.names_explicit() || other.names_explicit())
    }

    /// Whether the selector names an item that is covered only by name (`memory.swap`).
    fn names_explicit(&self) -> bool {
        let path: Vec<&str> = self.path.iter().map(String::as_str).collect();
        explicit_only(self.class, &path)
    }
}

/// Whether the item keyed `key` (components after the class) is covered only by a selector
/// that names it.
fn explicit_only<S: AsRef<str>>(class: Class, key: &[S]) -> bool {
    class == Class::Memory && key.first().is_some_and(|c| c.as_ref() == "swap")
}

/// The item's key as components after its class.
fn item_components(item: &Item) -> Vec<&str> {
    let class = item.class.as_str();
    let key = item.key.as_str();
    let rest = if key == class {
        ""
    } else {
        key.strip_prefix(class)
            .and_then(|r| r.strip_prefix('.'))
            .unwrap_or(key)
    };
    if rest.is_empty() {
        Vec::new()
    } else {
        rest.split('.').collect()
    }
}

/// The classes a selector may name.
fn class_list() -> String {
    let names: Vec<&str> = CLASSES
        .iter()
        .filter(|c| never_enforced(**c).is_none())
        .map(|c| c.as_str())
        .collect();
    names.join(", ")
}

impl FromStr for Selector {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut parts = s.split('.');
        let first = parts.next().unwrap_or_default();
        let Some(class) = CLASSES.iter().copied().find(|c| c.as_str() == first) else {
            return Err(format!(
                "unknown enforce target {s:?}: expected a class ({}) or a key prefix within \
                 one, such as memory.transparent_hugepage",
                class_list()
            ));
        };
        if let Some(why) = never_enforced(class) {
            return Err(format!("enforce target {s:?} is not allowed: {why}"));
        }
        let path: Vec<String> = parts.map(str::to_owned).collect();
        for c in &path {
            let why = if c.is_empty() {
                "empty component"
            } else if c.contains('*') && c != "*" {
                "'*' stands for a whole component"
            } else if c.chars().any(|c| c.is_whitespace() || c.is_control()) {
                "spaces and control characters are not allowed"
            } else {
                continue;
            };
            return Err(format!("invalid enforce target {s:?}: {why}"));
        }
        if class == Class::Memory
            && let Some(first) = path.first()
            && first != "*"
            && !MEMORY_KEYS.contains(&first.as_str())
        {
            return Err(format!(
                "unknown enforce target {s:?}: memory items are {}",
                MEMORY_KEYS.map(|k| format!("memory.{k}")).join(", ")
            ));
        }
        Ok(Selector { class, path })
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.class.as_str())?;
        for c in &self.path {
            write!(f, ".{c}")?;
        }
        Ok(())
    }
}
serde_via_str!(
    Selector,
    "a class or key prefix such as \"memory.transparent_hugepage\""
);

/// `enforce.targets`: what enforce mode re-applies when it drifts. No entry repeats or is
/// covered by another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnforceTargets(Vec<Selector>);

impl EnforceTargets {
    /// Refuses duplicates and entries another entry already covers.
    pub fn new(selectors: Vec<Selector>) -> Result<EnforceTargets, String> {
        for (i, s) in selectors.iter().enumerate() {
            for (j, other) in selectors.iter().enumerate() {
                if i == j || !s.within(other) {
                    continue;
                }
                if s == other {
                    if j < i {
                        return Err(format!("{s} is listed twice"));
                    }
                } else {
                    return Err(format!("{s} is already covered by {other}"));
                }
            }
        }
        Ok(EnforceTargets(selectors))
    }

    pub fn selectors(&self) -> &[Selector] {
        &self.0
    }

    /// Whether enforce mode may re-apply this item.
    pub fn covers(&self, item: &Item) -> bool {
        self.0.iter().any(|s| s.covers(item))
    }

    /// The classes that have at least one selector, each once, in the order listed.
    pub fn classes(&self) -> Vec<Class> {
        let mut out: Vec<Class> = Vec::new();
        for s in &self.0 {
            if !out.contains(&s.class) {
                out.push(s.class);
            }
        }
        out
    }
}

impl Default for EnforceTargets {
    /// sysctl, cpu, THP, block: what drifts at runtime and is safe to put back. Not swap, not
    /// mounts, not limits (which only matter at the next login or unit start).
    fn default() -> Self {
        let sel = |class, path: &[&str]| Selector {
            class,
            path: path.iter().map(|s| s.to_string()).collect(),
        };
        EnforceTargets(vec![
            sel(Class::Sysctl, &[]),
            sel(Class::Cpu, &[]),
            sel(Class::Memory, &["transparent_hugepage"]),
            sel(Class::Block, &[]),
        ])
    }
}

impl<'de> Deserialize<'de> for EnforceTargets {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        EnforceTargets::new(Vec::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

impl Serialize for EnforceTargets {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

/// `[enforce]`: what enforce mode re-applies, and its brakes (`daemon::enforce::Limiter`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Enforce {
    pub targets: EnforceTargets,
    /// At most one re-apply of the same item per this interval: 1 s to 24 h.
    #[serde(deserialize_with = "duration_in::<_, 1, 86400>")]
    pub min_interval: Timeout,
    /// Re-applies per hour across all items (1-3600); past it, enforcement stops and says so
    /// until the hour has passed.
    #[serde(deserialize_with = "count_in::<_, usize, 1, 3600>")]
    pub max_per_hour: usize,
}

impl Default for Enforce {
    fn default() -> Self {
        Enforce {
            targets: EnforceTargets::default(),
            min_interval: Timeout(Duration::from_secs(60)),
            max_per_hour: 30,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// [listen], [tls]
// ---------------------------------------------------------------------------------------------

/// `[listen]`: where the daemon answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Listen {
    /// The local admin socket (mode 0660). Callers are authorized by peer credentials: uid 0,
    /// or a member of `socket_group`, is an operator.
    pub socket: PathBuf,
    /// The group that owns the socket; its members are operators.
    pub socket_group: GroupName,
    /// gRPC over TCP with mutual TLS; requires `[tls]`. None: no TCP listener.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp: Option<SocketAddr>,
    /// Prometheus metrics over plain HTTP (read-only): 127.0.0.1:9750 unless set; `"off"` in
    /// the file (None here) means no metrics endpoint.
    #[serde(serialize_with = "metrics_addr")]
    pub metrics: Option<SocketAddr>,
}

impl Default for Listen {
    fn default() -> Self {
        Listen {
            socket: PathBuf::from("/run/node-agent/agent.sock"),
            socket_group: GroupName("node-agent-admin".into()),
            tcp: None,
            metrics: Some(DEFAULT_METRICS),
        }
    }
}

/// `[listen]` as written; `Settings::parse` checks the addresses against `[tls]` and each
/// other with their positions.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListenRaw {
    socket: Option<SocketPath>,
    socket_group: Option<GroupName>,
    tcp: Option<toml::Spanned<ListenAddr>>,
    metrics: Option<toml::Spanned<MetricsAddr>>,
}

/// The metrics endpoint's default: loopback only.
pub const DEFAULT_METRICS: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9750);

/// `listen.metrics` as written: an address, or `"off"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct MetricsAddr(Option<SocketAddr>);

impl FromStr for MetricsAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "off" {
            return Ok(MetricsAddr(None));
        }
        s.parse::<ListenAddr>()
            .map(|a| MetricsAddr(Some(a.0)))
            .map_err(|e| format!("{e}, or \"off\""))
    }
}

impl fmt::Display for MetricsAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(a) => a.fmt(f),
            None => f.write_str("off"),
        }
    }
}
serde_via_str!(
    MetricsAddr,
    "an address such as \"127.0.0.1:9750\", or \"off\""
);

fn metrics_addr<S: serde::Serializer>(a: &Option<SocketAddr>, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&MetricsAddr(*a))
}

/// `[tls]`: the TCP listener's identity and the CA its clients' certificates must chain to.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "TlsRaw")]
pub struct Tls {
    /// The server certificate chain (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// The CA that signs client certificates (PEM); a client without one is refused.
    pub client_ca: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsRaw {
    cert: Option<AbsPath>,
    key: Option<AbsPath>,
    client_ca: Option<AbsPath>,
}

impl TryFrom<TlsRaw> for Tls {
    type Error = String;
    fn try_from(raw: TlsRaw) -> Result<Self, String> {
        match (raw.cert, raw.key, raw.client_ca) {
            (Some(cert), Some(key), Some(client_ca)) => Ok(Tls {
                cert: cert.0,
                key: key.0,
                client_ca: client_ca.0,
            }),
            (cert, key, ca) => {
                let missing: Vec<&str> = [
                    ("cert", cert.is_none()),
                    ("key", key.is_none()),
                    ("client_ca", ca.is_none()),
                ]
                .iter()
                .filter(|(_, m)| *m)
                .map(|(k, _)| *k)
                .collect();
                Err(format!(
                    "give all of cert, key and client_ca, or leave out [tls] (missing: {})",
                    missing.join(", ")
                ))
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// [roles]
// ---------------------------------------------------------------------------------------------

/// A certificate subject common name, matched exactly (case and all): 1-64 characters (X.520's
/// upper bound), no control characters, no leading or trailing spaces.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CommonName(String);

impl CommonName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for CommonName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let why = if s.is_empty() {
            "must not be empty"
        } else if s.chars().count() > 64 {
            "longer than 64 characters"
        } else if s.chars().any(char::is_control) {
            "control characters are not allowed"
        } else if s.trim() != s {
            "leading or trailing spaces would never match a certificate"
        } else {
            return Ok(CommonName(s.to_owned()));
        };
        Err(format!("invalid common name {s:?}: {why}"))
    }
}

impl fmt::Display for CommonName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
serde_via_str!(CommonName, "a certificate common name");

/// What a caller may do. Ordered: an operator may do everything an observer may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Reads: status, verify, drift stream, plan, units list, health, reflection.
    Observer,
    /// Also the mutations: apply, rollback, unit control, platform stop/start, enforce pause.
    Operator,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Observer => "observer",
            Role::Operator => "operator",
        }
    }

    /// Whether this role may call a method that needs `required`.
    pub fn allows(self, required: Role) -> bool {
        self >= required
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `[roles]`: client certificates' subject common names per role. A name in neither list is
/// refused; a name is in at most one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "RolesRaw")]
pub struct Roles {
    pub observers: Vec<CommonName>,
    pub operators: Vec<CommonName>,
}

impl Roles {
    /// The role of a client certificate's subject common name, if it has one.
    pub fn role_of(&self, cn: &str) -> Option<Role> {
        if self.operators.iter().any(|n| n.as_str() == cn) {
            Some(Role::Operator)
        } else if self.observers.iter().any(|n| n.as_str() == cn) {
            Some(Role::Observer)
        } else {
            None
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RolesRaw {
    #[serde(default)]
    observers: Vec<CommonName>,
    #[serde(default)]
    operators: Vec<CommonName>,
}

impl TryFrom<RolesRaw> for Roles {
    type Error = String;
    fn try_from(raw: RolesRaw) -> Result<Self, String> {
        for (list, names) in [("observers", &raw.observers), ("operators", &raw.operators)] {
            for (i, n) in names.iter().enumerate() {
                if names[..i].contains(n) {
                    return Err(format!("{:?} is listed twice in {list}", n.as_str()));
                }
            }
        }
        if let Some(n) = raw.observers.iter().find(|n| raw.operators.contains(n)) {
            return Err(format!(
                "{:?} is in both observers and operators: give each certificate one role",
                n.as_str()
            ));
        }
        Ok(Roles {
            observers: raw.observers,
            operators: raw.operators,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// [rpc]
// ---------------------------------------------------------------------------------------------

/// `[rpc]`: limits of the gRPC server, on every listener. (Not `[limits]`: in a profile that
/// name means pam_limits, and the two must not be confused.)
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RpcLimits {
    /// Largest request or response message, bytes: 64 KiB to 64 MiB.
    #[serde(deserialize_with = "message_bytes")]
    pub max_message_bytes: usize,
    /// HTTP/2 streams per connection (1-4096).
    #[serde(deserialize_with = "count_in::<_, u32, 1, 4096>")]
    pub max_concurrent_streams: u32,
    /// Deadline of one call (1 s to 1 h). Unit control and platform stop/start are bounded by
    /// the `[units]` deadlines instead, which are longer.
    #[serde(deserialize_with = "duration_in::<_, 1, 3600>")]
    pub request_timeout: Timeout,
    /// Open connections across all listeners (1-65536); more are refused until one closes.
    #[serde(deserialize_with = "count_in::<_, usize, 1, 65536>")]
    pub max_connections: usize,
}

impl Default for RpcLimits {
    fn default() -> Self {
        RpcLimits {
            max_message_bytes: 4 << 20,
            max_concurrent_streams: 64,
            request_timeout: Timeout(Duration::from_secs(30)),
            max_connections: 256,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// [units]
// ---------------------------------------------------------------------------------------------

/// `[units]`: the trading units the agent manages, in platform order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Units {
    /// Started first to last; stopped last to first. Only these units may be controlled.
    pub order: Vec<UnitName>,
    /// How long the agent waits for a start or stop job (the unit's own TimeoutStartSec= and
    /// TimeoutStopSec= still govern systemd).
    pub job_timeout: Timeout,
    /// Per-unit stop deadline while in-flight work drains (replaces `job_timeout` on stop).
    pub drain: BTreeMap<UnitName, Timeout>,
}

impl Default for Units {
    /// The operations manual: market data, risk, engine, gateway; drain 30 s for the gateway
    /// and the engine.
    fn default() -> Self {
        let name = UnitName::known;
        Units {
            order: [
                "market-data",
                "risk-engine",
                "trading-engine",
                "order-gateway",
            ]
            .iter()
            .map(|u| name(&format!("{u}.service")))
            .collect(),
            job_timeout: Timeout(Duration::from_secs(90)),
            drain: [
                (
                    name("order-gateway.service"),
                    Timeout(Duration::from_secs(30)),
                ),
                (
                    name("trading-engine.service"),
                    Timeout(Duration::from_secs(30)),
                ),
            ]
            .into(),
        }
    }
}

impl Units {
    pub fn is_managed(&self, unit: &UnitName) -> bool {
        self.order.contains(unit)
    }

    /// The deadline for stopping `unit`.
    pub fn stop_deadline(&self, unit: &UnitName) -> Duration {
        self.drain.get(unit).unwrap_or(&self.job_timeout).0
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UnitsRaw {
    #[serde(default)]
    order: Option<Vec<UnitName>>,
    #[serde(default)]
    job_timeout: Option<Timeout>,
    #[serde(default)]
    drain: Option<BTreeMap<UnitName, Timeout>>,
}

impl<'de> Deserialize<'de> for Units {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let raw = UnitsRaw::deserialize(d)?;
        let defaults = Units::default();
        let order = raw.order.unwrap_or(defaults.order);
        for (i, u) in order.iter().enumerate() {
            if order[..i].contains(u) {
                return Err(D::Error::custom(format!(
                    "unit {u} is listed twice in `order`"
                )));
            }
        }
        // The default drain deadlines apply to the default units that remain in `order`.
        let drain = match raw.drain {
            Some(d) => d,
            None => defaults
                .drain
                .into_iter()
                .filter(|(u, _)| order.contains(u))
                .collect(),
        };
        if let Some(u) = drain.keys().find(|u| !order.contains(u)) {
            return Err(D::Error::custom(format!(
                "drain names {u}, which is not in `order`"
            )));
        }
        Ok(Units {
            order,
            job_timeout: raw.job_timeout.unwrap_or(defaults.job_timeout),
            drain,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// [health]
// ---------------------------------------------------------------------------------------------

/// A percentage threshold, 1-100.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Percent(u8);

impl Percent {
    pub fn get(self) -> u8 {
        self.0
    }
}

impl<'de> Deserialize<'de> for Percent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        count_in::<_, u8, 1, 100>(d).map(Percent)
    }
}

/// `{ warn = 85, crit = 95 }`: percentages, warn at most crit (equal: never warn, only crit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PercentBounds {
    pub warn: Percent,
    pub crit: Percent,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PercentBoundsRaw {
    warn: Percent,
    crit: Percent,
}

impl<'de> Deserialize<'de> for PercentBounds {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = PercentBoundsRaw::deserialize(d)?;
        if raw.warn > raw.crit {
            return Err(serde::de::Error::custom(format!(
                "warn {} is above crit {}: warn must be at most crit",
                raw.warn.0, raw.crit.0
            )));
        }
        Ok(PercentBounds {
            warn: raw.warn,
            crit: raw.crit,
        })
    }
}

impl PercentBounds {
    /// Checked bounds: each 1-100, warn at most crit.
    pub fn new(warn: u8, crit: u8) -> Result<PercentBounds, String> {
        if !(1..=100).contains(&warn) || !(1..=100).contains(&crit) || warn > crit {
            return Err(format!(
                "invalid bounds warn {warn}, crit {crit}: each 1-100, warn at most crit"
            ));
        }
        Ok(PercentBounds::known(warn, crit))
    }

    const fn known(warn: u8, crit: u8) -> PercentBounds {
        PercentBounds {
            warn: Percent(warn),
            crit: Percent(crit),
        }
    }

    fn thresholds(self) -> crate::health::Thresholds {
        crate::health::Thresholds {
            warn: f64::from(self.warn.0),
            crit: f64::from(self.crit.0),
        }
    }
}

/// `{ warn = "10ms", crit = "30ms" }`: connect latencies, warn at most crit, each 1 ms to 10 s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct LatencyBounds {
    pub warn: Timeout,
    pub crit: Timeout,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LatencyBoundsRaw {
    #[serde(deserialize_with = "duration_ms_in::<_, 1, 10_000>")]
    warn: Timeout,
    #[serde(deserialize_with = "duration_ms_in::<_, 1, 10_000>")]
    crit: Timeout,
}

impl<'de> Deserialize<'de> for LatencyBounds {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = LatencyBoundsRaw::deserialize(d)?;
        if raw.warn > raw.crit {
            return Err(serde::de::Error::custom(format!(
                "warn {} is above crit {}: warn must be at most crit",
                raw.warn, raw.crit
            )));
        }
        Ok(LatencyBounds {
            warn: raw.warn,
            crit: raw.crit,
        })
    }
}

/// The name of a TCP endpoint, used in the check name `tcp.<name>` and as a metric label:
/// 1-64 characters of lowercase letters, digits, `-` and `_`, starting with a letter.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EndpointName(String);

impl EndpointName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for EndpointName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let valid = (1..=64).contains(&s.len())
            && s.starts_with(|c: char| c.is_ascii_lowercase())
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_'));
        if !valid {
            return Err(format!(
                "invalid endpoint name {s:?}: 1-64 characters of lowercase letters, digits, \
                 '-' and '_', starting with a letter"
            ));
        }
        Ok(EndpointName(s.to_owned()))
    }
}

impl fmt::Display for EndpointName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
serde_via_str!(EndpointName, "an endpoint name such as \"exchange-front\"");

/// Where a TCP endpoint is: `HOST:PORT` with HOST an IPv4 address, a bracketed IPv6 address
/// or a DNS name (resolved at each check, within its timeout), and a port from 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointAddr(String);

impl EndpointAddr {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for EndpointAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |why: &str| {
            format!(
                "invalid endpoint address {s:?}: {why} (expected HOST:PORT such as \
                 \"10.0.0.5:9000\", \"[fd00::5]:9000\" or \"db1.example.net:5432\")"
            )
        };
        if s.parse::<SocketAddr>().is_ok_and(|a| a.port() != 0) {
            return Ok(EndpointAddr(s.to_owned()));
        }
        let (host, port) = s.rsplit_once(':').ok_or_else(|| bad("no port"))?;
        match port.parse::<u16>() {
            Ok(p) if p > 0 => {}
            _ => return Err(bad("the port must be a number from 1 to 65535")),
        }
        let label_ok = |l: &str| {
            (1..=63).contains(&l.len())
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        };
        if host.is_empty() || host.len() > 253 || !host.split('.').all(label_ok) {
            return Err(bad("the host is neither an IP address nor a DNS name"));
        }
        Ok(EndpointAddr(s.to_owned()))
    }
}

impl fmt::Display for EndpointAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
serde_via_str!(EndpointAddr, "an address such as \"10.0.0.5:9000\"");

/// `[health]`: the host health checks (`agentctl health`, GetHealth, the metrics), with the
/// operations manual's thresholds as defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Health {
    /// How often the daemon runs the checks for its metrics: 5 s to 1 h.
    pub interval: Timeout,
    /// Mount points whose disk and inode usage is checked.
    pub mounts: Vec<PathBuf>,
    pub disk: PercentBounds,
    pub inodes: PercentBounds,
    pub memory: PercentBounds,
    /// Housekeeping CPUs only when the profile has an isolation layout.
    pub cpu: PercentBounds,
    /// Between the two /proc/stat samples: 10 ms to 5 s.
    pub cpu_sample_interval: Timeout,
    pub tcp_latency: LatencyBounds,
    /// Bound on resolution plus connect, per endpoint: at least `tcp_latency.crit`, at most 10 s.
    pub tcp_timeout: Timeout,
    /// The kernel's estimated clock error at or above which `clock.sync` warns: 1 ms to 10 s.
    pub clock_max_error: Timeout,
    /// Endpoints timed by TCP connect: name → HOST:PORT.
    pub endpoints: BTreeMap<EndpointName, EndpointAddr>,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            interval: Timeout(Duration::from_secs(30)),
            mounts: vec![PathBuf::from("/"), PathBuf::from("/var")],
            disk: PercentBounds::known(85, 95),
            inodes: PercentBounds::known(85, 95),
            memory: PercentBounds::known(70, 85),
            cpu: PercentBounds::known(70, 85),
            cpu_sample_interval: Timeout(Duration::from_millis(250)),
            tcp_latency: LatencyBounds {
                warn: Timeout(Duration::from_millis(10)),
                crit: Timeout(Duration::from_millis(30)),
            },
            tcp_timeout: Timeout(Duration::from_secs(1)),
            clock_max_error: Timeout(Duration::from_millis(1)),
            endpoints: BTreeMap::new(),
        }
    }
}

/// A mount point to check: `/` itself or an [`AbsPath`].
#[derive(Debug, Clone, PartialEq, Eq)]
struct MountPoint(PathBuf);

impl FromStr for MountPoint {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "/" {
            return Ok(MountPoint(PathBuf::from("/")));
        }
        s.parse::<AbsPath>().map(|p| MountPoint(p.0))
    }
}

impl fmt::Display for MountPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.display().fmt(f)
    }
}
serde_via_str!(MountPoint, "a mount point such as \"/var\"");

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HealthRaw {
    #[serde(default, deserialize_with = "opt_duration_in::<_, 5, 3600>")]
    interval: Option<Timeout>,
    mounts: Option<Vec<MountPoint>>,
    disk: Option<PercentBounds>,
    inodes: Option<PercentBounds>,
    memory: Option<PercentBounds>,
    cpu: Option<PercentBounds>,
    #[serde(default, deserialize_with = "opt_duration_ms_in::<_, 10, 5_000>")]
    cpu_sample_interval: Option<Timeout>,
    tcp_latency: Option<LatencyBounds>,
    #[serde(default, deserialize_with = "opt_duration_ms_in::<_, 1, 10_000>")]
    tcp_timeout: Option<Timeout>,
    #[serde(default, deserialize_with = "opt_duration_ms_in::<_, 1, 10_000>")]
    clock_max_error: Option<Timeout>,
    endpoints: Option<BTreeMap<EndpointName, EndpointAddr>>,
}

fn opt_duration_in<'de, D: Deserializer<'de>, const MIN_S: u64, const MAX_S: u64>(
    d: D,
) -> Result<Option<Timeout>, D::Error> {
    duration_in::<D, MIN_S, MAX_S>(d).map(Some)
}

fn opt_duration_ms_in<'de, D: Deserializer<'de>, const MIN_MS: u64, const MAX_MS: u64>(
    d: D,
) -> Result<Option<Timeout>, D::Error> {
    duration_ms_in::<D, MIN_MS, MAX_MS>(d).map(Some)
}

impl<'de> Deserialize<'de> for Health {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let raw = HealthRaw::deserialize(d)?;
        let defaults = Health::default();
        let mounts: Vec<PathBuf> = match raw.mounts {
            Some(m) => m.into_iter().map(|m| m.0).collect(),
            None => defaults.mounts,
        };
        if let Some((i, m)) = mounts
            .iter()
            .enumerate()
            .find(|(i, m)| mounts[..*i].contains(m))
        {
            return Err(D::Error::custom(format!(
                "mounts: {} is listed twice (entry {})",
                m.display(),
                i + 1
            )));
        }
        let tcp_latency = raw.tcp_latency.unwrap_or(defaults.tcp_latency);
        let tcp_timeout = raw.tcp_timeout.unwrap_or(defaults.tcp_timeout);
        if tcp_timeout < tcp_latency.crit {
            return Err(D::Error::custom(format!(
                "tcp_timeout {tcp_timeout} is below tcp_latency.crit {}: a connect slower than \
                 crit must still be measured",
                tcp_latency.crit
            )));
        }
        Ok(Health {
            interval: raw.interval.unwrap_or(defaults.interval),
            mounts,
            disk: raw.disk.unwrap_or(defaults.disk),
            inodes: raw.inodes.unwrap_or(defaults.inodes),
            memory: raw.memory.unwrap_or(defaults.memory),
            cpu: raw.cpu.unwrap_or(defaults.cpu),
            cpu_sample_interval: raw
                .cpu_sample_interval
                .unwrap_or(defaults.cpu_sample_interval),
            tcp_latency,
            tcp_timeout,
            clock_max_error: raw.clock_max_error.unwrap_or(defaults.clock_max_error),
            endpoints: raw.endpoints.unwrap_or_default(),
        })
    }
}

impl Health {
    /// What the checks (crate::health) are held to.
    pub fn checks(&self) -> crate::health::HealthSettings {
        crate::health::HealthSettings {
            mounts: self
                .mounts
                .iter()
                .map(|m| m.display().to_string())
                .collect(),
            disk: self.disk.thresholds(),
            inodes: self.inodes.thresholds(),
            memory: self.memory.thresholds(),
            cpu: self.cpu.thresholds(),
            cpu_sample_interval: self.cpu_sample_interval.0,
            endpoints: self
                .endpoints
                .iter()
                .map(|(n, a)| crate::health::Endpoint {
                    name: n.to_string(),
                    address: a.to_string(),
                })
                .collect(),
            tcp_latency_ms: crate::health::Thresholds {
                warn: self.tcp_latency.warn.0.as_secs_f64() * 1000.0,
                crit: self.tcp_latency.crit.0.as_secs_f64() * 1000.0,
            },
            tcp_timeout: self.tcp_timeout.0,
            clock_max_error: self.clock_max_error.0,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The file
// ---------------------------------------------------------------------------------------------

/// All settings. Every section may be left out: its defaults apply (packaging/agent.toml shows
/// them).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Settings {
    pub agent: Agent,
    pub enforce: Enforce,
    pub listen: Listen,
    /// Required when `listen.tcp` is set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<Tls>,
    pub roles: Roles,
    pub rpc: RpcLimits,
    pub units: Units,
    pub health: Health,
}

/// The file as written: each section validated on its own while parsing.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SettingsRaw {
    #[serde(default)]
    agent: Agent,
    #[serde(default)]
    enforce: Enforce,
    #[serde(default)]
    listen: ListenRaw,
    #[serde(default)]
    tls: Option<Tls>,
    #[serde(default)]
    roles: Roles,
    #[serde(default)]
    rpc: RpcLimits,
    #[serde(default)]
    units: Units,
    #[serde(default)]
    health: Health,
}

/// Whether two listeners would bind the same port (the same address, or a wildcard address
/// and any address of its family).
fn same_port(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port()
        && (a.ip() == b.ip()
            || (a.is_ipv4() == b.is_ipv4() && (a.ip().is_unspecified() || b.ip().is_unspecified())))
}

impl Settings {
    /// `NODE_AGENT_SETTINGS`, else /etc/node-agent/agent.toml.
    pub fn path_from_env() -> PathBuf {
        match std::env::var_os(SETTINGS_ENV) {
            Some(p) if !p.is_empty() => PathBuf::from(p),
            _ => PathBuf::from(DEFAULT_SETTINGS),
        }
    }

    /// Loads the settings; a missing file means the defaults unless `required` (the path was
    /// named explicitly). The daemon calls this again on SIGHUP and keeps its settings when it
    /// fails.
    pub fn load(path: &Path, required: bool) -> Result<Settings, SettingsError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                return Ok(Settings::default());
            }
            Err(source) => {
                return Err(SettingsError::Read {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        Settings::parse(&text).map_err(|e| SettingsError::Invalid {
            path: path.to_owned(),
            line: e.line,
            column: e.column,
            message: e.message,
        })
    }

    /// Parses and validates settings text; an error has the line, column and key.
    pub fn parse(text: &str) -> Result<Settings, Invalid> {
        let raw: SettingsRaw = tomlfile::parse(text)?;
        let at = |span: Range<usize>, message: String| {
            let (line, column) = tomlfile::line_col(text, span.start);
            Invalid {
                line,
                column,
                message,
            }
        };
        let tcp = raw.listen.tcp.as_ref();
        let metrics = raw.listen.metrics.as_ref();
        if let Some(tcp) = tcp
            && raw.tls.is_none()
        {
            return Err(at(
                tcp.span(),
                format!(
                    "listen.tcp: {} needs [tls] with cert, key and client_ca: there is no \
                     plaintext TCP listener",
                    tcp.get_ref()
                ),
            ));
        }
        if let (Some(tcp), Some(metrics)) = (tcp, metrics)
            && let Some(m) = metrics.get_ref().0
            && same_port(tcp.get_ref().0, m)
        {
            return Err(at(
                metrics.span(),
                format!(
                    "listen.metrics: {} and listen.tcp {} would bind the same port",
                    metrics.get_ref(),
                    tcp.get_ref()
                ),
            ));
        }
        let defaults = Listen::default();
        Ok(Settings {
            agent: raw.agent,
            enforce: raw.enforce,
            listen: Listen {
                socket: raw.listen.socket.map_or(defaults.socket, |s| s.0),
                socket_group: raw.listen.socket_group.unwrap_or(defaults.socket_group),
                tcp: tcp.map(|t| t.get_ref().0),
                metrics: metrics.map_or(defaults.metrics, |m| m.get_ref().0),
            },
            tls: raw.tls,
            roles: raw.roles,
            rpc: raw.rpc,
            units: raw.units,
            health: raw.health,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::Status;

    fn parse(text: &str) -> Result<Settings, String> {
        Settings::parse(text).map_err(|e| format!("{}:{}: {}", e.line, e.column, e.message))
    }

    /// The packaged agent.toml shows every default; its one documented difference is the
    /// profile the package starts the daemon with (docs/ARCHITECTURE.md, "Packages"), and
    /// that only in observe mode without apply_on_start.
    #[test]
    fn shipped_example_is_the_defaults() {
        let text = include_str!("../../packaging/agent.toml");
        let mut shipped = parse(text).unwrap();
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
    fn defaults_serialize_and_parse_back() {
        let text = toml::to_string(&Settings::default()).unwrap();
        assert_eq!(parse(&text).unwrap(), Settings::default(), "{text}");
    }

    #[test]
    fn defaults_are_the_manual() {
        let s = parse("").unwrap();
        let order: Vec<&str> = s.units.order.iter().map(UnitName::as_str).collect();
        assert_eq!(
            order,
            [
                "market-data.service",
                "risk-engine.service",
                "trading-engine.service",
                "order-gateway.service"
            ]
        );
        let gw: UnitName = "order-gateway".parse().unwrap();
        assert_eq!(s.units.stop_deadline(&gw), Duration::from_secs(30));
        let md: UnitName = "market-data".parse().unwrap();
        assert_eq!(s.units.stop_deadline(&md), Duration::from_secs(90));
        assert_eq!(s.agent.mode, Mode::Observe);
        assert!(!s.agent.apply_on_start);
        assert_eq!(s.agent.profile, None);
        assert_eq!(s.tls, None);
        assert_eq!(s.listen.tcp, None);
    }

    #[test]
    fn custom_units_and_errors() {
        let s = parse(
            "[units]\norder = [\"feed\", \"engine.service\"]\njob_timeout = \"2min\"\n\
             drain = { engine = \"45s\" }\n",
        )
        .unwrap();
        assert_eq!(s.units.order[0].as_str(), "feed.service");
        assert_eq!(s.units.job_timeout, Timeout(Duration::from_secs(120)));
        for (text, err) in [
            (
                "[units]\norder = [\"a\", \"a.service\"]\n",
                "1:1: units: unit a.service is listed twice in `order`",
            ),
            (
                "[units]\ndrain = { x = \"1s\" }\n",
                "1:1: units: drain names x.service, which is not in `order`",
            ),
            (
                "[units]\njob_timeout = \"soon\"\n",
                "2:15: units.job_timeout: invalid duration \"soon\": expected e.g. \"30s\", \"500ms\", \"2min\"",
            ),
            (
                "[units]\norder = [\"bad name\"]\n",
                "2:9: units.order: invalid unit name \"bad name\": letters, digits and \":-_.@\\\", with a type suffix such as .service",
            ),
            (
                "[unit]\n",
                "1:2: unknown section `unit`, expected one of `agent`, `enforce`, `listen`, \
                 `tls`, `roles`, `rpc`, `units`, `health`",
            ),
        ] {
            assert_eq!(parse(text).unwrap_err(), err, "{text}");
        }
    }

    #[test]
    fn durations() {
        let t = |s: &str| s.parse::<Timeout>().map(|t| t.0);
        assert_eq!(t("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(t("30"), Ok(Duration::from_secs(30)));
        assert_eq!(t("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(t("2min"), Ok(Duration::from_secs(120)));
        assert_eq!(t("1h"), Ok(Duration::from_secs(3600)));
        assert!(t("0s").unwrap_err().contains("must be above 0"));
        assert!(t("25h").unwrap_err().contains("at most 24h"));
        // Overflow is an error, not a panic.
        assert!(t("18446744073709551615h").is_err());
        for (d, shown) in [
            (Duration::from_secs(3600), "1h"),
            (Duration::from_secs(90), "90s"),
            (Duration::from_secs(120), "2min"),
            (Duration::from_millis(1500), "1500ms"),
            (Duration::ZERO, "0s"),
        ] {
            assert_eq!(show_duration(d), shown);
        }
        assert_eq!(show_bytes(64 << 10), "64 KiB (65536)");
        assert_eq!(show_bytes(4 << 20), "4 MiB (4194304)");
        assert_eq!(show_bytes(1000), "1000");
    }

    fn item(class: Class, key: &str) -> Item {
        Item::new(class, key, "x").status(Status::Drift)
    }

    fn targets(list: &[&str]) -> EnforceTargets {
        EnforceTargets::new(list.iter().map(|s| s.parse().unwrap()).collect()).unwrap()
    }

    /// Item keys as the knob classes write them (tuning/*.rs).
    fn report_items() -> Vec<Item> {
        [
            (Class::Sysctl, "net.core.somaxconn"),
            (Class::Sysctl, "net.ipv4.tcp_congestion_control"),
            (Class::Sysctl, "net.ipv4.conf.eth0/100.rp_filter"),
            (Class::Sysctl, "vm.swappiness"),
            (Class::Cpu, "cpu.3.governor"),
            (Class::Cpu, "cpu.12.governor"),
            (Class::Cpu, "cpu.3.idle.state2.disable"),
            (Class::Cpu, "cpu.governor"),
            (Class::Cpu, "cpu.boost"),
            (Class::Cpu, "cpu.pm_qos_latency_us"),
            (Class::Memory, "memory.transparent_hugepage.enabled"),
            (Class::Memory, "memory.transparent_hugepage.defrag"),
            (Class::Memory, "memory.swap"),
            (Class::Memory, "memory.ksm"),
            (Class::Memory, "memory.hugepages.2M"),
            (Class::Memory, "memory.hugepages.1G"),
            (Class::Block, "block.nvme0n1.scheduler"),
            (Class::Block, "block.nvme0n1.read_ahead_kb"),
            (Class::Block, "block.sda.scheduler"),
            (Class::Limits, "limits.*.nofile.soft"),
            (Class::Mount, "mount./data.options"),
            (Class::Clocksource, "clocksource.current"),
            (Class::Isolation, "isolation.systemd.cpu_affinity"),
            (Class::Units, "units.trading-engine.service.LimitNOFILE"),
            (Class::Cmdline, "cmdline.isolcpus"),
        ]
        .iter()
        .map(|(c, k)| item(*c, k))
        .collect()
    }

    /// The keys of `report_items()` that `list` covers.
    fn covered(list: &[&str]) -> Vec<String> {
        let t = targets(list);
        report_items()
            .into_iter()
            .filter(|i| t.covers(i))
            .map(|i| i.key)
            .collect()
    }

    #[test]
    fn default_targets_cover_thp_but_not_swap() {
        let t = EnforceTargets::default();
        assert_eq!(
            t,
            targets(&["sysctl", "cpu", "memory.transparent_hugepage", "block"])
        );
        let got: Vec<String> = report_items()
            .into_iter()
            .filter(|i| t.covers(i))
            .map(|i| i.key)
            .collect();
        assert_eq!(
            got,
            [
                "net.core.somaxconn",
                "net.ipv4.tcp_congestion_control",
                "net.ipv4.conf.eth0/100.rp_filter",
                "vm.swappiness",
                "cpu.3.governor",
                "cpu.12.governor",
                "cpu.3.idle.state2.disable",
                "cpu.governor",
                "cpu.boost",
                "cpu.pm_qos_latency_us",
                "memory.transparent_hugepage.enabled",
                "memory.transparent_hugepage.defrag",
                "block.nvme0n1.scheduler",
                "block.nvme0n1.read_ahead_kb",
                "block.sda.scheduler",
            ]
        );
        assert_eq!(
            t.classes(),
            [Class::Sysctl, Class::Cpu, Class::Memory, Class::Block]
        );
    }

    #[test]
    fn selectors_match_on_component_boundaries() {
        // A prefix ends on a '.': cpu.1 is CPU 1, not CPU 12.
        assert_eq!(covered(&["cpu.1"]), Vec::<String>::new());
        assert_eq!(
            covered(&["cpu.3"]),
            ["cpu.3.governor", "cpu.3.idle.state2.disable"]
        );
        assert_eq!(covered(&["cpu.3.governor"]), ["cpu.3.governor"]);
        // '*' is one whole component.
        assert_eq!(
            covered(&["cpu.*.governor"]),
            ["cpu.3.governor", "cpu.12.governor"]
        );
        // Sysctl keys get their class in front.
        assert_eq!(
            covered(&["sysctl.net.ipv4"]),
            [
                "net.ipv4.tcp_congestion_control",
                "net.ipv4.conf.eth0/100.rp_filter"
            ]
        );
        assert_eq!(covered(&["sysctl.vm.swappiness"]), ["vm.swappiness"]);
        assert_eq!(covered(&["sysctl.net.ipv"]), Vec::<String>::new());
        assert_eq!(
            covered(&["memory.transparent_hugepage.enabled"]),
            ["memory.transparent_hugepage.enabled"]
        );
        assert_eq!(
            covered(&["memory.hugepages"]),
            ["memory.hugepages.2M", "memory.hugepages.1G"]
        );
        assert_eq!(
            covered(&["block.nvme0n1"]),
            ["block.nvme0n1.scheduler", "block.nvme0n1.read_ahead_kb"]
        );
        assert_eq!(covered(&["mount./data"]), ["mount./data.options"]);
        assert_eq!(
            covered(&["mount", "units", "isolation", "clocksource", "limits"]),
            [
                "limits.*.nofile.soft",
                "mount./data.options",
                "clocksource.current",
                "isolation.systemd.cpu_affinity",
                "units.trading-engine.service.LimitNOFILE",
            ]
        );
        // A class never covers another class's items, whatever the key says.
        assert!(!targets(&["memory"]).covers(&item(Class::Sysctl, "memory.swap")));
    }

    #[test]
    fn swap_is_covered_only_by_name() {
        let memory = [
            "memory.transparent_hugepage.enabled",
            "memory.transparent_hugepage.defrag",
            "memory.ksm",
            "memory.hugepages.2M",
            "memory.hugepages.1G",
        ];
        assert_eq!(covered(&["memory"]), memory);
        assert_eq!(covered(&["memory.*"]), memory);
        assert_eq!(covered(&["memory.swap"]), ["memory.swap"]);
        let mut all = covered(&["memory", "memory.swap"]);
        all.sort();
        let mut want: Vec<&str> = memory.to_vec();
        want.push("memory.swap");
        want.sort();
        assert_eq!(all, want);
    }

    #[test]
    fn selector_errors() {
        let err = |s: &str| s.parse::<Selector>().unwrap_err();
        assert_eq!(
            err("sysctls"),
            "unknown enforce target \"sysctls\": expected a class (sysctl, cpu, memory, block, \
             limits, mount, clocksource, isolation, units) or a key prefix within one, such as \
             memory.transparent_hugepage"
        );
        assert_eq!(
            err("cmdline"),
            "enforce target \"cmdline\" is not allowed: the kernel command line changes only \
             with `agentctl isolation bootloader --write` and a reboot"
        );
        assert!(err("cmdline.isolcpus").contains("is not allowed"));
        assert_eq!(
            err("memory.thp"),
            "unknown enforce target \"memory.thp\": memory items are \
             memory.transparent_hugepage, memory.swap, memory.ksm, memory.hugepages"
        );
        assert_eq!(
            err("cpu..governor"),
            "invalid enforce target \"cpu..governor\": empty component"
        );
        assert_eq!(
            err("memory."),
            "invalid enforce target \"memory.\": empty component"
        );
        assert_eq!(
            err("cpu.1*"),
            "invalid enforce target \"cpu.1*\": '*' stands for a whole component"
        );
        assert_eq!(
            err("*"),
            "unknown enforce target \"*\": expected a class (sysctl, cpu, memory, block, limits, \
             mount, clocksource, isolation, units) or a key prefix within one, such as \
             memory.transparent_hugepage"
        );
        assert!(err("cpu.3 ").contains("spaces"));
        for good in [
            "cpu",
            "cpu.*.governor",
            "sysctl.net.ipv4",
            "mount./data",
            "memory.*",
        ] {
            let s: Selector = good.parse().unwrap();
            assert_eq!(s.to_string(), good);
        }
    }

    #[test]
    fn duplicate_and_redundant_targets() {
        let new =
            |list: &[&str]| EnforceTargets::new(list.iter().map(|s| s.parse().unwrap()).collect());
        assert_eq!(
            new(&["cpu", "block", "cpu"]).unwrap_err(),
            "cpu is listed twice"
        );
        assert_eq!(
            new(&["memory.transparent_hugepage.enabled", "memory"]).unwrap_err(),
            "memory.transparent_hugepage.enabled is already covered by memory"
        );
        assert_eq!(
            new(&["cpu.*", "cpu"]).unwrap_err(),
            "cpu.* is already covered by cpu"
        );
        assert_eq!(
            new(&["cpu.*.governor", "cpu.3.governor"]).unwrap_err(),
            "cpu.3.governor is already covered by cpu.*.governor"
        );
        // Overlapping but neither covers the other; swap is not covered by `memory`.
        assert!(new(&["cpu.*.governor", "cpu.3"]).is_ok());
        assert!(new(&["memory", "memory.swap"]).is_ok());
        assert!(new(&["memory.*", "memory.swap"]).is_ok());
        assert!(new(&[]).is_ok());
    }

    #[test]
    fn every_class_is_listed() {
        // Exhaustive: a new class fails to compile here until CLASSES has it.
        let position = |c: Class| match c {
            Class::Sysctl => 0,
            Class::Cpu => 1,
            Class::Memory => 2,
            Class::Block => 3,
            Class::Limits => 4,
            Class::Mount => 5,
            Class::Clocksource => 6,
            Class::Isolation => 7,
            Class::Units => 8,
            Class::Cmdline => 9,
        };
        for (i, c) in CLASSES.iter().enumerate() {
            assert_eq!(position(*c), i, "{c:?}");
            // Selectors use the names the report uses.
            let named = format!("{:?}", c.as_str());
            assert_eq!(serde_json::from_str::<Class>(&named).unwrap(), *c);
        }
    }

    #[test]
    fn names_and_addresses() {
        assert!("node-agent-admin".parse::<GroupName>().is_ok());
        assert!("_ops".parse::<GroupName>().is_ok());
        for bad in ["", "1ops", "ops team", "a:b", &"g".repeat(33)] {
            assert!(bad.parse::<GroupName>().is_err(), "{bad:?}");
        }
        assert!("collector.example.net".parse::<CommonName>().is_ok());
        for bad in ["", " x", "x ", "a\tb", &"c".repeat(65)] {
            assert!(bad.parse::<CommonName>().is_err(), "{bad:?}");
        }
        assert!("0.0.0.0:9443".parse::<ListenAddr>().is_ok());
        assert!("[::1]:9443".parse::<ListenAddr>().is_ok());
        for bad in ["localhost:9443", "0.0.0.0", "0.0.0.0:0", ":9443"] {
            assert!(bad.parse::<ListenAddr>().is_err(), "{bad:?}");
        }
        let sa = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(same_port(sa("0.0.0.0:1"), sa("127.0.0.1:1")));
        assert!(same_port(sa("[::1]:1"), sa("[::1]:1")));
        assert!(!same_port(sa("0.0.0.0:1"), sa("[::1]:1")));
        assert!(!same_port(sa("127.0.0.1:1"), sa("127.0.0.2:1")));
        assert!(!same_port(sa("0.0.0.0:1"), sa("0.0.0.0:2")));
        assert_eq!(
            "trading-latency".parse::<ProfileSpec>().unwrap(),
            ProfileSpec::Name("trading-latency".parse().unwrap())
        );
        assert_eq!(
            "/etc/node-agent/profiles/host.toml"
                .parse::<ProfileSpec>()
                .unwrap(),
            ProfileSpec::Path("/etc/node-agent/profiles/host.toml".into())
        );
        assert!("host.toml".parse::<ProfileSpec>().is_err());
    }

    #[test]
    fn roles() {
        let r = parse("[roles]\nobservers = [\"c\"]\noperators = [\"o\"]\n")
            .unwrap()
            .roles;
        assert_eq!(r.role_of("c"), Some(Role::Observer));
        assert_eq!(r.role_of("o"), Some(Role::Operator));
        assert_eq!(r.role_of("C"), None, "exact match");
        assert_eq!(r.role_of(""), None);
    }
}
