//! The rollback journal: the host's original values, recorded once before the agent first
//! changes them, and the history of applies. Stored as JSON in the state directory, replaced
//! atomically (temp file, fsync, rename, fsync of the directory) on every update, so a crash at
//! any point leaves either the previous or the next complete journal.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::change::{Target, Value};
use crate::verify::Class;

/// Bumped when the format changes incompatibly; older journals stay readable (see `load`).
pub const JOURNAL_FORMAT_VERSION: u32 = 1;
pub const STATE_DIR_ENV: &str = "NODE_AGENT_STATE_DIR";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/node-agent";
const JOURNAL_FILE: &str = "journal.json";
const LOCK_FILE: &str = "lock";

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("failed to {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the rollback journal {path} is unreadable: {detail}; it was left untouched")]
    Corrupt { path: PathBuf, detail: String },
    #[error(
        "the rollback journal {path} has format version {found}, newer than this agent \
         understands ({JOURNAL_FORMAT_VERSION}); use a newer agentctl"
    )]
    TooNew { path: PathBuf, found: u32 },
    #[error(
        "another apply or rollback is running (lock {path} held{holder}); wait for it to finish"
    )]
    Locked { path: PathBuf, holder: String },
}

/// One original value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub class: Class,
    pub key: String,
    pub target: Target,
    /// The value before the agent first touched it.
    pub original: Value,
    /// Every value the agent has set (or was about to set) here, oldest first. A current
    /// value outside this list (and not the original) was changed by someone else.
    #[serde(default)]
    pub agent_values: Vec<Value>,
    /// Recorded only so rollback restores it: the kernel changed it as a side effect of
    /// another write (tcp_allowed_congestion_control when tcp_congestion_control is set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub side_effect_of: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunState {
    /// Started and not finished: if no process holds the lock, it was interrupted.
    InProgress,
    /// Found in progress by a later apply or rollback holding the lock: the process died.
    Interrupted,
    Complete,
    /// A write failed; what this run had changed was restored.
    FailedRolledBack,
}

/// One step of a run: what it set, from what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    pub class: Class,
    pub key: String,
    pub target: Target,
    pub before: Value,
    pub after: Value,
    pub done: bool,
}

/// One apply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run {
    pub profile: String,
    pub profile_path: String,
    /// Seconds since the epoch.
    pub started: u64,
    pub finished: Option<u64>,
    pub uid: u32,
    pub user: String,
    pub state: RunState,
    pub steps: Vec<Step>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    pub format_version: u32,
    pub baseline: Vec<Entry>,
    pub runs: Vec<Run>,
}

impl Default for Journal {
    fn default() -> Self {
        Journal {
            format_version: JOURNAL_FORMAT_VERSION,
            baseline: Vec::new(),
            runs: Vec::new(),
        }
    }
}

impl Journal {
    pub fn entry(&self, target: &Target) -> Option<&Entry> {
        self.baseline.iter().find(|e| e.target == *target)
    }

    pub fn entry_mut(&mut self, target: &Target) -> Option<&mut Entry> {
        self.baseline.iter_mut().find(|e| e.target == *target)
    }

    /// The last run, if it never finished (interrupted, or running right now: see
    /// [`StateDir::holder`]).
    pub fn unfinished(&self) -> Option<&Run> {
        self.runs
            .last()
            .filter(|r| matches!(r.state, RunState::InProgress | RunState::Interrupted))
    }

    /// The last run that completed.
    pub fn last_complete(&self) -> Option<&Run> {
        self.runs
            .iter()
            .rev()
            .find(|r| r.state == RunState::Complete)
    }
}

/// The state directory: journal, lock, audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateDir {
    dir: PathBuf,
}

/// Holds the exclusive lock while alive.
#[derive(Debug)]
pub struct StateLock {
    _file: File,
}

