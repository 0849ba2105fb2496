//! Audit records for every change the agent makes: appended (and fsynced) to the state
//! directory's audit.log, and to journald (field NODE_AGENT_AUDIT=1) when it is there,
//! otherwise to stderr, so a change is never silent.

use std::io::Write;
use std::path::PathBuf;

use log::kv::{ToValue, Value};
use systemd_journal_logger::JournalLog;

/// Who asked for a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    /// The user name; with sudo, `root (sudo by alice)`.
    pub user: String,
}

impl Caller {
    /// The user running this process.
    pub fn current() -> Caller {
        let uid = nix::unistd::getuid();
        let name = nix::unistd::User::from_uid(uid)
            .ok()
            .flatten()
            .map(|u| u.name)
            .unwrap_or_else(|| uid.to_string());
        let user = match std::env::var("SUDO_USER") {
            Ok(s) if !s.is_empty() && s != name => format!("{name} (sudo by {s})"),
            _ => name,
        };
        Caller {
            uid: uid.as_raw(),
            user,
        }
    }
}

/// Where audit records go.
pub struct Audit {
    journal: Option<JournalLog>,
    log_file: Option<PathBuf>,
}

impl std::fmt::Debug for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Audit")
            .field("journald", &self.journal.is_some())
            .finish()
    }
}

impl Audit {
    /// journald when its socket is there, stderr otherwise; and `state_dir/audit.log`.
    pub fn new(state_dir: Option<&std::path::Path>) -> Audit {
        let journal = JournalLog::empty()
            .ok()
            .map(|j| j.with_syslog_identifier("node-agent".into()));
        Audit {
            journal,
            log_file: state_dir.map(|d| d.join("audit.log")),
        }
    }

    /// Appends one JSON line and fsyncs it: the record survives a crash right after.
    fn append(&self, line: &serde_json::Value) -> std::io::Result<()> {
        let Some(path) = &self.log_file else {
            return Ok(());
        };
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        writeln!(f, "{line}")?;
        f.sync_data()
    }

    /// Records one action. `fields` become journal fields (upper-cased by convention).
    pub fn record(&self, caller: &Caller, message: &str, fields: &[(&str, &str)]) {
        let uid = caller.uid.to_string();
        let mut kv: Vec<(&str, Value<'_>)> = vec![
            ("NODE_AGENT_AUDIT", "1".to_value()),
            ("NODE_AGENT_UID", uid.as_str().to_value()),
            ("NODE_AGENT_USER", caller.user.as_str().to_value()),
        ];
        kv.extend(fields.iter().map(|(k, v)| (*k, v.to_value())));
        let sent = self.journal.as_ref().is_some_and(|j| {
            j.journal_send(
                &log::Record::builder()
                    .level(log::Level::Info)
                    .target("node_agent::audit")
                    .args(format_args!("{message}"))
                    .key_values(&kv)
                    .build(),
            )
            .is_ok()
        });
        let time = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let line = serde_json::json!({
            "time": time,
            "uid": caller.uid,
            "user": caller.user,
            "message": message,
            "fields": fields.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<std::collections::BTreeMap<_, _>>(),
        });
        let logged = self.append(&line);
        #[allow(clippy::print_stderr)]
        {
            if !sent {
                eprintln!("audit: {message} (by {} uid {})", caller.user, caller.uid);
            }
            if let Err(e) = logged {
                eprintln!("audit: failed to append to the audit log: {e}");
            }
        }
    }
}
