//! Transactional apply and rollback.
//!
//! Apply: lock the state directory, plan, record every original value (and every value about to
//! be written) in the journal *before* the first write, then write step by step, recording
//! progress. A failed write restores what this run changed and reports the key, the value and
//! the kernel's error. Rollback restores the baseline in reverse order, one journaled step at a
//! time, leaving alone values someone else changed since (unless forced).

use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::journal::{Entry, Journal, Run, RunState, StateDir, StateError, Step};
use crate::audit::{Audit, Caller};
use crate::change::{self, ChangeError, Target, Value};
use crate::failpoint;
use crate::host::{HostError, HostRoot};
use crate::profile::Profile;
use crate::system::SystemActions;
use crate::tuning::plan::Scope;
use crate::tuning::units::UnitsObserved;
use crate::tuning::{self, plan};
use crate::verify::{Class, Report};

/// Kernel values that change as a side effect of writing another: recorded in the journal so
/// rollback restores them too.
const SIDE_EFFECTS: &[(&str, &str)] = &[(
    "/proc/sys/net/ipv4/tcp_congestion_control",
    "/proc/sys/net/ipv4/tcp_allowed_congestion_control",
)];

/// What apply and rollback act with.
pub struct Session<'a> {
    pub host: &'a HostRoot,
    pub state: &'a StateDir,
    pub system: &'a mut dyn SystemActions,
    pub audit: &'a Audit,
    pub caller: Caller,
    /// What the bus said about the managed units (their limits are planned only with it).
    pub units: Option<UnitsObserved>,
    /// Asks systemd (over the bus) to reload, or to restart a service whose configuration file
    /// changed (irqbalance).
    pub systemd: Option<&'a mut SystemdHook<'a>>,
}

/// Carries out a [`SystemdOp`] (over the bus in production; counted in tests).
pub type SystemdHook<'a> = dyn FnMut(SystemdOp<'_>) -> Result<(), String> + 'a;

/// What apply and rollback ask of systemd after the files it reads changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SystemdOp<'u> {
    /// Manager.Reload: unit drop-ins, system.conf.d.
    Reload,
    /// TryRestartUnit: a running service re-reads its configuration.
    TryRestart(&'u str),
}

/// Where unit files, drop-ins and system.conf.d live: a change there needs a systemd reload.
const SYSTEMD_DIR: &str = "/etc/systemd/";
/// Debian's GRUB drop-ins: a change there needs update-grub.
const GRUB_DROP_INS: &str = "/etc/default/grub.d/";

/// What has to happen after files changed, so the programs that read them see the change.
#[derive(Debug, Default)]
struct FollowUps {
    reload: bool,
    bootloader: bool,
    restart: Vec<&'static str>,
}

impl FollowUps {
    fn of<'t>(targets: impl Iterator<Item = &'t Target>) -> FollowUps {
        let mut f = FollowUps::default();
        for t in targets {
            let Target::ConfigFile { path } = t else {
                continue;
            };
            f.reload |= path.starts_with(SYSTEMD_DIR);
            f.bootloader |= path.starts_with(GRUB_DROP_INS);
            if let Some(unit) = tuning::isolation::irq::restart_after(path)
                && !f.restart.contains(&unit)
            {
                f.restart.push(unit);
            }
        }
        f
    }

    /// Runs them; returns (systemd reload error, other errors, notes).
    fn run(&self, s: &mut Session<'_>) -> (Option<String>, Vec<String>, Vec<String>) {
        let mut reload_error = None;
        let mut errors = Vec::new();
        let mut notes = Vec::new();
        if let Some(systemd) = s.systemd.as_mut() {
            if self.reload {
                reload_error = systemd(SystemdOp::Reload).err();
            }
            for unit in &self.restart {
                if let Err(e) = systemd(SystemdOp::TryRestart(unit)) {
                    errors.push(format!("restart {unit}: {e}"));
                }
            }
        }
        if self.bootloader {
            match s.system.update_bootloader() {
                Ok(note) => notes.push(note),
                Err(e) => errors.push(e.to_string()),
            }
        }
        (reload_error, errors, notes)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Failed(Box<ApplyFailure>),
    /// Refused before anything changed.
    #[error("refused before changing anything: {0}")]
    Refused(String),
}

