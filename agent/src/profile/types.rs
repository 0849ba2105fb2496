//! Validated values at the profile boundary. Each type parses from the profile's text, rejects
//! anything the kernel would not accept (or that could escape the intended path), and prints
//! back in its canonical form. Code that reads or writes host state only ever sees these.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Implements serde via `FromStr`/`Display` so a bad value fails *during* TOML parsing, where
/// the parser knows its line and column.
macro_rules! serde_via_str {
    ($t:ty, $($expecting:tt)+) => {
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl serde::de::Visitor<'_> for V {
                    type Value = $t;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        write!(f, $($expecting)+)
                    }
                    fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<$t, E> {
                        s.parse().map_err(E::custom)
                    }
                }
                d.deserialize_str(V)
            }
        }
        impl Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
    };
}
pub(crate) use serde_via_str;

/// A sysctl key as sysctl(8) and sysctl.d(5) write it: dotted (`net.ipv4.conf.eth0/100.rp_filter`,
/// where `/` stands for a `.` inside a component) or slash form (`net/ipv4/conf/eth0.100/rp_filter`).
/// Stored as its path components under /proc/sys.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SysctlKey {
    components: Vec<String>,
}

impl SysctlKey {
    /// Parses without validation of the components; used for keys read from sysctl.d files,
    /// which may hold globs (`net.ipv4.conf.*.rp_filter`).
    pub fn split(s: &str) -> Vec<String> {
        // systemd's sysctl_normalize(): if the first separator is a slash, the key is already in
        // path form; otherwise dots separate and slashes stand for dots.
        let slash_form = s.find(['.', '/']).is_some_and(|i| s.as_bytes()[i] == b'/');
        if slash_form {
            s.split('/').map(str::to_owned).collect()
        } else {
            s.split('.').map(|c| c.replace('/', ".")).collect()
        }
    }

    pub fn components(&self) -> &[String] {
        &self.components
    }

    /// The kernel file: `/proc/sys/<components joined by '/'>`.
    pub fn proc_path(&self) -> String {
        let mut p = String::from("/proc/sys");
        for c in &self.components {
            p.push('/');
            p.push_str(c);
        }
        p
    }
}

impl FromStr for SysctlKey {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Err("empty sysctl key".into());
        }
        if let Some(c) = s
            .chars()
            .find(|c| c.is_whitespace() || c.is_control() || matches!(c, '*' | '?' | '[' | '='))
        {
            return Err(format!(
                "invalid sysctl key {s:?}: character {c:?} is not allowed"
            ));
        }
        let components = SysctlKey::split(s.strip_prefix('/').unwrap_or(s));
        for c in &components {
            if c.is_empty() {
                return Err(format!("invalid sysctl key {s:?}: empty component"));
            }
            if c == "." || c == ".." {
                return Err(format!(
                    "invalid sysctl key {s:?}: component {c:?} is not allowed"
                ));
            }
        }
        Ok(SysctlKey { components })
    }
}

impl fmt::Display for SysctlKey {
    /// The dotted form, with `/` for a dot inside a component, as `sysctl -a` prints it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, c) in self.components.iter().enumerate() {
            if i > 0 {
                f.write_str(".")?;
            }
            f.write_str(&c.replace('.', "/"))?;
        }
        Ok(())
    }
}
serde_via_str!(SysctlKey, "a sysctl key such as \"net.core.somaxconn\"");

/// Largest CPU number accepted in a list: Linux's NR_CPUS ceiling.
const MAX_CPU: u32 = 8191;

/// A set of CPUs in the kernel's list syntax: `0-3,8,10-11`. Printed in compact form.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CpuList(BTreeSet<u32>);

impl CpuList {
    /// Parses the kernel's own files (`online`, `isolated`), where an empty set is legal.
    pub fn parse_kernel(s: &str) -> Result<CpuList, String> {
        if s.trim().is_empty() {
            return Ok(CpuList::default());
        }
        s.parse()
    }

    pub fn contains(&self, cpu: u32) -> bool {
        self.0.contains(&cpu)
    }

    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.0.iter().copied()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_subset(&self, other: &CpuList) -> bool {
        self.0.is_subset(&other.0)
    }

