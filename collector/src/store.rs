//! The fleet database (SQLite, WAL): the latest state of every host (`hosts`, one row each,
//! drift items as JSON) and the history of drift transitions and reachability changes
//! (`events`), pruned after the retention period. A cycle's changes are written in one
//! transaction, so a crash leaves the state of a whole cycle or of none.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};

use crate::fleet::{Event, EventKind, HostState};

/// The schema version in `PRAGMA user_version`.
pub const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS hosts (
    host TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    updated INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    host TEXT NOT NULL,
    time INTEGER NOT NULL,
    kind TEXT NOT NULL,
    class TEXT NOT NULL,
    key TEXT NOT NULL,
    status TEXT NOT NULL,
    actual TEXT,
    detail TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_host_time ON events (host, time);
CREATE INDEX IF NOT EXISTS events_time ON events (time);
";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("failed to create the database directory {}", path.display())]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("database {}: failed to {what}", path.display())]
    Sql {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    #[error(
        "database {}: schema version {found} is newer than this collector's ({SCHEMA_VERSION}): \
         use a newer node-collector or another database", path.display()
    )]
    Newer { path: PathBuf, found: i64 },
}

/// An open fleet database.
#[derive(Debug)]
pub struct Store {
    path: PathBuf,
    conn: Connection,
}