/// A write that failed midway, and what was done about the rest of the run.
#[derive(Debug, thiserror::Error)]
#[error(
    "failed to apply {class} {key}: setting {} to {value}: {error}; {}",
    target.describe(),
    restored_summary(restored, restore_failures)
)]
pub struct ApplyFailure {
    pub class: &'static str,
    pub key: String,
    pub target: Target,
    pub value: String,
    pub error: ChangeError,
    /// Keys this run had changed and put back.
    pub restored: Vec<String>,
    /// Keys that could not be put back, with the error.
    pub restore_failures: Vec<String>,
}

fn restored_summary(restored: &[String], failures: &[String]) -> String {
    let mut s = if restored.is_empty() {
        "nothing had been changed by this run".to_owned()
    } else {
        format!(
            "restored the {} value(s) this run had changed",
            restored.len()
        )
    };
    if !failures.is_empty() {
        s.push_str(&format!(
            "; FAILED to restore: {} (the journal keeps them for `agentctl tune rollback`)",
            failures.join("; ")
        ));
    }
    s
}

#[derive(Debug, Clone, Serialize)]
pub struct ApplyOutcome {
    pub plan: plan::Plan,
    /// The previous apply, when it had been interrupted (as verify's `interrupted_apply`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interrupted: Option<crate::verify::InterruptedApply>,
    /// Verify after applying.
    pub after: Report,
    /// Set when unit drop-ins changed but systemd could not be reloaded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub systemd_reload_error: Option<String>,
    /// Writes the kernel refused as expected (managed IRQs): left as they were, apply went on.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub refused: Vec<RefusedChange>,
    /// Restarting a service or regenerating the boot loader configuration failed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub follow_up_errors: Vec<String>,
    /// What the follow-ups did (update-grub ran, or is not installed).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// A change the kernel refused in a way apply expects (see
/// [`tuning::isolation::expected_refusal`]).
#[derive(Debug, Clone, Serialize)]
pub struct RefusedChange {
    pub class: Class,
    pub key: String,
    pub target: Target,
    pub value: String,
    pub reason: String,
    pub error: String,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The plan for `profile` on this host, without changing anything (`--dry-run`).
pub fn plan(
    host: &HostRoot,
    profile: &Profile,
    classes: Option<&[Class]>,
    units: Option<&UnitsObserved>,
) -> (plan::Plan, Report) {
    plan_scope(host, profile, classes.into(), units)
}

/// [`plan`] for any [`Scope`].
pub fn plan_scope(
    host: &HostRoot,
    profile: &Profile,
    scope: Scope<'_>,
    units: Option<&UnitsObserved>,
) -> (plan::Plan, Report) {
    let report = tuning::verify_with_units(host, profile, units);
    let persisted = plan::observe_persistence(host);
    (plan::plan(profile, &report, &persisted, scope), report)
}

/// Classes whose settings live only in the running kernel: a reboot loses them, so the daemon
/// re-applies them at start (sysctl and limits persist in the agent's files instead).
/// Isolation is among them: IRQ affinities and workqueue masks reset at boot (its drop-ins
/// persist, and are simply found right).
pub const RUNTIME_ONLY: &[Class] = &[
    Class::Cpu,
    Class::Memory,
    Class::Block,
    Class::Clocksource,
    Class::Isolation,
];

/// The daemon's entry point at start: re-applies the runtime-only settings of `profile`,
/// journaled like any apply.
pub fn reapply_runtime(s: &mut Session<'_>, profile: &Profile) -> Result<ApplyOutcome, ApplyError> {
    apply(s, profile, Some(RUNTIME_ONLY))
}

/// Applies `profile` (only `classes` when given: the daemon's runtime re-apply at start).
pub fn apply(
    s: &mut Session<'_>,
    profile: &Profile,
    classes: Option<&[Class]>,
) -> Result<ApplyOutcome, ApplyError> {
    apply_scope(s, profile, classes.into())
}

/// [`apply`] for any [`Scope`] (enforce mode re-applies single items).
pub fn apply_scope(
    s: &mut Session<'_>,
    profile: &Profile,
    scope: Scope<'_>,
) -> Result<ApplyOutcome, ApplyError> {
    apply_checked(s, profile, scope, &|_| Ok(()))
}

/// [`apply_scope`], refusing the plan before the first write when `check` says so (the daemon:
/// a change that needs a capability it dropped).
pub fn apply_checked(
    s: &mut Session<'_>,
    profile: &Profile,
    scope: Scope<'_>,
    check: &dyn Fn(&plan::Plan) -> Result<(), String>,
) -> Result<ApplyOutcome, ApplyError> {
    let _lock = s.state.lock()?;
    let mut journal = s.state.load()?;
    let interrupted = mark_interrupted(&mut journal).as_ref().map(Run::summary);
    let (plan, _) = plan_scope(s.host, profile, scope, s.units.as_ref());
    check(&plan).map_err(ApplyError::Refused)?;
    if plan.is_empty() {
        if interrupted.is_some() {
            // The host now matches: record a complete (empty) run, or the interrupted one
            // would stay the last run and verify would keep warning about it.
            journal.runs.push(Run {
                profile: profile.name.clone(),
                profile_path: profile.source.display().to_string(),
                started: now(),
                finished: Some(now()),
                uid: s.caller.uid,
                user: s.caller.user.clone(),
                state: RunState::Complete,
                steps: Vec::new(),
                error: None,
            });
            s.state.save(&journal)?;
        }
        let after = tuning::verify_with_units(s.host, profile, s.units.as_ref());
        return Ok(ApplyOutcome {
            plan,
            interrupted,
            after,
            systemd_reload_error: None,
            refused: Vec::new(),
            follow_up_errors: Vec::new(),
            notes: Vec::new(),
        });
    }

    // Record first: originals not yet known, and every value about to be written.
    let baseline_before = journal.baseline.len();
    for c in &plan.changes {
        record(
            &mut journal,
            c.class,
            &c.key,
            &c.target,
            &c.from,
            &c.to,
            None,
        );
        if let Target::KernelFile { path } = &c.target {
            for (_, side) in SIDE_EFFECTS.iter().filter(|(p, _)| p == path) {
                let target = Target::KernelFile {
                    path: (*side).to_owned(),
                };
                if journal.entry(&target).is_none()
                    && let Ok(original) = change::observe(s.host, &target)
                {
                    let key = side.trim_start_matches("/proc/sys/").replace('/', ".");
                    record(
                        &mut journal,
                        c.class,
                        &key,
                        &target,
                        &original,
                        &original,
                        Some(&c.key),
                    );
                }
            }
        }
    }
    journal.runs.push(Run {
        profile: profile.name.clone(),
        profile_path: profile.source.display().to_string(),
        started: now(),
        finished: None,
        uid: s.caller.uid,
        user: s.caller.user.clone(),
        state: RunState::InProgress,
        steps: plan
            .changes
            .iter()
            .map(|c| Step {
                class: c.class,
                key: c.key.clone(),
                target: c.target.clone(),
                before: c.from.clone(),
                after: c.to.clone(),
                done: false,
            })
            .collect(),
        error: None,
    });
    s.state.save(&journal)?;

    let mut refused = Vec::new();
    for (i, c) in plan.changes.iter().enumerate() {
        failpoint::hit("apply-before-step");
        let result = match failpoint::injected_error("apply-write") {
            Some(source) => Err(ChangeError::Host(HostError::Write {
                path: c.target.describe().into(),
                value: c.to.describe(),
                source,
            })),
            None => change::execute(s.host, s.system, &c.target, &c.to),
        };
        if let Err(error) = result {
            let expected = error.os_error().and_then(|errno| {
                Some((
                    errno,
                    tuning::isolation::expected_refusal(&c.target, errno)?,
                ))
            });
            let Some((errno, reason)) = expected else {
                return Err(fail_run(s, &mut journal, baseline_before, i, error));
            };
            // Nothing changed; the item reads `unsupported` from now on (this boot).
            if let Target::KernelFile { path } = &c.target {
                let refusal = tuning::isolation::Refusal {
                    value: c.to.describe(),
                    errno,
                    error: error.to_string(),
                    at: now(),
                };
                if let Err(e) = tuning::isolation::record_refusal(s.host, path, refusal) {
                    log::warn!("cannot record the refused write of {path}: {e}");
                }
            }
            s.audit.record(
                &s.caller,
                &format!(
                    "apply {}: {} {}: refused by the kernel, left at {}: {error}",
                    profile.name,
                    c.class.as_str(),
                    c.key,
                    c.from.describe()
                ),
                &[
                    ("NODE_AGENT_ACTION", "apply-refused"),
                    ("NODE_AGENT_PROFILE", &profile.name),
                    ("NODE_AGENT_KEY", &c.key),
                    ("NODE_AGENT_BEFORE", &c.from.describe()),
                ],
            );
            refused.push(RefusedChange {
                class: c.class,
                key: c.key.clone(),
                target: c.target.clone(),
                value: c.to.describe(),
                reason: reason.to_owned(),
                error: error.to_string(),
            });
            continue;
        }
        // Audited at once: a crash before the journal marks the step done must not leave a
        // change without its record.
        s.audit.record(
            &s.caller,
            &format!(
                "apply {}: {} {}: {} -> {}",
                profile.name,
                c.class.as_str(),
                c.key,
                c.from.describe(),
                c.to.describe()
            ),
            &[
                ("NODE_AGENT_ACTION", "apply"),
                ("NODE_AGENT_PROFILE", &profile.name),
                ("NODE_AGENT_KEY", &c.key),
                ("NODE_AGENT_BEFORE", &c.from.describe()),
                ("NODE_AGENT_AFTER", &c.to.describe()),
            ],
        );
        failpoint::hit("apply-after-step");
        if let Some(run) = journal.runs.last_mut() {
            run.steps[i].done = true;
        }
        s.state.save(&journal)?;
    }
    if let Some(run) = journal.runs.last_mut() {
        run.state = RunState::Complete;
        run.finished = Some(now());
    }
    s.state.save(&journal)?;
    let (systemd_reload_error, follow_up_errors, notes) =
        FollowUps::of(plan.changes.iter().map(|c| &c.target)).run(s);
    // With unit limits, the caller re-observes the units after the reload for its report.
    let after = tuning::verify_with_units(s.host, profile, s.units.as_ref());
    Ok(ApplyOutcome {
        plan,
        interrupted,
        after,
        systemd_reload_error,
        refused,
        follow_up_errors,
        notes,
    })
}

/// Adds an original value to the baseline unless known, and the value about to be written to
/// the values the agent has set there.
fn record(
    journal: &mut Journal,
    class: Class,
    key: &str,
    target: &Target,
    from: &Value,
    to: &Value,
    side_effect_of: Option<&str>,
) {
    match journal.entry_mut(target) {
        Some(e) => {
            if !e.agent_values.contains(to) {
                e.agent_values.push(to.clone());
            }
        }
        None => journal.baseline.push(Entry {
            class,
            key: key.to_owned(),
            target: target.clone(),
            original: from.clone(),
            agent_values: if side_effect_of.is_some() {
                Vec::new()
            } else {
                vec![to.clone()]
            },
            side_effect_of: side_effect_of.map(str::to_owned),
        }),
    }
}

/// A run that is still in progress while we hold the lock died; say so in the journal.
fn mark_interrupted(journal: &mut Journal) -> Option<Run> {
    let run = journal.runs.last_mut()?;
    if !matches!(run.state, RunState::InProgress | RunState::Interrupted) {
        return None;
    }
    run.state = RunState::Interrupted;
    Some(run.clone())
}

/// Restores what run steps `..failed` changed, drops the baseline entries this run added
/// (they hold the original values again), and records the failure.
fn fail_run(
    s: &mut Session<'_>,
    journal: &mut Journal,
    baseline_before: usize,
    failed: usize,
    error: ChangeError,
) -> ApplyError {
    let run = journal
        .runs
        .last()
        .cloned()
        .expect("run recorded before writing");
    let step = &run.steps[failed];
    let mut restored = Vec::new();
    let mut restore_failures = Vec::new();
    // Every restore is a change of its own and gets its audit record.
    let audit_restore = |s: &Session<'_>, class: Class, key: &str, from: &str, to: &Value| {
        s.audit.record(
            &s.caller,
            &format!(
                "apply {} failed, restoring {} {key}: {from} -> {}",
                run.profile,
                class.as_str(),
                to.describe()
            ),
            &[
                ("NODE_AGENT_ACTION", "apply-restore"),
                ("NODE_AGENT_PROFILE", &run.profile),
                ("NODE_AGENT_KEY", key),
                ("NODE_AGENT_BEFORE", from),
                ("NODE_AGENT_AFTER", &to.describe()),
            ],
        );
    };
    for done in run.steps[..failed].iter().rev() {
        match change::execute(s.host, s.system, &done.target, &done.before) {
            Ok(()) => {
                audit_restore(
                    s,
                    done.class,
                    &done.key,
                    &done.after.describe(),
                    &done.before,
                );
                restored.push(done.key.clone());
            }
            Err(e) => restore_failures.push(format!("{}: {e}", done.key)),
        }
    }
    // Side-effect entries of this run go back too, where the side effect happened.
    for e in journal.baseline[baseline_before..]
        .iter()
        .filter(|e| e.side_effect_of.is_some())
    {
        let current = change::observe(s.host, &e.target).ok();
        if current.as_ref().is_some_and(|c| c.same_as(&e.original)) {
            continue;
        }
        match change::execute(s.host, s.system, &e.target, &e.original) {
            Ok(()) => {
                let from = current.map_or("unreadable".to_owned(), |c| c.describe());
                audit_restore(s, e.class, &e.key, &from, &e.original);
            }
            Err(err) => restore_failures.push(format!("{}: {err}", e.key)),
        }
    }
    if restore_failures.is_empty() {
        journal.baseline.truncate(baseline_before);
    }
    let (reload_error, errors, _) =
        FollowUps::of(run.steps[..failed].iter().map(|st| &st.target)).run(s);
    if let Some(e) = reload_error {
        restore_failures.push(format!("systemd reload: {e}"));
    }
    restore_failures.extend(errors);
    let message = format!("{} {}: {error}", step.class.as_str(), step.key);
    if let Some(r) = journal.runs.last_mut() {
        r.state = RunState::FailedRolledBack;
        r.finished = Some(now());
        r.error = Some(message.clone());
        for st in &mut r.steps {
            st.done = false;
        }
    }
    // The failure is reported either way; a journal write error must not hide it.
    let _ = s.state.save(journal);
    s.audit.record(
        &s.caller,
        &format!(
            "apply {} failed and was rolled back: {message}",
            run.profile
        ),
        &[
            ("NODE_AGENT_ACTION", "apply-failed"),
            ("NODE_AGENT_PROFILE", &run.profile),
            ("NODE_AGENT_KEY", &step.key),
        ],
    );
    ApplyError::Failed(Box::new(ApplyFailure {
        class: step.class.as_str(),
        key: step.key.clone(),
        target: step.target.clone(),
        value: step.after.describe(),
        error,
        restored,
        restore_failures,
    }))
}

/// One value rollback dealt with.
#[derive(Debug, Clone, Serialize)]
pub struct Restored {
    pub class: Class,
    pub key: String,
    pub target: Target,
    pub from: Value,
    pub to: Value,
}

/// A value rollback left alone or could not restore.
#[derive(Debug, Clone, Serialize)]
pub struct NotRestored {
    pub class: Class,
    pub key: String,
    pub target: Target,
    pub current: Option<Value>,
    pub original: Value,
    pub reason: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct RollbackOutcome {
    pub restored: Vec<Restored>,
    /// Changed by someone else since the agent wrote it; kept in the journal.
    pub left_alone: Vec<NotRestored>,
    /// Restoring failed; kept in the journal.
    pub failed: Vec<NotRestored>,
    /// Set when unit drop-ins were restored but systemd could not be reloaded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub systemd_reload_error: Option<String>,
    /// Restarting a service or regenerating the boot loader configuration failed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub follow_up_errors: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

impl RollbackOutcome {
    pub fn is_complete(&self) -> bool {
        self.left_alone.is_empty() && self.failed.is_empty()
    }
}

/// Restores every recorded original value, newest first. With `force`, also values someone
/// else changed after the agent wrote them.
pub fn rollback(s: &mut Session<'_>, force: bool) -> Result<RollbackOutcome, StateError> {
    let _lock = s.state.lock()?;
    let mut journal = s.state.load()?;
    mark_interrupted(&mut journal);
    let mut out = RollbackOutcome::default();
    let mut keep = Vec::new();
    while let Some(entry) = journal.baseline.pop() {
        failpoint::hit("rollback-before-step");
        let not_restored = |current: Option<Value>, reason: String| NotRestored {
            class: entry.class,
            key: entry.key.clone(),
            target: entry.target.clone(),
            current,
            original: entry.original.clone(),
            reason,
        };
        let current = match change::observe(s.host, &entry.target) {
            Ok(c) => c,
            Err(e) => {
                out.failed.push(not_restored(None, e.to_string()));
                keep.push(entry);
                continue;
            }
        };
        if current.same_as(&entry.original) {
            s.state.save(&with_kept(&journal, &keep))?;
            continue;
        }
        let ours =
            entry.side_effect_of.is_some() || entry.agent_values.iter().any(|v| current.carries(v));
        if !ours && !force {
            let wrote = entry
                .agent_values
                .last()
                .map(Value::describe)
                .unwrap_or_default();
            out.left_alone.push(not_restored(
                Some(current.clone()),
                format!(
                    "changed by someone else since the agent set it to {wrote}; use --force to restore anyway"
                ),
            ));
            keep.push(entry);
            continue;
        }
        match change::execute(s.host, s.system, &entry.target, &entry.original) {
            Ok(()) => {
                s.audit.record(
                    &s.caller,
                    &format!(
                        "rollback: {} {}: {} -> {}",
                        entry.class.as_str(),
                        entry.key,
                        current.describe(),
                        entry.original.describe()
                    ),
                    &[
                        ("NODE_AGENT_ACTION", "rollback"),
                        ("NODE_AGENT_KEY", &entry.key),
                        ("NODE_AGENT_BEFORE", &current.describe()),
                        ("NODE_AGENT_AFTER", &entry.original.describe()),
                    ],
                );
                out.restored.push(Restored {
                    class: entry.class,
                    key: entry.key.clone(),
                    target: entry.target.clone(),
                    from: current,
                    to: entry.original.clone(),
                });
                s.state.save(&with_kept(&journal, &keep))?;
            }
            Err(e) => {
                out.failed.push(not_restored(Some(current), e.to_string()));
                keep.push(entry);
            }
        }
    }
    out.restored.reverse();
    (out.systemd_reload_error, out.follow_up_errors, out.notes) =
        FollowUps::of(out.restored.iter().map(|r| &r.target)).run(s);
    if keep.is_empty() {
        s.state.remove()?;
    } else {
        s.state.save(&with_kept(&journal, &keep))?;
    }
    Ok(out)
}

/// The journal as it stands mid-rollback: entries not yet visited plus those kept.
fn with_kept(journal: &Journal, keep: &[Entry]) -> Journal {
    let mut j = journal.clone();
    j.baseline.extend(keep.iter().rev().cloned());
    j
}
