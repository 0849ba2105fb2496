//! Enforce mode's brakes: which drifted items may be re-applied now (per-item minimum interval,
//! an hourly cap across all items) and the operator's pause (`agentctl enforce pause --for 30m`),
//! kept in the state directory so a daemon restart does not end it early.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::rollback::journal::{StateDir, StateError, write_atomic};

const PAUSE_FILE: &str = "enforce-pause.json";
const HOUR: Duration = Duration::from_secs(3600);

/// Why a drifted item was not re-applied this round.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HeldBack {
    pub key: String,
    pub reason: String,
}

#[derive(Debug)]
pub struct Limiter {
    min_interval: Duration,
    max_per_hour: usize,
    last: HashMap<String, Instant>,
    window: VecDeque<Instant>,
}

impl Limiter {
    pub fn new(min_interval: Duration, max_per_hour: usize) -> Limiter {
        Limiter {
            min_interval,
            max_per_hour,
            last: HashMap::new(),
            window: VecDeque::new(),
        }
    }

    /// Splits `keys` (drifted, enforceable) into those to re-apply now (and counts them as
    /// re-applied) and those held back, with the reason.
    pub fn select(&mut self, keys: &[String], now: Instant) -> (Vec<String>, Vec<HeldBack>) {
        while self
            .window
            .front()
            .is_some_and(|t| now.duration_since(*t) >= HOUR)
        {
            self.window.pop_front();
        }
        let mut go = Vec::new();
        let mut held = Vec::new();
        for key in keys {
            if let Some(t) = self.last.get(key)
                && now.duration_since(*t) < self.min_interval
            {
                let left = self.min_interval - now.duration_since(*t);
                held.push(HeldBack {
                    key: key.clone(),
                    reason: format!(
                        "re-applied {}s ago; next attempt in {}s (enforce.min_interval)",
                        now.duration_since(*t).as_secs(),
                        left.as_secs().max(1)
                    ),
                });
                continue;
            }
            if self.window.len() >= self.max_per_hour {
                held.push(HeldBack {
                    key: key.clone(),
                    reason: format!(
                        "{} re-applies in the last hour (enforce.max_per_hour): something keeps \
                         changing this host; enforcement resumes when the hour has passed",
                        self.window.len()
                    ),
                });
                continue;
            }
            self.last.insert(key.clone(), now);
            self.window.push_back(now);
            go.push(key.clone());
        }
        (go, held)
    }
}

/// An operator's pause of enforcement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pause {
    /// Seconds since the epoch when enforcement resumes by itself.
    pub until: u64,
    /// Who paused it (uid and user, or certificate CN).
    pub by: String,
    pub since: u64,
}

fn pause_path(state: &StateDir) -> PathBuf {
    state.path().join(PAUSE_FILE)
}

/// The pause in effect at `now` (seconds since the epoch), if any.
pub fn current_pause(state: &StateDir, now: u64) -> Option<Pause> {
    let text = std::fs::read_to_string(pause_path(state)).ok()?;
    let pause: Pause = serde_json::from_str(&text).ok()?;
    (pause.until > now).then_some(pause)
}

pub fn pause(state: &StateDir, pause: &Pause) -> Result<(), StateError> {
    let text = serde_json::to_string(pause).unwrap_or_default();
    write_atomic(&pause_path(state), text.as_bytes(), 0o644)
}

/// Ends a pause; true when one was in effect.
pub fn resume(state: &StateDir, now: u64) -> Result<bool, StateError> {
    let was = current_pause(state, now).is_some();
    match std::fs::remove_file(pause_path(state)) {
        Ok(()) => Ok(was),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(StateError::Io {
            what: "remove",
            path: pause_path(state),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(k: &[&str]) -> Vec<String> {
        k.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn per_item_interval_and_hourly_cap() {
        let t0 = Instant::now();
        let mut l = Limiter::new(Duration::from_secs(60), 3);
        let (go, held) = l.select(&keys(&["a", "b"]), t0);
        assert_eq!((go, held.len()), (keys(&["a", "b"]), 0));
        // 10 s later: both too recent.
        let (go, held) = l.select(&keys(&["a", "b"]), t0 + Duration::from_secs(10));
        assert!(go.is_empty());
        assert_eq!(
            held[0].reason,
            "re-applied 10s ago; next attempt in 50s (enforce.min_interval)"
        );
        // 61 s later: a goes (third of the hour), b hits the cap of 3.
        let (go, held) = l.select(&keys(&["a", "b"]), t0 + Duration::from_secs(61));
        assert_eq!(go, keys(&["a"]));
        assert_eq!(held[0].key, "b");
        assert!(held[0].reason.starts_with("3 re-applies in the last hour"));
        // After the hour the window has room again.
        let (go, _) = l.select(&keys(&["b"]), t0 + Duration::from_secs(3601));
        assert_eq!(go, keys(&["b"]));
    }

    #[test]
    fn pause_persists_and_expires() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        assert_eq!(current_pause(&state, 100), None);
        let p = Pause {
            until: 200,
            by: "uid 0 (root)".into(),
            since: 100,
        };
        pause(&state, &p).unwrap();
        assert_eq!(current_pause(&state, 150), Some(p));
        assert_eq!(current_pause(&state, 200), None, "expired at `until`");
        assert!(
            !resume(&state, 250).unwrap(),
            "an expired pause is not in effect"
        );
        pause(
            &state,
            &Pause {
                until: 500,
                by: "x".into(),
                since: 300,
            },
        )
        .unwrap();
        assert!(resume(&state, 300).unwrap());
        assert_eq!(current_pause(&state, 300), None);
    }
}
