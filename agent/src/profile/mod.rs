//! Tuning profiles: the TOML model, strict parsing into validated types, include chains with
//! later-wins merging. See docs/PROFILE-FORMAT.md.

mod load;
pub mod types;
pub mod value;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use load::{ProfileError, SearchPath, load, load_file_only, resolve};
use types::*;
pub use value::Expected;

/// One profile file as written. Unknown keys anywhere are errors.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProfileFile {
    #[serde(default)]
    pub profile: Meta,
    #[serde(
        default,
        deserialize_with = "unique_keys",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub sysctl: BTreeMap<SysctlKey, Expected>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Cpu>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Memory>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub block: Vec<BlockRule>,
    #[serde(
        default,
        deserialize_with = "limit_domains",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub limits: BTreeMap<LimitDomain, BTreeMap<LimitItem, LimitSetting>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mount: Vec<MountRule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clocksource: Option<Clocksource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isolation: Option<Isolation>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Meta {
    /// Defaults to the file name without `.toml`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<ProfileName>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Profiles merged first, in order; this file's own keys win over them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include: Vec<toml::Spanned<String>>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Cpu {
    /// CPUs the per-CPU settings apply to; every online CPU when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<CpuList>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub governor: Option<Governor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle: Option<Idle>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_freq: Option<Frequency>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_freq: Option<Frequency>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub energy_perf_bias: Option<EnergyPerfBias>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub energy_performance_preference: Option<EnergyPerfPreference>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boost: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_perf_pct: Option<Percent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pm_qos_latency_us: Option<u32>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Idle {
    /// Disable every cpuidle state whose exit latency exceeds this many microseconds; the
    /// others must stay enabled. 0 leaves only POLL.
    pub max_latency_us: u32,
}

/// 0-100.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Percent(pub u8);