    /// Parses a kernel CPU mask (`default_smp_affinity`, workqueue `cpumask`): hex, most
    /// significant 32-bit group first, groups separated by commas (`ff,ffffffff`).
    pub fn parse_mask(s: &str) -> Result<CpuList, String> {
        let s = s.trim();
        let groups: Vec<&str> = s.split(',').collect();
        if s.is_empty() || groups.iter().any(|g| g.is_empty() || g.len() > 8) {
            return Err(format!("invalid CPU mask {s:?}"));
        }
        let mut set = BTreeSet::new();
        for (i, g) in groups.iter().rev().enumerate() {
            let bits = u32::from_str_radix(g, 16).map_err(|_| format!("invalid CPU mask {s:?}"))?;
            let base = u32::try_from(i * 32).map_err(|_| format!("CPU mask {s:?} too long"))?;
            set.extend((0..32).filter(|b| bits & (1 << b) != 0).map(|b| base + b));
        }
        Ok(CpuList(set))
    }

    /// The kernel's mask format for a machine with `nr_cpus` possible CPUs (as `%*pb` prints
    /// it: the first group as wide as the remaining bits need, the others 8 digits).
    pub fn to_mask(&self, nr_cpus: u32) -> String {
        let nr = nr_cpus.max(self.0.last().map_or(1, |c| c + 1));
        let groups = nr.div_ceil(32);
        let mut out = String::new();
        for g in (0..groups).rev() {
            let bits = self
                .iter()
                .filter(|c| c / 32 == g)
                .fold(0u32, |acc, c| acc | (1 << (c % 32)));
            if g == groups - 1 {
                let width = ((nr - g * 32) as usize).div_ceil(4);
                out.push_str(&format!("{bits:0width$x}"));
            } else {
                out.push_str(&format!(",{bits:08x}"));
            }
        }
        out
    }
}

impl FromIterator<u32> for CpuList {
    fn from_iter<I: IntoIterator<Item = u32>>(iter: I) -> Self {
        CpuList(iter.into_iter().collect())
    }
}

impl FromStr for CpuList {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err("empty CPU list".into());
        }
        let num = |t: &str| -> Result<u32, String> {
            let n: u32 = t
                .trim()
                .parse()
                .map_err(|_| format!("invalid CPU list {s:?}: {t:?} is not a CPU number"))?;
            if n > MAX_CPU {
                return Err(format!("invalid CPU list {s:?}: CPU {n} exceeds {MAX_CPU}"));
            }
            Ok(n)
        };
        let mut set = BTreeSet::new();
        for part in s.split(',') {
            match part.split_once('-') {
                Some((a, b)) => {
                    let (a, b) = (num(a)?, num(b)?);
                    if a > b {
                        return Err(format!("invalid CPU list {s:?}: range {a}-{b} is reversed"));
                    }
                    set.extend(a..=b);
                }
                None => {
                    set.insert(num(part)?);
                }
            }
        }
        Ok(CpuList(set))
    }
}

impl fmt::Display for CpuList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        let mut iter = self.0.iter().copied().peekable();
        while let Some(start) = iter.next() {
            let mut end = start;
            while iter.peek() == Some(&(end + 1)) {
                end += 1;
                iter.next();
            }
            if !first {
                f.write_str(",")?;
            }
            first = false;
            if start == end {
                write!(f, "{start}")?;
            } else {
                write!(f, "{start}-{end}")?;
            }
        }
        Ok(())
    }
}
serde_via_str!(CpuList, "a CPU list such as \"0-3,8\"");

/// Defines a string enum with a fixed set of kernel spellings.
macro_rules! kernel_words {
    ($(#[$m:meta])* $name:ident, $what:literal, { $($variant:ident => $word:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [&'static str] = &[$($word),+];
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $word),+ }
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($word => Ok($name::$variant),)+
                    _ => Err(format!(
                        "invalid {} {s:?}: expected one of {}",
                        $what,
                        Self::ALL.join(", ")
                    )),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
        // A wrong type (`governor = 1`) names the accepted words, quoted: they are strings.
        serde_via_str!($name, "{}", quoted_choices($name::ALL));
    };
}

/// `one of "a", "b"`, or `"a"` when there is only one.
fn quoted_choices(words: &[&str]) -> String {
    let quoted: Vec<String> = words.iter().map(|w| format!("{w:?}")).collect();
    match quoted.as_slice() {
        [one] => one.clone(),
        _ => format!("one of {}", quoted.join(", ")),
    }
}