impl Store {
    /// Opens (creating it, and its directory, when missing) the database at `path`.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::Dir {
                path: dir.to_owned(),
                source,
            })?;
        }
        let sql = |what: &'static str| {
            let path = path.to_owned();
            move |source| StoreError::Sql { path, what, source }
        };
        let conn = Connection::open(path).map_err(sql("open it"))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(sql("set the busy timeout"))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(sql("switch to WAL"))?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(sql("set synchronous"))?;
        let found: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(sql("read the schema version"))?;
        if found > SCHEMA_VERSION {
            return Err(StoreError::Newer {
                path: path.to_owned(),
                found,
            });
        }
        conn.execute_batch(SCHEMA)
            .map_err(sql("create the schema"))?;
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(sql("set the schema version"))?;
        Ok(Store {
            path: path.to_owned(),
            conn,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn sql(&self, what: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError + '_ {
        move |source| StoreError::Sql {
            path: self.path.clone(),
            what,
            source,
        }
    }

    /// Every host state recorded, by name. A row that does not decode (written by another
    /// version) is skipped with a warning: the host starts afresh.
    pub fn load_hosts(&self) -> Result<HashMap<String, HostState>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT host, state FROM hosts")
            .map_err(self.sql("read the hosts"))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
            .map_err(self.sql("read the hosts"))?;
        let mut out = HashMap::new();
        for row in rows {
            let (host, state) = row.map_err(self.sql("read the hosts"))?;
            match serde_json::from_str::<HostState>(&state) {
                Ok(s) => {
                    out.insert(host, s);
                }
                Err(e) => log::warn!(
                    "{}: ignoring the recorded state of {host}: {e}",
                    self.path.display()
                ),
            }
        }
        Ok(out)
    }

    /// Writes the changed host states and the events of one cycle, in one transaction.
    pub fn save(&mut self, hosts: &[&HostState], events: &[Event]) -> Result<(), StoreError> {
        let path = self.path.clone();
        let sql = |what: &'static str| {
            let path = path.clone();
            move |source| StoreError::Sql { path, what, source }
        };
        let tx = self
            .conn
            .transaction()
            .map_err(sql("start a transaction"))?;
        {
            let mut up = tx
                .prepare_cached(
                    "INSERT INTO hosts (host, state, updated) VALUES (?1, ?2, ?3) \
                     ON CONFLICT(host) DO UPDATE SET state = excluded.state, \
                     updated = excluded.updated",
                )
                .map_err(sql("write a host"))?;
            for h in hosts {
                let state = serde_json::to_string(h).unwrap_or_default();
                up.execute(params![h.name, state, h.last_poll.unwrap_or(0)])
                    .map_err(sql("write a host"))?;
            }
            let mut ev = tx
                .prepare_cached(
                    "INSERT INTO events (host, time, kind, class, key, status, actual, detail) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )
                .map_err(sql("write an event"))?;
            for e in events {
                ev.execute(params![
                    e.host,
                    e.time,
                    e.kind.as_str(),
                    e.class,
                    e.key,
                    e.status,
                    e.actual,
                    e.detail
                ])
                .map_err(sql("write an event"))?;
            }
        }
        tx.commit().map_err(sql("commit"))
    }

    /// Deletes events older than `before` (Unix seconds) and the state of hosts not polled
    /// since then; returns the number of events deleted.
    pub fn prune(&mut self, before: i64) -> Result<usize, StoreError> {
        let n = self
            .conn
            .execute("DELETE FROM events WHERE time < ?1", params![before])
            .map_err(self.sql("prune the history"))?;
        self.conn
            .execute("DELETE FROM hosts WHERE updated < ?1", params![before])
            .map_err(self.sql("prune the hosts"))?;
        Ok(n)
    }

    /// Whether anything was ever recorded for `host`.
    pub fn knows(&self, host: &str) -> Result<bool, StoreError> {
        let in_hosts: Option<i64> = self
            .conn
            .query_row("SELECT 1 FROM hosts WHERE host = ?1", params![host], |r| {
                r.get(0)
            })
            .optional()
            .map_err(self.sql("read the hosts"))?;
        if in_hosts.is_some() {
            return Ok(true);
        }
        let in_events: Option<i64> = self
            .conn
            .query_row(
                "SELECT 1 FROM events WHERE host = ?1 LIMIT 1",
                params![host],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.sql("read the history"))?;
        Ok(in_events.is_some())
    }

    /// The newest `limit` events of `host` at or after `since`, oldest first.
    pub fn history(&self, host: &str, since: i64, limit: u32) -> Result<Vec<Event>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT time, kind, class, key, status, actual, detail FROM events \
                 WHERE host = ?1 AND time >= ?2 ORDER BY id DESC LIMIT ?3",
            )
            .map_err(self.sql("read the history"))?;
        let rows = stmt
            .query_map(params![host, since, limit], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, Option<String>>(5)?,
                    r.get::<_, String>(6)?,
                ))
            })
            .map_err(self.sql("read the history"))?;
        let mut out = Vec::new();
        for row in rows {
            let (time, kind, class, key, status, actual, detail) =
                row.map_err(self.sql("read the history"))?;
            let Some(kind) = EventKind::parse(&kind) else {
                continue;
            };
            out.push(Event {
                host: host.to_owned(),
                time,
                kind,
                class,
                key,
                status,
                actual,
                detail,
            });
        }
        out.reverse();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::{AgentInfo, ItemObs, Outcome};
    use crate::inventory::Host;

    #[test]
    fn state_and_history_survive_reopening_and_prune() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/fleet.db");
        let mut h = HostState::new(&Host {
            name: "a".into(),
            address: "h:1".into(),
            server_name: "h".into(),
            labels: [("site".to_owned(), "ld4".to_owned())].into(),
        });
        let mut events = h.observe(
            Outcome::Reached {
                info: AgentInfo {
                    agent_version: "0.9.0".into(),
                    ..AgentInfo::default()
                },
                drift: Some(vec![ItemObs {
                    class: "sysctl".into(),
                    key: "net.core.somaxconn".into(),
                    status: "drift".into(),
                    expected: "4096".into(),
                    actual: Some("1024".into()),
                }]),
            },
            100,
        );
        events.extend(h.observe(Outcome::Failed("refused".into()), 200));
        {
            let mut s = Store::open(&path).unwrap();
            s.save(&[&h], &events).unwrap();
        }
        let mut s = Store::open(&path).unwrap();
        let hosts = s.load_hosts().unwrap();
        let back = &hosts["a"];
        assert_eq!(back.drift, h.drift);
        assert_eq!(back.agent_version, "0.9.0");
        assert!(!back.reachable);
        assert_eq!(back.labels["site"], "ld4");
        let hist = s.history("a", 0, 100).unwrap();
        let kinds: Vec<EventKind> = hist.iter().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            vec![
                EventKind::Reachable,
                EventKind::DriftNew,
                EventKind::Unreachable
            ]
        );
        assert_eq!(hist[1].actual.as_deref(), Some("1024"));
        assert_eq!(s.history("a", 150, 100).unwrap().len(), 1);
        assert_eq!(
            s.history("a", 0, 1).unwrap()[0].kind,
            EventKind::Unreachable
        );
        assert!(s.knows("a").unwrap());
        assert!(!s.knows("b").unwrap());
        assert_eq!(s.prune(150).unwrap(), 2);
        assert_eq!(s.history("a", 0, 100).unwrap().len(), 1);
    }
}