impl<'de> Deserialize<'de> for Percent {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Read wider than u8 so 300 or -1 get this message, not "expected u8".
        let n = i64::deserialize(d)?;
        u8::try_from(n)
            .ok()
            .filter(|n| *n <= 100)
            .map(Percent)
            .ok_or_else(|| {
                serde::de::Error::custom(format!("invalid percentage {n}: expected 0-100"))
            })
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Memory {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transparent_hugepage: Option<ThpEnabled>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transparent_hugepage_defrag: Option<ThpDefrag>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swap: Option<SwapState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ksm: Option<KsmState>,
    /// Persistent huge pages per size: `"2M" = 1024` or `"1G" = { min = 4 }`.
    #[serde(
        default,
        deserialize_with = "unique_keys",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub hugepages: BTreeMap<HugepageSize, Expected>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BlockRule {
    pub devices: DeviceGlob,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheduler: Option<IoScheduler>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_ahead_kb: Option<Expected>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BlockRuleRaw {
    devices: DeviceGlob,
    #[serde(default)]
    scheduler: Option<IoScheduler>,
    #[serde(default)]
    read_ahead_kb: Option<Expected>,
}

impl<'de> Deserialize<'de> for BlockRule {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        deserialize_checked(
            d,
            "BlockRule",
            &["devices", "scheduler", "read_ahead_kb"],
            "a [[block]] table",
            <BlockRule as TryFrom<BlockRuleRaw>>::try_from,
        )
    }
}

impl TryFrom<BlockRuleRaw> for BlockRule {
    type Error = String;
    fn try_from(r: BlockRuleRaw) -> Result<Self, String> {
        if r.scheduler.is_none() && r.read_ahead_kb.is_none() {
            return Err(format!(
                "block rule for {:?} sets nothing: give `scheduler` and/or `read_ahead_kb`",
                r.devices.as_str()
            ));
        }
        Ok(BlockRule {
            devices: r.devices,
            scheduler: r.scheduler,
            read_ahead_kb: r.read_ahead_kb,
        })
    }
}

/// One limits item: the same value for soft and hard, or `{ soft = .., hard = .. }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct LimitSetting {
    pub soft: Option<LimitValue>,
    pub hard: Option<LimitValue>,
}

impl<'de> Deserialize<'de> for LimitSetting {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = LimitSetting;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a limit (a number or \"unlimited\") or { soft = .., hard = .. }")
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<LimitSetting, E> {
                self.visit_str(&n.to_string())
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<LimitSetting, E> {
                self.visit_str(&n.to_string())
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<LimitSetting, E> {
                let v: LimitValue = s.parse().map_err(E::custom)?;
                Ok(LimitSetting {
                    soft: Some(v),
                    hard: Some(v),
                })
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<LimitSetting, A::Error> {
                use serde::de::Error;
                let mut out = LimitSetting {
                    soft: None,
                    hard: None,
                };
                while let Some(key) = map.next_key::<String>()? {
                    let slot = match key.as_str() {
                        "soft" => &mut out.soft,
                        "hard" => &mut out.hard,
                        other => return Err(A::Error::unknown_field(other, &["soft", "hard"])),
                    };
                    if slot.is_some() {
                        return Err(A::Error::duplicate_field("soft/hard"));
                    }
                    *slot = Some(map.next_value::<LimitValue>()?);
                }
                if out.soft.is_none() && out.hard.is_none() {
                    return Err(A::Error::custom(
                        "a limit table needs `soft`, `hard` or both",
                    ));
                }
                Ok(out)
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MountRule {
    pub path: MountPath,
    pub options: Vec<MountOption>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MountRuleRaw {
    path: MountPath,
    options: Vec<MountOption>,
}

impl<'de> Deserialize<'de> for MountRule {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        deserialize_checked(
            d,
            "MountRule",
            &["path", "options"],
            "a [[mount]] table",
            <MountRule as TryFrom<MountRuleRaw>>::try_from,
        )
    }
}

impl TryFrom<MountRuleRaw> for MountRule {
    type Error = String;
    fn try_from(r: MountRuleRaw) -> Result<Self, String> {
        if r.options.is_empty() {
            return Err(format!(
                "mount rule for {} lists no options: give at least one, such as \"noatime\"",
                r.path
            ));
        }
        Ok(MountRule {
            path: r.path,
            options: r.options,
        })
    }
}

/// Deserializes `Raw` and checks it into `T` while the deserializer is still running, so toml
/// blames this table's own header. serde's `try_from` converts only after the deserializer has
/// returned, and toml then blames the enclosing array: the first `[[block]]` of the file.
fn deserialize_checked<'de, D, Raw, T>(
    d: D,
    name: &'static str,
    fields: &'static [&'static str],
    expecting: &'static str,
    check: fn(Raw) -> Result<T, String>,
) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    Raw: Deserialize<'de>,
{
    struct V<Raw, T>(&'static str, fn(Raw) -> Result<T, String>);
    impl<'de, Raw: Deserialize<'de>, T> serde::de::Visitor<'de> for V<Raw, T> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
            let raw = Raw::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
            (self.1)(raw).map_err(serde::de::Error::custom)
        }
    }
    d.deserialize_struct(name, fields, V(expecting, check))
}

/// A map whose keys have several spellings (`net.core.somaxconn` and `net/core/somaxconn`; `2M`
/// and `2048kB`). Two spellings of one key are an error: a plain map would keep one silently.
fn unique_keys<'de, D, K, V>(d: D) -> Result<BTreeMap<K, V>, D::Error>
where
    D: serde::Deserializer<'de>,
    K: FromStr<Err = String> + Ord + Clone + fmt::Display,
    V: Deserialize<'de>,
{
    /// Parses one key, checked against the spellings seen so far while toml still holds the
    /// key, so the error points at it.
    struct Key<'a, K>(&'a BTreeMap<K, String>);
    impl<'de, K> serde::de::DeserializeSeed<'de> for Key<'_, K>
    where
        K: FromStr<Err = String> + Ord + fmt::Display,
    {
        type Value = (K, String);
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(K, String), D::Error> {
            use serde::de::Error;
            let raw = String::deserialize(d)?;
            let key: K = raw.parse().map_err(D::Error::custom)?;
            if let Some(other) = self.0.get(&key) {
                return Err(D::Error::custom(format!(
                    "{raw:?} and {other:?} are the same key ({key}): keep one"
                )));
            }
            Ok((key, raw))
        }
    }
    struct Map<K, V>(std::marker::PhantomData<(K, V)>);
    impl<'de, K, V> serde::de::Visitor<'de> for Map<K, V>
    where
        K: FromStr<Err = String> + Ord + Clone + fmt::Display,
        V: Deserialize<'de>,
    {
        type Value = BTreeMap<K, V>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a table")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<BTreeMap<K, V>, A::Error> {
            let (mut out, mut spellings) = (BTreeMap::new(), BTreeMap::new());
            while let Some((key, raw)) = map.next_key_seed(Key::<K>(&spellings))? {
                out.insert(key.clone(), map.next_value()?);
                spellings.insert(key, raw);
            }
            Ok(out)
        }
    }
    d.deserialize_map(Map(std::marker::PhantomData))
}

/// `[limits]`: a domain with no items (`"*" = {}`) is a mistake, not a no-op.
fn limit_domains<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<LimitDomain, BTreeMap<LimitItem, LimitSetting>>, D::Error> {
    struct Items(BTreeMap<LimitItem, LimitSetting>);
    impl<'de> Deserialize<'de> for Items {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            let items = BTreeMap::deserialize(d)?;
            if items.is_empty() {
                return Err(serde::de::Error::custom(
                    "empty limits table: give at least one item, such as `nofile = 1000000`",
                ));
            }
            Ok(Items(items))
        }
    }
    let domains = BTreeMap::<LimitDomain, Items>::deserialize(d)?;
    Ok(domains.into_iter().map(|(k, v)| (k, v.0)).collect())
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Clocksource {
    pub current: ClocksourceName,
}

/// `[isolation]`: the CPU layout of a trading host. The engine units own the isolated CPUs;
/// everything else (systemd, IRQs, workqueues) stays on the housekeeping CPUs.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, try_from = "IsolationRaw")]
pub struct Isolation {
    pub housekeeping_cpus: CpuList,
    pub isolated_cpus: CpuList,
    /// Units pinned to the isolated CPUs (CPUAffinity= drop-ins).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub engine_units: Vec<UnitName>,
    /// Extra kernel arguments for the boot loader, e.g. "skew_tick=1", "nosoftlockup".
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kernel_args: Vec<String>,
    /// Housekeeping normally includes CPU 0 (boot CPU, timekeeping); true allows otherwise.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_housekeeping_without_cpu0: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IsolationRaw {
    housekeeping_cpus: CpuList,
    isolated_cpus: CpuList,
    #[serde(default)]
    engine_units: Vec<UnitName>,
    #[serde(default)]
    kernel_args: Vec<String>,
    #[serde(default)]
    allow_housekeeping_without_cpu0: bool,
}

impl TryFrom<IsolationRaw> for Isolation {
    type Error = String;
    fn try_from(r: IsolationRaw) -> Result<Self, String> {
        let both: Vec<u32> = r
            .isolated_cpus
            .iter()
            .filter(|c| r.housekeeping_cpus.contains(*c))
            .collect();
        if !both.is_empty() {
            let both: CpuList = both.into_iter().collect();
            return Err(format!(
                "housekeeping_cpus {} and isolated_cpus {} overlap on {both}: a CPU is either \
                 housekeeping or isolated",
                r.housekeeping_cpus, r.isolated_cpus
            ));
        }
        if !r.housekeeping_cpus.contains(0) && !r.allow_housekeeping_without_cpu0 {
            return Err(format!(
                "housekeeping_cpus {} leaves out CPU 0, which the kernel uses for boot and \
                 timekeeping work; include it, or set allow_housekeeping_without_cpu0 = true",
                r.housekeeping_cpus
            ));
        }
        for (i, u) in r.engine_units.iter().enumerate() {
            if r.engine_units[..i].contains(u) {
                return Err(format!("engine unit {u} is listed twice"));
            }
        }
        for a in &r.kernel_args {
            // It ends up in a shell-sourced GRUB drop-in and in grub.cfg: only the characters
            // kernel parameters use.
            if a.is_empty()
                || !a
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "=,.-_:/+@%~".contains(c))
            {
                return Err(format!(
                    "invalid kernel argument {a:?}: one argument per string, of letters, digits \
                     and = , . - _ : / + @ % ~ (no spaces, quotes or shell characters)"
                ));
            }
        }
        Ok(Isolation {
            housekeeping_cpus: r.housekeeping_cpus,
            isolated_cpus: r.isolated_cpus,
            engine_units: r.engine_units,
            kernel_args: r.kernel_args,
            allow_housekeeping_without_cpu0: r.allow_housekeeping_without_cpu0,
        })
    }
}