kernel_words!(
    /// cpufreq scaling governors (scaling_available_governors on current kernels).
    Governor, "governor", {
        Performance => "performance",
        Powersave => "powersave",
        Schedutil => "schedutil",
        Ondemand => "ondemand",
        Conservative => "conservative",
        Userspace => "userspace",
    }
);

kernel_words!(
    /// blk-mq I/O schedulers.
    IoScheduler, "I/O scheduler", {
        None => "none",
        MqDeadline => "mq-deadline",
        Kyber => "kyber",
        Bfq => "bfq",
    }
);

kernel_words!(
    /// /sys/kernel/mm/transparent_hugepage/enabled
    ThpEnabled, "transparent_hugepage mode", {
        Always => "always",
        Madvise => "madvise",
        Never => "never",
    }
);

kernel_words!(
    /// /sys/kernel/mm/transparent_hugepage/defrag
    ThpDefrag, "transparent_hugepage_defrag mode", {
        Always => "always",
        Defer => "defer",
        DeferMadvise => "defer+madvise",
        Madvise => "madvise",
        Never => "never",
    }
);

kernel_words!(
    /// cpufreq energy_performance_preference (intel_pstate and amd-pstate in active mode).
    EnergyPerfPreference, "energy_performance_preference", {
        Default => "default",
        Performance => "performance",
        BalancePerformance => "balance_performance",
        BalancePower => "balance_power",
        Power => "power",
    }
);

kernel_words!(
    /// Desired swap state. Only `off` is a tuning goal; the word keeps room for more.
    SwapState, "swap state", {
        Off => "off",
    }
);

kernel_words!(
    /// Kernel samepage merging: /sys/kernel/mm/ksm/run (0 = stop, 1 = run).
    KsmState, "ksm state", {
        Off => "off",
        On => "on",
    }
);

kernel_words!(
    /// Resource names of limits.conf(5).
    LimitItem, "limits item", {
        Core => "core",
        Data => "data",
        Fsize => "fsize",
        Memlock => "memlock",
        Nofile => "nofile",
        Rss => "rss",
        Stack => "stack",
        Cpu => "cpu",
        Nproc => "nproc",
        As => "as",
        Maxlogins => "maxlogins",
        Maxsyslogins => "maxsyslogins",
        Nonewprivs => "nonewprivs",
        Priority => "priority",
        Locks => "locks",
        Sigpending => "sigpending",
        Msgqueue => "msgqueue",
        Nice => "nice",
        Rtprio => "rtprio",
    }
);

/// energy_perf_bias: 0 (performance) to 15 (power saving). Names as x86_energy_perf_policy and
/// TuneD use them are accepted and mapped to the kernel's numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnergyPerfBias(pub u8);

impl FromStr for EnergyPerfBias {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let n = match s {
            "performance" => 0,
            "balance-performance" => 4,
            "normal" => 6,
            "balance-power" => 8,
            "power" | "powersave" => 15,
            _ => s.parse::<u8>().ok().filter(|n| *n <= 15).ok_or_else(|| {
                format!(
                    "invalid energy_perf_bias {s:?}: expected 0-15 or one of performance, \
                     balance-performance, normal, balance-power, power"
                )
            })?,
        };
        Ok(EnergyPerfBias(n))
    }
}

impl fmt::Display for EnergyPerfBias {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl<'de> Deserialize<'de> for EnergyPerfBias {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        int_or_str(
            d,
            "energy_perf_bias: 0-15 or a name such as \"performance\"",
        )
    }
}

impl Serialize for EnergyPerfBias {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u8(self.0)
    }
}

/// Deserializes a type that parses from text, accepting TOML integers too.
fn int_or_str<'de, D, T>(d: D, expecting: &'static str) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: FromStr<Err = String>,
{
    struct V<T>(&'static str, std::marker::PhantomData<T>);
    impl<T: FromStr<Err = String>> serde::de::Visitor<'_> for V<T> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
        fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<T, E> {
            s.parse().map_err(E::custom)
        }
        fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<T, E> {
            n.to_string().parse().map_err(E::custom)
        }
        fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<T, E> {
            n.to_string().parse().map_err(E::custom)
        }
    }
    d.deserialize_any(V(expecting, std::marker::PhantomData))
}