impl StateDir {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        StateDir { dir: dir.into() }
    }

    /// `NODE_AGENT_STATE_DIR`, default /var/lib/node-agent.
    pub fn from_env() -> Self {
        match std::env::var_os(STATE_DIR_ENV) {
            Some(d) if !d.is_empty() => StateDir::new(d),
            _ => StateDir::new(DEFAULT_STATE_DIR),
        }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    pub fn journal_path(&self) -> PathBuf {
        self.dir.join(JOURNAL_FILE)
    }

    fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StateError + use<> {
        let path = path.to_owned();
        move |source| StateError::Io { what, path, source }
    }

    /// Takes the exclusive lock that serialises apply and rollback across processes; fails at
    /// once, naming the holder, when another process has it.
    pub fn lock(&self) -> Result<StateLock, StateError> {
        std::fs::create_dir_all(&self.dir).map_err(Self::io("create", &self.dir))?;
        let path = self.dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(Self::io("open", &path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = match holder.trim() {
                    "" => String::new(),
                    pid => format!(" by pid {pid}"),
                };
                return Err(StateError::Locked { path, holder });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(Self::io("lock", &path)(e)),
        }
        file.set_len(0).map_err(Self::io("write", &path))?;
        writeln!(file, "{}", std::process::id()).map_err(Self::io("write", &path))?;
        Ok(StateLock { _file: file })
    }

    /// The pid holding the lock, if an apply or rollback is running now. Takes and releases
    /// the lock when free; never creates anything.
    pub fn holder(&self) -> Option<String> {
        let path = self.dir.join(LOCK_FILE);
        let mut file = File::open(&path).ok()?;
        match file.try_lock_shared() {
            Ok(()) => None,
            Err(_) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                Some(pid.trim().to_owned())
            }
        }
    }

    /// The journal, or an empty one when none exists yet.
    pub fn load(&self) -> Result<Journal, StateError> {
        let path = self.journal_path();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Journal::default()),
            Err(e) => return Err(Self::io("read", &path)(e)),
        };
        let version: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| StateError::Corrupt {
                path: path.clone(),
                detail: e.to_string(),
            })?;
        let found = version
            .get("format_version")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0) as u32;
        if found > JOURNAL_FORMAT_VERSION {
            return Err(StateError::TooNew { path, found });
        }
        // Version 1 is the first; older versions would be converted here.
        serde_json::from_value(version).map_err(|e| StateError::Corrupt {
            path,
            detail: e.to_string(),
        })
    }

    /// Replaces the journal atomically and durably.
    pub fn save(&self, journal: &Journal) -> Result<(), StateError> {
        let text = serde_json::to_string_pretty(journal).unwrap_or_default();
        write_atomic(&self.journal_path(), text.as_bytes(), 0o600)
    }

    /// Removes the journal (after a complete rollback).
    pub fn remove(&self) -> Result<(), StateError> {
        let path = self.journal_path();
        match std::fs::remove_file(&path) {
            Ok(()) => sync_dir(&self.dir),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Self::io("remove", &path)(e)),
        }
    }
}

/// Writes `path` by way of a temporary file in the same directory: write, fsync, rename,
/// fsync of the directory.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), StateError> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir).map_err(StateDir::io("create", dir))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(StateDir::io("create", &tmp))?;
    f.write_all(bytes).map_err(StateDir::io("write", &tmp))?;
    f.sync_all().map_err(StateDir::io("fsync", &tmp))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(StateDir::io("rename into place", path))?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<(), StateError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(StateDir::io("fsync", dir))
}

impl Run {
    /// The run as the report's `interrupted_apply` shows it.
    pub fn summary(&self) -> crate::verify::InterruptedApply {
        crate::verify::InterruptedApply {
            profile: self.profile.clone(),
            started: self.started,
            user: self.user.clone(),
            steps_done: self.steps.iter().filter(|s| s.done).count(),
            steps_total: self.steps.len(),
        }
    }
}

/// The journal's last run when it never finished and no process holds the lock.
pub fn interrupted_apply(state: &StateDir) -> Option<crate::verify::InterruptedApply> {
    let journal = state.load().ok()?;
    let run = journal.unfinished()?;
    if state.holder().is_some() {
        return None;
    }
    Some(crate::verify::InterruptedApply {
        profile: run.profile.clone(),
        started: run.started,
        user: run.user.clone(),
        steps_done: run.steps.iter().filter(|s| s.done).count(),
        steps_total: run.steps.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_load_round_trip_and_lock() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path().join("state"));
        assert_eq!(state.load().unwrap(), Journal::default());
        let lock = state.lock().unwrap();
        let err = state.lock().unwrap_err();
        assert!(
            err.to_string()
                .contains(&format!("held by pid {}", std::process::id())),
            "{err}"
        );
        let mut j = Journal::default();
        j.baseline.push(Entry {
            class: Class::Sysctl,
            key: "vm.swappiness".into(),
            target: Target::KernelFile {
                path: "/proc/sys/vm/swappiness".into(),
            },
            original: Value::text("60"),
            agent_values: vec![Value::text("10")],
            side_effect_of: None,
        });
        state.save(&j).unwrap();
        assert_eq!(state.load().unwrap(), j);
        drop(lock);
        assert!(state.lock().is_ok());
    }

    #[test]
    fn refuses_newer_and_corrupt_journals() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        std::fs::write(
            state.journal_path(),
            r#"{"format_version": 9, "baseline": [], "runs": []}"#,
        )
        .unwrap();
        assert!(matches!(
            state.load(),
            Err(StateError::TooNew { found: 9, .. })
        ));
        std::fs::write(state.journal_path(), "{ not json").unwrap();
        assert!(matches!(state.load(), Err(StateError::Corrupt { .. })));
    }
}
