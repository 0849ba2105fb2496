//! collector.toml: where the inventory is, how to reach the agents (client certificate), how to
//! poll, where the database is, and what to serve. Strict (unknown keys are errors); every
//! error names file, line, column and key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use node_agent::settings::Timeout;
use node_agent::tomlfile::{self, Invalid};
use serde::Deserialize;

pub const CONFIG_ENV: &str = "NODE_COLLECTOR_CONFIG";
pub const DEFAULT_CONFIG: &str = "/etc/node-collector/collector.toml";
pub const DEFAULT_INVENTORY: &str = "/etc/node-collector/inventory.toml";
pub const DEFAULT_DB: &str = "/var/lib/node-collector/fleet.db";
pub const DEFAULT_GRPC: &str = "127.0.0.1:9445";
pub const DEFAULT_METRICS: &str = "127.0.0.1:9465";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("failed to read {what} {}", path.display())]
    Read {
        what: &'static str,
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
    #[error("{}: {message}", path.display())]
    Missing { path: PathBuf, message: String },
}

impl ConfigError {
    pub(crate) fn at(path: &Path, e: Invalid) -> ConfigError {
        ConfigError::Invalid {
            path: path.to_owned(),
            line: e.line,
            column: e.column,
            message: e.message,
        }
    }
}

/// `[agents]`: the client certificate the collector presents to every agent (its CN must be an
/// observer in the agents' `[roles]`) and the CA the agents' server certificates chain to.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AgentsTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

/// `[tls]`: the certificate of the collector's own gRPC service and the CA its clients'
/// certificates (agentctl fleet status) must chain to.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ServerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: PathBuf,
}

/// `[poll]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Poll {
    /// Time between the starts of two polls of the fleet.
    pub interval: Duration,
    /// At most this many agents are polled at once.
    pub concurrency: usize,
    /// Everything of one host's poll (connect, TLS, the RPCs) within this.
    pub deadline: Duration,
    /// After a failed poll the host is skipped for backoff_min, doubled per further failure up
    /// to backoff_max.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Subscribe to every agent's WatchDrift and poll a host as soon as it reports a drift
    /// transition (agents without WatchDrift are polled at the interval only).
    pub watch: bool,
}

impl Default for Poll {
    fn default() -> Poll {
        Poll {
            interval: Duration::from_secs(30),
            concurrency: 256,
            deadline: Duration::from_secs(5),
            backoff_min: Duration::from_secs(30),
            backoff_max: Duration::from_secs(600),
            watch: true,
        }
    }
}

/// `[store]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Store {
    pub path: PathBuf,
    /// History events older than this many days are deleted.
    pub retention_days: u32,
}

/// `[listen]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen {
    /// The Fleet gRPC service (mutual TLS, `[tls]`).
    pub grpc: SocketAddr,
    /// The Prometheus endpoint (plain HTTP, GET /metrics): loopback unless configured.
    pub metrics: SocketAddr,
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The file it was read from (for messages).
    pub path: PathBuf,
    pub inventory: PathBuf,
    pub agents: AgentsTls,
    pub tls: Option<ServerTls>,
    pub poll: Poll,
    pub store: Store,
    pub listen: Listen,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    inventory: Option<PathBuf>,
    agents: AgentsTls,
    tls: Option<ServerTls>,
    #[serde(default)]
    poll: PollRaw,
    #[serde(default)]
    store: StoreRaw,
    #[serde(default)]
    listen: ListenRaw,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PollRaw {
    interval: Option<Timeout>,
    #[serde(default, deserialize_with = "concurrency")]
    concurrency: Option<usize>,
    deadline: Option<Timeout>,
    backoff_min: Option<Timeout>,
    backoff_max: Option<Timeout>,
    watch: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct StoreRaw {
    path: Option<PathBuf>,
    #[serde(default, deserialize_with = "retention")]
    retention_days: Option<u32>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ListenRaw {
    grpc: Option<toml::Spanned<String>>,
    metrics: Option<toml::Spanned<String>>,
}

fn ranged<'de, D: serde::Deserializer<'de>>(d: D, min: i64, max: i64) -> Result<i64, D::Error> {
    let n = i64::deserialize(d)?;
    if !(min..=max).contains(&n) {
        return Err(serde::de::Error::custom(format!(
            "{n} is out of range: must be from {min} to {max}"
        )));
    }
    Ok(n)
}

fn concurrency<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    ranged(d, 1, 65_536).map(|n| Some(n as usize))
}

fn retention<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    ranged(d, 1, 36_500).map(|n| Some(n as u32))
}