/// A CPU frequency in kHz, as cpufreq's scaling_{min,max}_freq hold it. Written in a profile as
/// an integer (kHz) or a string with a unit: "3.2GHz", "2400MHz", "800000kHz"; or "min"/"max"
/// for the hardware limits (cpuinfo_min_freq / cpuinfo_max_freq).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frequency {
    Khz(u64),
    HardwareMin,
    HardwareMax,
}

impl FromStr for Frequency {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "invalid frequency {s:?}: expected kHz as an integer, a number with GHz, MHz or \
                 kHz, or \"min\"/\"max\""
            )
        };
        match s {
            "min" => return Ok(Frequency::HardwareMin),
            "max" => return Ok(Frequency::HardwareMax),
            _ => {}
        }
        let lower = s.trim().to_ascii_lowercase();
        let (num, scale) = if let Some(n) = lower.strip_suffix("ghz") {
            (n, 1_000_000.0)
        } else if let Some(n) = lower.strip_suffix("mhz") {
            (n, 1_000.0)
        } else if let Some(n) = lower.strip_suffix("khz") {
            (n, 1.0)
        } else {
            (lower.as_str(), 1.0)
        };
        let value: f64 = num.trim().parse().map_err(|_| bad())?;
        if !value.is_finite() || value <= 0.0 || value * scale > 100_000_000.0 {
            return Err(bad());
        }
        Ok(Frequency::Khz((value * scale).round() as u64))
    }
}

impl fmt::Display for Frequency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Frequency::Khz(k) => write!(f, "{k}"),
            Frequency::HardwareMin => f.write_str("min"),
            Frequency::HardwareMax => f.write_str("max"),
        }
    }
}

impl<'de> Deserialize<'de> for Frequency {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        int_or_str(
            d,
            "a frequency: kHz, \"3.2GHz\", \"2400MHz\", \"min\" or \"max\"",
        )
    }
}

impl Serialize for Frequency {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Frequency::Khz(k) => s.serialize_u64(*k),
            other => s.collect_str(other),
        }
    }
}

/// A huge page size as /sys/kernel/mm/hugepages names it, written "2M", "1G" or "2048kB".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HugepageSize {
    pub kb: u64,
}

impl HugepageSize {
    /// The sysfs directory name: `hugepages-2048kB`.
    pub fn dir_name(&self) -> String {
        format!("hugepages-{}kB", self.kb)
    }
}

impl FromStr for HugepageSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad =
            || format!("invalid huge page size {s:?}: expected e.g. \"2M\", \"1G\", \"2048kB\"");
        let (num, mult) = if let Some(n) = s.strip_suffix("kB").or_else(|| s.strip_suffix("K")) {
            (n, 1)
        } else if let Some(n) = s.strip_suffix("M") {
            (n, 1024)
        } else if let Some(n) = s.strip_suffix("G") {
            (n, 1024 * 1024)
        } else {
            return Err(bad());
        };
        let n: u64 = num.parse().map_err(|_| bad())?;
        let kb = n.checked_mul(mult).filter(|kb| *kb > 0).ok_or_else(bad)?;
        if !kb.is_power_of_two() {
            return Err(format!("invalid huge page size {s:?}: not a power of two"));
        }
        Ok(HugepageSize { kb })
    }
}

impl fmt::Display for HugepageSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kb {
            kb if kb % (1024 * 1024) == 0 => write!(f, "{}G", kb / (1024 * 1024)),
            kb if kb % 1024 == 0 => write!(f, "{}M", kb / 1024),
            kb => write!(f, "{kb}kB"),
        }
    }
}
serde_via_str!(HugepageSize, "a huge page size such as \"2M\" or \"1G\"");

/// A glob over the names in /sys/block (`nvme*`, `sd[a-d]`, `vda`). Cannot contain `/`, so it
/// cannot name anything outside /sys/block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceGlob {
    text: String,
    pattern: glob::Pattern,
}

