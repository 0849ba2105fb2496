//! The agent's settings file, /etc/node-agent/agent.toml: strict TOML validated into typed
//! settings that are passed explicitly. A missing file means the defaults (the operations
//! manual's platform); an invalid one is an error naming file, line and column.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

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

pub use crate::profile::types::UnitName;

/// A duration written as systemd writes them: `30s`, `500ms`, `2min`, `1h`, or whole seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timeout(pub Duration);

impl FromStr for Timeout {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("invalid duration {s:?}: expected e.g. \"30s\", \"500ms\", \"2min\"");
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num.parse().map_err(|_| bad())?;
        let d = match unit.trim() {
            "" | "s" | "sec" => Duration::from_secs(n),
            "ms" | "msec" => Duration::from_millis(n),
            "m" | "min" => Duration::from_secs(n * 60),
            "h" | "hr" => Duration::from_secs(n * 3600),
            _ => return Err(bad()),
        };
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

impl<'de> Deserialize<'de> for Timeout {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Timeout;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"30s\" or a number of seconds")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Timeout, E> {
                s.parse().map_err(E::custom)
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Timeout, E> {
                n.to_string().parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for Timeout {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

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

/// All settings. Sections are added by the features that need them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    #[serde(default)]
    pub units: Units,
}

impl Settings {
    /// `NODE_AGENT_SETTINGS`, else /etc/node-agent/agent.toml.
    pub fn path_from_env() -> PathBuf {
        match std::env::var_os(SETTINGS_ENV) {
            Some(p) if !p.is_empty() => PathBuf::from(p),
            _ => PathBuf::from(DEFAULT_SETTINGS),
        }
    }

    /// Loads the settings; a missing file at the default path means the defaults, a missing
    /// file named explicitly is an error.
    pub fn load(path: &Path, explicit: bool) -> Result<Settings, SettingsError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
                return Ok(Settings::default());
            }
            Err(source) => {
                return Err(SettingsError::Read {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        crate::tomlfile::parse(&text).map_err(|e| SettingsError::Invalid {
            path: path.to_owned(),
            line: e.line,
            column: e.column,
            message: e.message,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Settings, String> {
        crate::tomlfile::parse(text).map_err(|e| format!("{}:{}: {}", e.line, e.column, e.message))
    }

    #[test]
    fn shipped_example_is_the_defaults() {
        let text = include_str!("../../packaging/agent.toml");
        assert_eq!(parse(text).unwrap(), Settings::default());
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
            ("[unit]\n", "1:2: unknown section `unit`, expected `units`"),
        ] {
            assert_eq!(parse(text).unwrap_err(), err, "{text}");
        }
    }
}