/// A profile with its includes merged: what verify and apply work from.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    pub name: String,
    pub description: Option<String>,
    /// The file named on the command line (or found on the search path).
    pub source: PathBuf,
    /// Every file that contributed, includes first.
    pub files: Vec<PathBuf>,
    pub settings: ProfileFile,
}

impl Profile {
    /// The merged settings rendered as one TOML document (`agentctl tune show`).
    pub fn to_toml(&self) -> String {
        let mut flat = self.settings.clone();
        flat.profile.include.clear();
        flat.profile.name = self.name.parse().ok();
        flat.profile.description = self.description.clone();
        toml::to_string_pretty(&flat).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

impl ProfileFile {
    /// True when no section sets anything (an empty file, or only `[profile]`).
    pub fn is_empty(&self) -> bool {
        self.sysctl.is_empty()
            && self.cpu.as_ref().is_none_or(|c| *c == Cpu::default())
            && self.memory.as_ref().is_none_or(|m| *m == Memory::default())
            && self.block.is_empty()
            && self.limits.is_empty()
            && self.mount.is_empty()
            && self.clocksource.is_none()
            && self.isolation.is_none()
    }

    /// Merges `over` on top of `self`: every key `over` sets wins; sections merge key by key.
    /// The `[profile]` table (name, description) is not inherited: `over`'s replaces it.
    pub fn merge(&mut self, over: ProfileFile) {
        self.profile = over.profile;
        self.sysctl.extend(over.sysctl);
        if let Some(c) = over.cpu {
            let base = self.cpu.get_or_insert_with(Cpu::default);
            macro_rules! take {
                ($($f:ident),*) => { $( if c.$f.is_some() { base.$f = c.$f; } )* };
            }
            take!(
                cpus,
                governor,
                idle,
                min_freq,
                max_freq,
                energy_perf_bias,
                energy_performance_preference,
                boost,
                min_perf_pct,
                pm_qos_latency_us
            );
        }
        if let Some(m) = over.memory {
            let base = self.memory.get_or_insert_with(Memory::default);
            macro_rules! take {
                ($($f:ident),*) => { $( if m.$f.is_some() { base.$f = m.$f; } )* };
            }
            take!(transparent_hugepage, transparent_hugepage_defrag, swap, ksm);
            base.hugepages.extend(m.hugepages);
        }
        for rule in over.block {
            match self.block.iter_mut().find(|r| r.devices == rule.devices) {
                Some(base) => {
                    if rule.scheduler.is_some() {
                        base.scheduler = rule.scheduler;
                    }
                    if rule.read_ahead_kb.is_some() {
                        base.read_ahead_kb = rule.read_ahead_kb;
                    }
                }
                None => self.block.push(rule),
            }
        }
        for (domain, items) in over.limits {
            let base = self.limits.entry(domain).or_default();
            for (item, setting) in items {
                let slot = base.entry(item).or_insert(LimitSetting {
                    soft: None,
                    hard: None,
                });
                if setting.soft.is_some() {
                    slot.soft = setting.soft;
                }
                if setting.hard.is_some() {
                    slot.hard = setting.hard;
                }
            }
        }
        for rule in over.mount {
            match self.mount.iter_mut().find(|r| r.path == rule.path) {
                Some(base) => *base = rule,
                None => self.mount.push(rule),
            }
        }
        if over.clocksource.is_some() {
            self.clocksource = over.clocksource;
        }
        // The CPU layout is one decision: a later file restates it whole.
        if over.isolation.is_some() {
            self.isolation = over.isolation;
        }
    }
}