impl DeviceGlob {
    pub fn matches(&self, name: &str) -> bool {
        self.pattern.matches(name)
    }
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl FromStr for DeviceGlob {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.is_empty() || s.contains('/') || s == "." || s == ".." {
            return Err(format!(
                "invalid device glob {s:?}: a name or glob over /sys/block, without '/'"
            ));
        }
        let pattern =
            glob::Pattern::new(s).map_err(|e| format!("invalid device glob {s:?}: {}", e.msg))?;
        Ok(DeviceGlob {
            text: s.to_owned(),
            pattern,
        })
    }
}

impl fmt::Display for DeviceGlob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}
serde_via_str!(DeviceGlob, "a device glob such as \"nvme*\"");

/// An absolute, normalised mount point path (no `.`/`..`, no trailing slash, no `//`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MountPath(String);

impl MountPath {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for MountPath {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("invalid mount path {s:?}: {why}");
        if !s.starts_with('/') {
            return Err(bad("must be absolute"));
        }
        if s.chars().any(|c| c.is_control()) {
            return Err(bad("control characters are not allowed"));
        }
        if s != "/" {
            if s.ends_with('/') {
                return Err(bad("remove the trailing '/'"));
            }
            if s[1..]
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == "..")
            {
                return Err(bad("empty, '.' and '..' components are not allowed"));
            }
        }
        Ok(MountPath(s.to_owned()))
    }
}

impl fmt::Display for MountPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
serde_via_str!(MountPath, "an absolute mount point path such as \"/data\"");

/// One mount option as mount(8) writes it: `noatime`, `commit=60`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MountOption(String);

impl MountOption {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for MountOption {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.is_empty()
            || s.chars()
                .any(|c| c == ',' || c.is_whitespace() || c.is_control())
        {
            return Err(format!(
                "invalid mount option {s:?}: one option per string, without ',' or spaces"
            ));
        }
        Ok(MountOption(s.to_owned()))
    }
}

impl fmt::Display for MountOption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
serde_via_str!(MountOption, "a mount option such as \"noatime\"");

/// A limits.conf(5) domain: `*`, a user, `@group`, `%group`, or a uid/gid range such as
/// `1000:`, `:999`, `1000:2000`, `@500:`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LimitDomain(String);

impl LimitDomain {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for LimitDomain {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '$');
        let body = s
            .strip_prefix('@')
            .or_else(|| s.strip_prefix('%'))
            .unwrap_or(s);
        let valid = s == "*"
            || (!body.is_empty()
                && (body.chars().all(ok_char)
                    || (body.contains(':')
                        && body
                            .splitn(2, ':')
                            .all(|p| p.chars().all(|c| c.is_ascii_digit()))
                        && body != ":")));
        if !valid {
            return Err(format!(
                "invalid limits domain {s:?}: expected \"*\", a user, \"@group\", \"%group\" or \
                 a uid range such as \"1000:\""
            ));
        }
        Ok(LimitDomain(s.to_owned()))
    }
}

impl fmt::Display for LimitDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
serde_via_str!(LimitDomain, "a limits domain such as \"*\" or \"@trading\"");

/// A limits.conf(5) value: a number, or `unlimited` (also spelled `infinity` or -1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitValue {
    Number(i64),
    Unlimited,
}

impl FromStr for LimitValue {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "unlimited" | "infinity" | "-1" => Ok(LimitValue::Unlimited),
            _ => s
                .parse::<i64>()
                .ok()
                .filter(|n| *n >= -20)
                .map(LimitValue::Number)
                .ok_or_else(|| {
                    format!("invalid limit value {s:?}: expected a number or \"unlimited\"")
                }),
        }
    }
}

impl fmt::Display for LimitValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LimitValue::Number(n) => write!(f, "{n}"),
            LimitValue::Unlimited => f.write_str("unlimited"),
        }
    }
}

impl<'de> Deserialize<'de> for LimitValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        int_or_str(d, "a limit: a number or \"unlimited\"")
    }
}

impl Serialize for LimitValue {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            LimitValue::Number(n) => s.serialize_i64(*n),
            LimitValue::Unlimited => s.serialize_str("unlimited"),
        }
    }
}

/// A clocksource name as /sys/devices/system/clocksource lists them (`tsc`, `hpet`, `kvm-clock`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClocksourceName(String);

