//! The inventory: which agents to poll, where, and with which labels.
//!
//! ```toml
//! [defaults]
//! labels = { site = "ld4" }          # merged under every host's own labels
//!
//! [[host]]
//! name = "trd-ld4-r01-01"            # unique; the `host` label of the metrics
//! address = "10.1.0.11:9443"         # HOST:PORT of the agent's mutual-TLS listener
//! server_name = "trd-ld4-r01-01.example"  # optional: the name its certificate carries
//! labels = { rack = "r01", role = "engine" }
//! ```
//!
//! Validated at the boundary: unknown keys, a duplicate name or address, an address that is
//! not HOST:PORT, a label name Prometheus would refuse (or `host`, `class`, reserved by the
//! metrics) are errors naming file, line, column and key.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::{Path, PathBuf};

use node_agent::tomlfile;
use serde::Deserialize;

use crate::config::ConfigError;

/// One agent to poll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    pub name: String,
    /// HOST:PORT.
    pub address: String,
    /// The name the agent's server certificate must carry.
    pub server_name: String,
    /// Sorted by name; the defaults merged in.
    pub labels: BTreeMap<String, String>,
}

/// The validated inventory, in file order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Inventory {
    pub hosts: Vec<Host>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default)]
    defaults: DefaultsRaw,
    #[serde(default)]
    host: Vec<HostRaw>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DefaultsRaw {
    #[serde(default)]
    labels: BTreeMap<toml::Spanned<String>, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HostRaw {
    name: toml::Spanned<String>,
    address: toml::Spanned<String>,
    server_name: Option<String>,
    #[serde(default)]
    labels: BTreeMap<toml::Spanned<String>, String>,
}

/// Label names the metrics use themselves.
const RESERVED_LABELS: &[&str] = &["host", "class", "address"];

fn label_name_error(name: &str) -> Option<String> {
    let mut chars = name.chars();
    let ok_first = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !ok_first || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') || name.starts_with("__")
    {
        return Some(format!(
            "invalid label name {name:?}: a Prometheus label name is [a-zA-Z_][a-zA-Z0-9_]* \
             and does not start with \"__\""
        ));
    }
    RESERVED_LABELS.contains(&name).then(|| {
        format!("label name {name:?} is reserved (the metrics set it): choose another name")
    })
}

fn host_name_error(name: &str) -> Option<String> {
    if name.is_empty() || name.len() > 253 {
        return Some("a host name is 1 to 253 characters".into());
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    {
        return Some(format!(
            "invalid host name {name:?}: use letters, digits, '.', '-' and '_'"
        ));
    }
    None
}

impl Inventory {
    pub fn load(path: &Path) -> Result<Inventory, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            what: "the inventory",
            path: path.to_owned(),
            source,
        })?;
        Inventory::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Inventory, ConfigError> {
        let raw: Raw = tomlfile::parse(text).map_err(|e| ConfigError::at(path, e))?;
        let err = |span: Range<usize>, message: String| {
            let (line, column) = tomlfile::line_col(text, span.start);
            ConfigError::Invalid {
                path: PathBuf::from(path),
                line,
                column,
                message,
            }
        };
        let labels = |raw: BTreeMap<toml::Spanned<String>, String>, at: &str| {
            raw.into_iter()
                .map(|(k, v)| match label_name_error(k.get_ref()) {
                    Some(m) => Err(err(k.span(), format!("{at}.labels: {m}"))),
                    None => Ok((k.into_inner(), v)),
                })
                .collect::<Result<BTreeMap<_, _>, _>>()
        };
        let defaults = labels(raw.defaults.labels, "defaults")?;
        let mut names: HashMap<String, usize> = HashMap::new();
        let mut addresses: HashMap<String, usize> = HashMap::new();
        let mut hosts = Vec::with_capacity(raw.host.len());
        for (i, h) in raw.host.into_iter().enumerate() {
            let at = format!("host[{i}]");
            if let Some(m) = host_name_error(h.name.get_ref()) {
                return Err(err(h.name.span(), format!("{at}.name: {m}")));
            }
            if let Some(first) = names.insert(h.name.get_ref().clone(), i) {
                return Err(err(
                    h.name.span(),
                    format!(
                        "{at}.name: duplicate host name {:?} (also host[{first}])",
                        h.name.get_ref()
                    ),
                ));
            }
            let host_part = node_agent::client::host_of(h.address.get_ref())
                .map_err(|e| err(h.address.span(), format!("{at}.address: {e}")))?;
            if let Some(first) = addresses.insert(h.address.get_ref().clone(), i) {
                return Err(err(
                    h.address.span(),
                    format!(
                        "{at}.address: duplicate address {:?} (also host[{first}])",
                        h.address.get_ref()
                    ),
                ));
            }
            let mut merged = defaults.clone();
            merged.extend(labels(h.labels, &at)?);
            hosts.push(Host {
                name: h.name.into_inner(),
                address: h.address.into_inner(),
                server_name: h.server_name.unwrap_or(host_part),
                labels: merged,
            });
        }
        Ok(Inventory { hosts })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Inventory, String> {
        Inventory::parse(Path::new("inv.toml"), text).map_err(|e| e.to_string())
    }

    #[test]
    fn valid_inventory_with_defaults() {
        let inv = parse(
            "[defaults]\nlabels = { site = \"ld4\", role = \"any\" }\n\n\
             [[host]]\nname = \"a\"\naddress = \"10.0.0.1:9443\"\nlabels = { role = \"engine\" }\n\n\
             [[host]]\nname = \"b\"\naddress = \"[fd00::1]:9443\"\nserver_name = \"b.example\"\n",
        )
        .unwrap();
        assert_eq!(inv.hosts.len(), 2);
        assert_eq!(inv.hosts[0].server_name, "10.0.0.1");
        assert_eq!(inv.hosts[0].labels["role"], "engine");
        assert_eq!(inv.hosts[0].labels["site"], "ld4");
        assert_eq!(inv.hosts[1].labels["role"], "any");
        assert_eq!(inv.hosts[1].server_name, "b.example");
    }

    #[test]
    fn errors_name_file_line_column_and_key() {
        let cases = [
            (
                "[[host]]\nname = \"a\"\naddress = \"10.0.0.1\"\n",
                "inv.toml:3:11: host[0].address",
            ),
            (
                "[[host]]\nname = \"a\"\naddress = \"h:1\"\n[[host]]\nname = \"a\"\naddress = \"h:2\"\n",
                "inv.toml:5:8: host[1].name: duplicate host name \"a\" (also host[0])",
            ),
            (
                "[[host]]\nname = \"a\"\naddress = \"h:1\"\n[[host]]\nname = \"b\"\naddress = \"h:1\"\n",
                "inv.toml:6:11: host[1].address: duplicate address",
            ),
            (
                "[[host]]\nname = \"a\"\naddress = \"h:1\"\nlabels = { \"rack-1\" = \"x\" }\n",
                "inv.toml:4:12: host[0].labels: invalid label name \"rack-1\"",
            ),
            (
                "[[host]]\nname = \"a\"\naddress = \"h:1\"\nlabels = { host = \"x\" }\n",
                "inv.toml:4:12: host[0].labels: label name \"host\" is reserved",
            ),
            (
                "[[host]]\nname = \"a b\"\naddress = \"h:1\"\n",
                "inv.toml:2:8: host[0].name: invalid host name",
            ),
            (
                "[[host]]\nname = \"a\"\naddress = \"h:1\"\nport = 3\n",
                "inv.toml:4:1: host[0]: unknown field `port`",
            ),
            (
                "[[host]]\nname = \"a\"\n",
                "inv.toml:1:1: host[0]: missing field `address`",
            ),
            (
                "[[host]]\nname = \"a\"\naddress = 9443\n",
                "inv.toml:3:11: host[0].address: invalid type",
            ),
        ];
        for (text, want) in cases {
            let got = parse(text).unwrap_err();
            assert!(
                got.starts_with(want),
                "for {text:?}\n got: {got}\nwant: {want}"
            );
        }
    }
}