impl Config {
    /// The config file to read: `--config`, else NODE_COLLECTOR_CONFIG, else the default.
    pub fn path_from(arg: Option<&Path>) -> PathBuf {
        arg.map(Path::to_owned)
            .or_else(|| std::env::var_os(CONFIG_ENV).map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG))
    }

    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            what: "the collector configuration",
            path: path.to_owned(),
            source,
        })?;
        Config::parse(path, &text)
    }

    /// Parses and validates; relative paths are taken relative to the file's directory.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let raw: Raw = tomlfile::parse(text).map_err(|e| ConfigError::at(path, e))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let rel = |p: PathBuf| if p.is_relative() { base.join(p) } else { p };
        let invalid = |span: std::ops::Range<usize>, message: String| {
            let (line, column) = tomlfile::line_col(text, span.start);
            ConfigError::Invalid {
                path: path.to_owned(),
                line,
                column,
                message,
            }
        };
        let addr = |v: Option<toml::Spanned<String>>, key: &str, default: &str| match v {
            None => Ok(default.parse().expect("default address")),
            Some(s) => s.get_ref().parse::<SocketAddr>().map_err(|_| {
                invalid(
                    s.span(),
                    format!(
                        "{key}: invalid address {:?}: expected IP:PORT, e.g. \"{default}\"",
                        s.get_ref()
                    ),
                )
            }),
        };
        let listen = Listen {
            grpc: addr(raw.listen.grpc, "listen.grpc", DEFAULT_GRPC)?,
            metrics: addr(raw.listen.metrics, "listen.metrics", DEFAULT_METRICS)?,
        };
        let d = Poll::default();
        let poll = Poll {
            interval: raw.poll.interval.map_or(d.interval, |t| t.0),
            concurrency: raw.poll.concurrency.unwrap_or(d.concurrency),
            deadline: raw.poll.deadline.map_or(d.deadline, |t| t.0),
            backoff_min: raw.poll.backoff_min.map_or(d.backoff_min, |t| t.0),
            backoff_max: raw.poll.backoff_max.map_or(d.backoff_max, |t| t.0),
            watch: raw.poll.watch.unwrap_or(d.watch),
        };
        if poll.backoff_min > poll.backoff_max {
            return Err(ConfigError::Invalid {
                path: path.to_owned(),
                line: line_of(text, "backoff_min"),
                column: 1,
                message: format!(
                    "poll.backoff_min ({} ms) must not exceed poll.backoff_max ({} ms)",
                    poll.backoff_min.as_millis(),
                    poll.backoff_max.as_millis()
                ),
            });
        }
        let agents = AgentsTls {
            cert: rel(raw.agents.cert),
            key: rel(raw.agents.key),
            ca: rel(raw.agents.ca),
        };
        let tls = raw.tls.map(|t| ServerTls {
            cert: rel(t.cert),
            key: rel(t.key),
            client_ca: rel(t.client_ca),
        });
        Ok(Config {
            path: path.to_owned(),
            inventory: rel(raw
                .inventory
                .unwrap_or_else(|| PathBuf::from(DEFAULT_INVENTORY))),
            agents,
            tls,
            poll,
            store: Store {
                path: rel(raw.store.path.unwrap_or_else(|| PathBuf::from(DEFAULT_DB))),
                retention_days: raw.store.retention_days.unwrap_or(90),
            },
            listen,
        })
    }

    /// `[tls]`, which `serve` needs for its gRPC service.
    pub fn server_tls(&self) -> Result<&ServerTls, ConfigError> {
        self.tls.as_ref().ok_or_else(|| ConfigError::Missing {
            path: self.path.clone(),
            message: "no [tls] section: the Fleet gRPC service (listen.grpc) needs cert, key and \
                      client_ca (mutual TLS only)"
                .into(),
        })
    }
}

/// The line of the first occurrence of `key` (for cross-key checks with no serde span).
fn line_of(text: &str, key: &str) -> usize {
    text.lines()
        .position(|l| l.trim_start().starts_with(key))
        .map_or(1, |i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = "[agents]\ncert = \"c.crt\"\nkey = \"c.key\"\nca = \"ca.crt\"\n";

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(Path::new("/etc/nc/collector.toml"), text).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_and_relative_paths() {
        let c = parse(MIN).unwrap();
        assert_eq!(c.agents.cert, PathBuf::from("/etc/nc/c.crt"));
        assert_eq!(c.poll, Poll::default());
        assert_eq!(c.store.path, PathBuf::from(DEFAULT_DB));
        assert_eq!(c.listen.metrics, DEFAULT_METRICS.parse().unwrap());
        assert!(c.listen.metrics.ip().is_loopback());
        assert!(c.listen.grpc.ip().is_loopback());
        assert!(c.server_tls().unwrap_err().to_string().contains("no [tls]"));
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let e = parse(&format!("{MIN}[poll]\ninterval = \"soon\"\n")).unwrap_err();
        assert!(e.starts_with("/etc/nc/collector.toml:6:"), "{e}");
        assert!(e.contains("poll.interval"), "{e}");
        let e = parse(&format!("{MIN}[poll]\nconcurrency = 0\n")).unwrap_err();
        assert!(e.contains(":6:") && e.contains("poll.concurrency"), "{e}");
        let e = parse(&format!("{MIN}[listen]\nmetrics = \"localhost\"\n")).unwrap_err();
        assert!(e.contains(":6:") && e.contains("listen.metrics"), "{e}");
        let e = parse(&format!("{MIN}[poll]\nwatch = \"yes\"\n")).unwrap_err();
        assert!(e.contains(":6:") && e.contains("poll.watch"), "{e}");
        assert!(
            !parse(&format!("{MIN}[poll]\nwatch = false\n"))
                .unwrap()
                .poll
                .watch
        );
        let e = parse(&format!("{MIN}[poll]\nbogus = 1\n")).unwrap_err();
        assert!(e.contains(":6:") && e.contains("bogus"), "{e}");
        let e = parse("[agents]\ncert = \"c\"\n").unwrap_err();
        assert!(e.contains("key"), "{e}");
        let e = parse(&format!(
            "{MIN}[poll]\nbackoff_min = \"10min\"\nbackoff_max = \"1min\"\n"
        ))
        .unwrap_err();
        assert!(e.contains(":6:") && e.contains("backoff_min"), "{e}");
    }
}