impl ClocksourceName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for ClocksourceName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.is_empty()
            || !s
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(format!(
                "invalid clocksource {s:?}: expected a name such as \"tsc\" or \"kvm-clock\""
            ));
        }
        Ok(ClocksourceName(s.to_owned()))
    }
}

impl fmt::Display for ClocksourceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
serde_via_str!(ClocksourceName, "a clocksource name such as \"tsc\"");

/// A profile name: what `--profile NAME` looks up as NAME.toml.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileName(String);

impl ProfileName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for ProfileName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let valid = !s.is_empty()
            && s.len() <= 64
            && s.starts_with(|c: char| c.is_ascii_alphanumeric())
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !valid {
            return Err(format!(
                "invalid profile name {s:?}: 1-64 characters of letters, digits, '-', '_', '.', \
                 starting with a letter or digit"
            ));
        }
        Ok(ProfileName(s.to_owned()))
    }
}

impl fmt::Display for ProfileName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
serde_via_str!(ProfileName, "a profile name such as \"trading-latency\"");

/// A systemd unit name: `trading-engine.service`. A name without a unit type suffix means a
/// service (`trading-engine` → `trading-engine.service`), as systemctl reads it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UnitName(String);

const UNIT_SUFFIXES: [&str; 11] = [
    "service",
    "socket",
    "target",
    "timer",
    "mount",
    "automount",
    "path",
    "slice",
    "scope",
    "swap",
    "device",
];

impl UnitName {
    /// A name written in this source (the defaults), already valid.
    pub(crate) fn known(name: &str) -> UnitName {
        UnitName(name.to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for UnitName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let name = match s.rsplit_once('.') {
            Some((_, suffix)) if UNIT_SUFFIXES.contains(&suffix) => s.to_owned(),
            _ => format!("{s}.service"),
        };
        let stem = name.rsplit_once('.').map_or("", |(stem, _)| stem);
        let valid = !stem.is_empty()
            && name.len() <= 255
            && !stem.starts_with('-')
            && stem.chars().all(|c| {
                c.is_ascii_alphanumeric() || matches!(c, ':' | '-' | '_' | '.' | '@' | '\\')
            });
        if !valid {
            return Err(format!(
                "invalid unit name {s:?}: letters, digits and \":-_.@\\\", with a type suffix such \
                 as .service"
            ));
        }
        Ok(UnitName(name))
    }
}

impl fmt::Display for UnitName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for UnitName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl Serialize for UnitName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_masks_in_the_kernel_format() {
        let l = |s: &str| s.parse::<CpuList>().unwrap();
        // The kernel prints 2 CPUs as `3`, 16 as `ffff`, 40 as `ff,ffffffff`.
        assert_eq!(l("0-1").to_mask(2), "3");
        assert_eq!(l("0").to_mask(2), "1");
        assert_eq!(l("0-1").to_mask(16), "0003");
        assert_eq!(l("0-39").to_mask(40), "ff,ffffffff");
        assert_eq!(l("0,33").to_mask(64), "00000002,00000001");
        for (mask, list) in [
            ("3", "0-1"),
            ("0003", "0-1"),
            ("ff,ffffffff", "0-39"),
            ("00000002,00000001\n", "0,33"),
        ] {
            assert_eq!(CpuList::parse_mask(mask).unwrap(), l(list));
        }
        assert_eq!(CpuList::parse_mask("0").unwrap(), CpuList::default());
        for bad in ["", "xyz", "1,,2", "123456789"] {
            assert!(CpuList::parse_mask(bad).is_err(), "{bad:?}");
        }
        assert!(l("2-3").is_subset(&l("0-15")));
        assert!(!l("1-2").is_subset(&l("2-15")));
    }

    #[test]
    fn sysctl_key_forms() {
        let k: SysctlKey = "net.ipv4.conf.eth0/100.rp_filter".parse().unwrap();
        assert_eq!(
            k.components(),
            ["net", "ipv4", "conf", "eth0.100", "rp_filter"]
        );
        assert_eq!(k.proc_path(), "/proc/sys/net/ipv4/conf/eth0.100/rp_filter");
        assert_eq!(k.to_string(), "net.ipv4.conf.eth0/100.rp_filter");
        let slash: SysctlKey = "net/ipv4/conf/eth0.100/rp_filter".parse().unwrap();
        assert_eq!(slash, k);
        let slash_abs: SysctlKey = "/net/core/somaxconn".parse().unwrap();
        assert_eq!(slash_abs.to_string(), "net.core.somaxconn");
    }

    #[test]
    fn sysctl_key_rejects() {
        for (bad, why) in [
            ("", "empty sysctl key"),
            ("net..core", "empty component"),
            ("net.core.", "empty component"),
            (".net.core", "empty component"),
            ("net/../../etc/shadow", "component \"..\" is not allowed"),
            ("net.core/..", "empty component"),
            ("net/./core", "component \".\" is not allowed"),
            ("net.core.some maxconn", "character ' ' is not allowed"),
            ("net.ipv4.conf.*.rp_filter", "character '*' is not allowed"),
        ] {
            let err = bad.parse::<SysctlKey>().unwrap_err();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
    }

    #[test]
    fn cpu_list_round_trip_and_errors() {
        let l: CpuList = "8,0-3, 10-11,2".parse().unwrap();
        assert_eq!(l.to_string(), "0-3,8,10-11");
        assert_eq!(l.len(), 7);
        assert!(CpuList::parse_kernel("\n").unwrap().is_empty());
        for (bad, why) in [
            ("", "empty CPU list"),
            ("3-1", "range 3-1 is reversed"),
            ("0-", "\"\" is not a CPU number"),
            ("a", "\"a\" is not a CPU number"),
            ("0,,1", "\"\" is not a CPU number"),
            ("9000", "CPU 9000 exceeds 8191"),
        ] {
            let err = bad.parse::<CpuList>().unwrap_err();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
    }

    #[test]
    fn words_and_units() {
        assert_eq!(
            "performance".parse::<Governor>().unwrap(),
            Governor::Performance
        );
        let err = "turbo".parse::<Governor>().unwrap_err();
        assert_eq!(
            err,
            "invalid governor \"turbo\": expected one of performance, powersave, schedutil, \
             ondemand, conservative, userspace"
        );
        assert_eq!(
            "mq-deadline".parse::<IoScheduler>().unwrap(),
            IoScheduler::MqDeadline
        );
        assert!("cfq".parse::<IoScheduler>().is_err());
        assert_eq!(
            "3.2GHz".parse::<Frequency>().unwrap(),
            Frequency::Khz(3_200_000)
        );
        assert_eq!(
            "2400MHz".parse::<Frequency>().unwrap(),
            Frequency::Khz(2_400_000)
        );
        assert_eq!(
            "800000".parse::<Frequency>().unwrap(),
            Frequency::Khz(800_000)
        );
        assert!("fast".parse::<Frequency>().is_err());
        assert_eq!(
            "2M".parse::<HugepageSize>().unwrap().dir_name(),
            "hugepages-2048kB"
        );
        assert_eq!("1G".parse::<HugepageSize>().unwrap().to_string(), "1G");
        assert!("3M".parse::<HugepageSize>().is_err());
        assert_eq!("performance".parse::<EnergyPerfBias>().unwrap().0, 0);
        assert!("16".parse::<EnergyPerfBias>().is_err());
        assert_eq!(
            "infinity".parse::<LimitValue>().unwrap(),
            LimitValue::Unlimited
        );
        assert!("lots".parse::<LimitValue>().is_err());
    }

    #[test]
    fn paths_and_domains() {
        assert!("/data".parse::<MountPath>().is_ok());
        assert!("/".parse::<MountPath>().is_ok());
        for bad in ["data", "/data/", "/a/../b", "/a//b"] {
            assert!(bad.parse::<MountPath>().is_err(), "{bad}");
        }
        for good in [
            "*",
            "trader",
            "@trading",
            "%ops",
            "1000:",
            ":999",
            "1000:2000",
            "@500:",
        ] {
            assert!(good.parse::<LimitDomain>().is_ok(), "{good}");
        }
        for bad in ["", "a b", ":", "@", "x:y"] {
            assert!(bad.parse::<LimitDomain>().is_err(), "{bad}");
        }
        assert!("nvme*".parse::<DeviceGlob>().unwrap().matches("nvme0n1"));
        assert!("../sda".parse::<DeviceGlob>().is_err());
        assert!("[".parse::<DeviceGlob>().is_err());
    }
}
