//! Conversions between the library's types and the generated messages of `nodeagent.v1`, so
//! the RPC layer is a thin shell and agentctl renders what the daemon sends with the same code
//! as a local run.
//!
//! - Rust → proto: `From<&T>` for every response message (reports, plans, apply and rollback
//!   outcomes, units, drift events) and `From<T>` for the enums.
//! - Requests → Rust: free functions that validate what a request carries and refuse it with
//!   `INVALID_ARGUMENT`, the message starting with the field's name ([`classes_from_proto`],
//!   [`unit_action_from_proto`], [`pause_duration`], [`unit_name`], [`managed_unit`]).
//! - proto → Rust for the client: `From<pb::Report> for Report` (and the plan, unit status):
//!   lenient, since a newer daemon may send enum values this agentctl does not know. Those map
//!   to [`UNKNOWN_CLASS`] / [`UNKNOWN_STATUS`] with the item's reason saying so, and the
//!   conversion goes on.

use std::time::Duration;

use node_agent_proto::v1 as pb;
use prost_types::Timestamp;
use tonic::Status as RpcStatus;

use crate::change::{Target, Value};
use crate::daemon::drift::{DriftEvent, Transition};
use crate::profile::types::UnitName;
use crate::rollback::apply::{ApplyOutcome, NotRestored, RefusedChange, Restored, RollbackOutcome};
use crate::rollback::journal::Run;
use crate::settings::{Mode, Units};
use crate::tuning::plan::{Change, Plan, Skipped};
use crate::units::{self, JobOp, JobResult, PlatformReport, Step, UnitStatus};
use crate::verify::{Class, InterruptedApply, Item, ProfileRef, Report, Status, Summary};

/// The class an item of a class this agentctl does not know is shown under.
pub const UNKNOWN_CLASS: Class = Class::Sysctl;
/// The status an item with a status this agentctl does not know gets: a finding (exit 1), and
/// "could not be read" is what this client can honestly say about it.
pub const UNKNOWN_STATUS: Status = Status::Error;
/// The longest pause of enforcement EnforcePause accepts.
pub const MAX_PAUSE: Duration = Duration::from_secs(24 * 3600);

// ---------------------------------------------------------------------------------------------
// Time

/// A protobuf timestamp from seconds since the epoch.
pub fn timestamp_from_secs(secs: u64) -> Timestamp {
    Timestamp {
        seconds: i64::try_from(secs).unwrap_or(i64::MAX),
        nanos: 0,
    }
}

/// Seconds since the epoch from a timestamp (0 when unset or before the epoch).
pub fn secs_from_timestamp(ts: Option<&Timestamp>) -> u64 {
    ts.map_or(0, |t| u64::try_from(t.seconds).unwrap_or(0))
}

/// A timestamp from microseconds since the epoch; 0 (systemd's "never") is unset.
pub fn timestamp_from_us(us: u64) -> Option<Timestamp> {
    (us != 0).then(|| Timestamp {
        seconds: i64::try_from(us / 1_000_000).unwrap_or(i64::MAX),
        nanos: i32::try_from(us % 1_000_000 * 1000).unwrap_or(0),
    })
}

/// Microseconds since the epoch from a timestamp (0 when unset or before the epoch).
pub fn us_from_timestamp(ts: Option<&Timestamp>) -> u64 {
    ts.map_or(0, |t| {
        u64::try_from(t.seconds).map_or(0, |s| {
            s.saturating_mul(1_000_000)
                .saturating_add(u64::try_from(t.nanos).unwrap_or(0) / 1000)
        })
    })
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

// ---------------------------------------------------------------------------------------------
// Enums

impl From<Class> for pb::Class {
    fn from(c: Class) -> pb::Class {
        match c {
            Class::Sysctl => pb::Class::Sysctl,
            Class::Cpu => pb::Class::Cpu,
            Class::Memory => pb::Class::Memory,
            Class::Block => pb::Class::Block,
            Class::Limits => pb::Class::Limits,
            Class::Mount => pb::Class::Mount,
            Class::Clocksource => pb::Class::Clocksource,
            Class::Units => pb::Class::Units,
            Class::Isolation => pb::Class::Isolation,
            Class::Cmdline => pb::Class::Cmdline,
        }
    }
}

/// The class of a proto `Class` number; `None` for UNSPECIFIED and numbers this agent does not
/// know.
pub fn class_from_proto(raw: i32) -> Option<Class> {
    Some(match pb::Class::try_from(raw).ok()? {
        pb::Class::Unspecified => return None,
        pb::Class::Sysctl => Class::Sysctl,
        pb::Class::Cpu => Class::Cpu,
        pb::Class::Memory => Class::Memory,
        pb::Class::Block => Class::Block,
        pb::Class::Limits => Class::Limits,
        pb::Class::Mount => Class::Mount,
        pb::Class::Clocksource => Class::Clocksource,
        pb::Class::Units => Class::Units,
        pb::Class::Isolation => Class::Isolation,
        pb::Class::Cmdline => Class::Cmdline,
    })
}

impl From<Status> for pb::ItemStatus {
    fn from(s: Status) -> pb::ItemStatus {
        match s {
            Status::Pass => pb::ItemStatus::Pass,
            Status::Drift => pb::ItemStatus::Drift,
            Status::PendingReboot => pb::ItemStatus::PendingReboot,
            Status::NotPersistent => pb::ItemStatus::NotPersistent,
            Status::Unsupported => pb::ItemStatus::Unsupported,
            Status::Error => pb::ItemStatus::Error,
        }
    }
}

/// The status of a proto `ItemStatus` number; `None` for UNSPECIFIED and numbers this agent
/// does not know.
pub fn status_from_proto(raw: i32) -> Option<Status> {
    Some(match pb::ItemStatus::try_from(raw).ok()? {
        pb::ItemStatus::Unspecified => return None,
        pb::ItemStatus::Pass => Status::Pass,
        pb::ItemStatus::Drift => Status::Drift,
        pb::ItemStatus::PendingReboot => Status::PendingReboot,
        pb::ItemStatus::NotPersistent => Status::NotPersistent,
        pb::ItemStatus::Unsupported => Status::Unsupported,
        pb::ItemStatus::Error => Status::Error,
    })
}

impl From<JobResult> for pb::JobResult {
    fn from(r: JobResult) -> pb::JobResult {
        match r {
            JobResult::Done => pb::JobResult::Done,
            JobResult::Canceled => pb::JobResult::Canceled,
            JobResult::Timeout => pb::JobResult::Timeout,
            JobResult::Failed => pb::JobResult::Failed,
            JobResult::Dependency => pb::JobResult::Dependency,
            JobResult::Skipped => pb::JobResult::Skipped,
            JobResult::Other => pb::JobResult::Other,
        }
    }
}

impl From<JobOp> for pb::UnitAction {
    fn from(op: JobOp) -> pb::UnitAction {
        match op {
            JobOp::Start => pb::UnitAction::Start,
            JobOp::Stop => pb::UnitAction::Stop,
            JobOp::Restart => pb::UnitAction::Restart,
        }
    }
}

impl From<Transition> for pb::DriftTransition {
    fn from(t: Transition) -> pb::DriftTransition {
        match t {
            Transition::New => pb::DriftTransition::New,
            Transition::Resolved => pb::DriftTransition::Resolved,
            Transition::Changed => pb::DriftTransition::Changed,
        }
    }
}

impl From<Mode> for pb::Mode {
    fn from(m: Mode) -> pb::Mode {
        match m {
            Mode::Observe => pb::Mode::Observe,
            Mode::Enforce => pb::Mode::Enforce,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Verify report: Rust → proto

impl From<&ProfileRef> for pb::ProfileRef {
    fn from(p: &ProfileRef) -> pb::ProfileRef {
        pb::ProfileRef {
            name: p.name.clone(),
            path: p.path.clone(),
        }
    }
}

/// `fixes` is not sent: it is the daemon's own input to the plan (and absent from the JSON).
impl From<&Item> for pb::Item {
    fn from(i: &Item) -> pb::Item {
        pb::Item {
            class: pb::Class::from(i.class) as i32,
            key: i.key.clone(),
            expected: i.expected.clone(),
            actual: i.actual.clone(),
            path: i.path.clone(),
            status: pb::ItemStatus::from(i.status) as i32,
            reason: i.reason.clone(),
        }
    }
}

impl From<&Summary> for pb::Summary {
    fn from(s: &Summary) -> pb::Summary {
        pb::Summary {
            pass: count(s.pass),
            drift: count(s.drift),
            pending_reboot: count(s.pending_reboot),
            not_persistent: count(s.not_persistent),
            unsupported: count(s.unsupported),
            error: count(s.error),
        }
    }
}

impl From<&InterruptedApply> for pb::InterruptedApply {
    fn from(i: &InterruptedApply) -> pb::InterruptedApply {
        pb::InterruptedApply {
            profile: i.profile.clone(),
            started: Some(timestamp_from_secs(i.started)),
            user: i.user.clone(),
            steps_done: count(i.steps_done),
            steps_total: count(i.steps_total),
        }
    }
}

/// The journal's run as the report's `interrupted_apply` shows it (ApplyResponse.interrupted).
impl From<&Run> for pb::InterruptedApply {
    fn from(r: &Run) -> pb::InterruptedApply {
        pb::InterruptedApply {
            profile: r.profile.clone(),
            started: Some(timestamp_from_secs(r.started)),
            user: r.user.clone(),
            steps_done: count(r.steps.iter().filter(|s| s.done).count()),
            steps_total: count(r.steps.len()),
        }
    }
}

impl From<&Report> for pb::Report {
    fn from(r: &Report) -> pb::Report {
        pb::Report {
            schema_version: r.schema_version,
            profile: Some((&r.profile).into()),
            host: r.host.clone(),
            items: r.items.iter().map(Into::into).collect(),
            summary: Some((&r.summary).into()),
            interrupted_apply: r.interrupted_apply.as_ref().map(Into::into),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Verify report: proto → Rust (the client side; lenient)

impl From<pb::ProfileRef> for ProfileRef {
    fn from(p: pb::ProfileRef) -> ProfileRef {
        ProfileRef {
            name: p.name,
            path: p.path,
        }
    }
}

impl From<pb::Summary> for Summary {
    fn from(s: pb::Summary) -> Summary {
        let n = |v: u32| usize::try_from(v).unwrap_or(usize::MAX);
        Summary {
            pass: n(s.pass),
            drift: n(s.drift),
            pending_reboot: n(s.pending_reboot),
            not_persistent: n(s.not_persistent),
            unsupported: n(s.unsupported),
            error: n(s.error),
        }
    }
}

impl From<pb::InterruptedApply> for InterruptedApply {
    fn from(i: pb::InterruptedApply) -> InterruptedApply {
        InterruptedApply {
            profile: i.profile,
            started: secs_from_timestamp(i.started.as_ref()),
            user: i.user,
            steps_done: i.steps_done as usize,
            steps_total: i.steps_total as usize,
        }
    }
}

/// Adds `note` in front of an item's reason.
fn annotate(reason: &mut Option<String>, note: String) {
    *reason = Some(match reason.take() {
        Some(r) => format!("{note}; {r}"),
        None => note,
    });
}

/// An item as the daemon sent it, and whether its status was one this agentctl does not know
/// (the summary is then recounted).
fn item_from_proto(i: pb::Item) -> (Item, bool) {
    let mut reason = i.reason;
    let class = class_from_proto(i.class).unwrap_or_else(|| {
        annotate(
            &mut reason,
            format!(
                "class {} unknown to this agentctl (a newer daemon?)",
                i.class
            ),
        );
        UNKNOWN_CLASS
    });
    let known = status_from_proto(i.status);
    let status = known.unwrap_or_else(|| {
        annotate(
            &mut reason,
            format!(
                "status {} unknown to this agentctl (a newer daemon?)",
                i.status
            ),
        );
        UNKNOWN_STATUS
    });
    let item = Item {
        class,
        key: i.key,
        expected: i.expected,
        actual: i.actual,
        path: i.path,
        status,
        reason,
        fixes: Vec::new(),
    };
    (item, known.is_none())
}

/// The report a daemon sent, as a local verify would have built it: `to_table()` and
/// `to_json()` print the same. Enum values this agentctl does not know become
/// [`UNKNOWN_CLASS`] / [`UNKNOWN_STATUS`] (the reason says so), and the summary is then
/// recounted from the items so the counts add up; a missing profile is empty.
impl From<pb::Report> for Report {
    fn from(r: pb::Report) -> Report {
        let mut unknown_status = false;
        let items: Vec<Item> = r
            .items
            .into_iter()
            .map(|i| {
                let (item, unknown) = item_from_proto(i);
                unknown_status |= unknown;
                item
            })
            .collect();
        let summary = match r.summary {
            Some(s) if !unknown_status => s.into(),
            _ => Summary::of(&items),
        };
        Report {
            schema_version: r.schema_version,
            profile: r.profile.map(Into::into).unwrap_or(ProfileRef {
                name: String::new(),
                path: String::new(),
            }),
            host: r.host,
            items,
            summary,
            interrupted_apply: r.interrupted_apply.map(Into::into),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Targets and values

impl From<&Target> for pb::Target {
    fn from(t: &Target) -> pb::Target {
        use pb::target::Kind;
        let kind = match t {
            Target::KernelFile { path } => Kind::KernelFile(path.clone()),
            Target::ConfigFile { path } => Kind::ConfigFile(path.clone()),
            Target::Swap { device } => Kind::Swap(device.clone()),
            Target::Mount { path } => Kind::Mount(path.clone()),
            Target::ProcessAffinity { pid } => Kind::ProcessAffinity(*pid),
        };
        pb::Target {
            kind: Some(kind),
            description: t.describe(),
        }
    }
}

impl From<&Value> for pb::Value {
    fn from(v: &Value) -> pb::Value {
        use pb::value::{self as pv, State};
        let state = match v {
            Value::Text { value } => State::Text(value.clone()),
            Value::Absent => State::Absent(pv::Absent {}),
            Value::SwapOn { priority } => State::SwapOn(pv::SwapOn {
                priority: *priority,
            }),
            Value::SwapOff => State::SwapOff(pv::SwapOff {}),
            Value::MountOptions { options } => State::MountOptions(pv::MountOptions {
                options: options.clone(),
            }),
        };
        pb::Value {
            state: Some(state),
            description: v.describe(),
        }
    }
}

/// A target a daemon sent. A kind this agentctl does not know (or none) becomes a config file
/// named by the description, so `describe()` still prints what the daemon said.
impl From<pb::Target> for Target {
    fn from(t: pb::Target) -> Target {
        use pb::target::Kind;
        match t.kind {
            Some(Kind::KernelFile(path)) => Target::KernelFile { path },
            Some(Kind::ConfigFile(path)) => Target::ConfigFile { path },
            Some(Kind::Swap(device)) => Target::Swap { device },
            Some(Kind::Mount(path)) => Target::Mount { path },
            Some(Kind::ProcessAffinity(pid)) => Target::ProcessAffinity { pid },
            None => Target::ConfigFile {
                path: t.description,
            },
        }
    }
}

/// A value a daemon sent. A state this agentctl does not know (or none) becomes the text of
/// its description, so `describe()` still prints what the daemon said.
impl From<pb::Value> for Value {
    fn from(v: pb::Value) -> Value {
        use pb::value::State;
        match v.state {
            Some(State::Text(value)) => Value::Text { value },
            Some(State::Absent(_)) => Value::Absent,
            Some(State::SwapOn(s)) => Value::SwapOn {
                priority: s.priority,
            },
            Some(State::SwapOff(_)) => Value::SwapOff,
            Some(State::MountOptions(m)) => Value::MountOptions { options: m.options },
            None => Value::Text {
                value: v.description,
            },
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Plan, apply, rollback: Rust → proto

impl From<&Change> for pb::Change {
    fn from(c: &Change) -> pb::Change {
        pb::Change {
            class: pb::Class::from(c.class) as i32,
            key: c.key.clone(),
            target: Some((&c.target).into()),
            from: Some((&c.from).into()),
            to: Some((&c.to).into()),
        }
    }
}

impl From<&Skipped> for pb::Skipped {
    fn from(s: &Skipped) -> pb::Skipped {
        pb::Skipped {
            class: pb::Class::from(s.class) as i32,
            key: s.key.clone(),
            status: pb::ItemStatus::from(s.status) as i32,
            reason: s.reason.clone(),
        }
    }
}

impl From<&Plan> for pb::Plan {
    fn from(p: &Plan) -> pb::Plan {
        pb::Plan {
            schema_version: p.schema_version,
            profile: Some((&p.profile).into()),
            host: p.host.clone(),
            changes: p.changes.iter().map(Into::into).collect(),
            unsupported: p.unsupported.iter().map(Into::into).collect(),
            not_fixable: p.not_fixable.iter().map(Into::into).collect(),
        }
    }
}

impl From<&RefusedChange> for pb::RefusedChange {
    fn from(r: &RefusedChange) -> pb::RefusedChange {
        pb::RefusedChange {
            class: pb::Class::from(r.class) as i32,
            key: r.key.clone(),
            target: Some((&r.target).into()),
            value: r.value.clone(),
            reason: r.reason.clone(),
            error: r.error.clone(),
        }
    }
}

impl From<&ApplyOutcome> for pb::ApplyResponse {
    fn from(o: &ApplyOutcome) -> pb::ApplyResponse {
        pb::ApplyResponse {
            plan: Some((&o.plan).into()),
            after: Some((&o.after).into()),
            systemd_reload_error: o.systemd_reload_error.clone(),
            interrupted: o.interrupted.as_ref().map(Into::into),
            refused: o.refused.iter().map(Into::into).collect(),
            follow_up_errors: o.follow_up_errors.clone(),
            notes: o.notes.clone(),
        }
    }
}

/// The response of `Apply` with `dry_run`: the plan only, `after` unset.
pub fn dry_run_response(plan: &Plan) -> pb::ApplyResponse {
    pb::ApplyResponse {
        plan: Some(plan.into()),
        ..Default::default()
    }
}

impl From<&Restored> for pb::Restored {
    fn from(r: &Restored) -> pb::Restored {
        pb::Restored {
            class: pb::Class::from(r.class) as i32,
            key: r.key.clone(),
            target: Some((&r.target).into()),
            from: Some((&r.from).into()),
            to: Some((&r.to).into()),
        }
    }
}

impl From<&NotRestored> for pb::NotRestored {
    fn from(n: &NotRestored) -> pb::NotRestored {
        pb::NotRestored {
            class: pb::Class::from(n.class) as i32,
            key: n.key.clone(),
            target: Some((&n.target).into()),
            current: n.current.as_ref().map(Into::into),
            original: Some((&n.original).into()),
            reason: n.reason.clone(),
        }
    }
}

impl From<&RollbackOutcome> for pb::RollbackResponse {
    fn from(o: &RollbackOutcome) -> pb::RollbackResponse {
        pb::RollbackResponse {
            restored: o.restored.iter().map(Into::into).collect(),
            left_alone: o.left_alone.iter().map(Into::into).collect(),
            failed: o.failed.iter().map(Into::into).collect(),
            systemd_reload_error: o.systemd_reload_error.clone(),
            follow_up_errors: o.follow_up_errors.clone(),
            notes: o.notes.clone(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Plan: proto → Rust (the client side; lenient)

impl From<pb::Skipped> for Skipped {
    fn from(s: pb::Skipped) -> Skipped {
        Skipped {
            class: class_from_proto(s.class).unwrap_or(UNKNOWN_CLASS),
            key: s.key,
            status: status_from_proto(s.status).unwrap_or(UNKNOWN_STATUS),
            reason: s.reason,
        }
    }
}

impl From<pb::Change> for Change {
    fn from(c: pb::Change) -> Change {
        let absent = || Value::Absent;
        Change {
            class: class_from_proto(c.class).unwrap_or(UNKNOWN_CLASS),
            key: c.key.clone(),
            target: c
                .target
                .map_or_else(|| Target::ConfigFile { path: c.key }, Into::into),
            from: c.from.map_or_else(absent, Into::into),
            to: c.to.map_or_else(absent, Into::into),
        }
    }
}

/// The plan a daemon sent, as a local `tune apply --dry-run` would have built it (same
/// `to_table()` and `to_json()`). Unknown enum values as for [`Report`].
impl From<pb::Plan> for Plan {
    fn from(p: pb::Plan) -> Plan {
        Plan {
            schema_version: p.schema_version,
            profile: p.profile.map(Into::into).unwrap_or(ProfileRef {
                name: String::new(),
                path: String::new(),
            }),
            host: p.host,
            changes: p.changes.into_iter().map(Into::into).collect(),
            unsupported: p.unsupported.into_iter().map(Into::into).collect(),
            not_fixable: p.not_fixable.into_iter().map(Into::into).collect(),
        }
    }
}

/// A refused change a daemon sent (client side; lenient like [`Plan`]).
impl From<pb::RefusedChange> for RefusedChange {
    fn from(r: pb::RefusedChange) -> RefusedChange {
        RefusedChange {
            class: class_from_proto(r.class).unwrap_or(UNKNOWN_CLASS),
            target: r.target.map_or_else(
                || Target::ConfigFile {
                    path: r.key.clone(),
                },
                Into::into,
            ),
            key: r.key,
            value: r.value,
            reason: r.reason,
            error: r.error,
        }
    }
}

/// What a daemon's Apply answered, for agentctl to print with the local code (`print_apply`;
/// `plan.to_table()` for a dry run). `after` unset (a dry run) is an empty report of the plan's
/// profile and host; `interrupted` is [`run_from_proto`] (counts only).
pub fn apply_outcome_from_proto(r: pb::ApplyResponse) -> ApplyOutcome {
    let plan: Plan = r.plan.map(Into::into).unwrap_or_else(|| Plan {
        schema_version: crate::tuning::plan::PLAN_SCHEMA_VERSION,
        profile: ProfileRef {
            name: String::new(),
            path: String::new(),
        },
        host: String::new(),
        changes: Vec::new(),
        unsupported: Vec::new(),
        not_fixable: Vec::new(),
    });
    let after = r.after.map_or_else(
        || Report::new(plan.profile.clone(), plan.host.clone(), Vec::new()),
        Into::into,
    );
    ApplyOutcome {
        plan,
        interrupted: r.interrupted.map(Into::into),
        after,
        systemd_reload_error: r.systemd_reload_error,
        refused: r.refused.into_iter().map(Into::into).collect(),
        follow_up_errors: r.follow_up_errors,
        notes: r.notes,
    }
}

impl From<pb::Restored> for Restored {
    fn from(r: pb::Restored) -> Restored {
        Restored {
            class: class_from_proto(r.class).unwrap_or(UNKNOWN_CLASS),
            target: r.target.map_or_else(
                || Target::ConfigFile {
                    path: r.key.clone(),
                },
                Into::into,
            ),
            key: r.key,
            from: r.from.map_or(Value::Absent, Into::into),
            to: r.to.map_or(Value::Absent, Into::into),
        }
    }
}

impl From<pb::NotRestored> for NotRestored {
    fn from(n: pb::NotRestored) -> NotRestored {
        NotRestored {
            class: class_from_proto(n.class).unwrap_or(UNKNOWN_CLASS),
            target: n.target.map_or_else(
                || Target::ConfigFile {
                    path: n.key.clone(),
                },
                Into::into,
            ),
            key: n.key,
            current: n.current.map(Into::into),
            original: n.original.map_or(Value::Absent, Into::into),
            reason: n.reason,
        }
    }
}

/// What a daemon's Rollback answered, for agentctl to print with the local code (lossless
/// for every target and value this agentctl knows).
pub fn rollback_outcome_from_proto(r: pb::RollbackResponse) -> RollbackOutcome {
    RollbackOutcome {
        restored: r.restored.into_iter().map(Into::into).collect(),
        left_alone: r.left_alone.into_iter().map(Into::into).collect(),
        failed: r.failed.into_iter().map(Into::into).collect(),
        systemd_reload_error: r.systemd_reload_error,
        follow_up_errors: r.follow_up_errors,
        notes: r.notes,
    }
}

/// `agentctl daemon status --output json`: GetStatusResponse with the CLI's conventions
/// (snake_case names as in the proto, times in seconds since the epoch or null, the summary
/// and `interrupted_apply` exactly as in the verify report's JSON, the mode as in agent.toml).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StatusJson {
    pub agent_version: String,
    pub api_version: String,
    pub api_minor: u32,
    pub host: String,
    pub kernel_release: String,
    pub profile: ProfileRef,
    pub profile_sha256: String,
    /// `observe`, `enforce`, or `unknown` for a mode this agentctl does not know.
    pub mode: String,
    pub enforcement_paused_until: Option<u64>,
    /// Null when enforcement is not paused.
    pub enforcement_paused_by: Option<String>,
    pub last_verify: Option<u64>,
    pub summary: Summary,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interrupted_apply: Option<InterruptedApply>,
}

/// [`StatusJson`] of a GetStatus answer.
pub fn status_json(s: &pb::GetStatusResponse) -> StatusJson {
    let mode = match pb::Mode::try_from(s.mode) {
        Ok(pb::Mode::Observe) => Mode::Observe.as_str(),
        Ok(pb::Mode::Enforce) => Mode::Enforce.as_str(),
        _ => "unknown",
    };
    StatusJson {
        agent_version: s.agent_version.clone(),
        api_version: s.api_version.clone(),
        api_minor: s.api_minor,
        host: s.host.clone(),
        kernel_release: s.kernel_release.clone(),
        profile: s.profile.clone().map(Into::into).unwrap_or(ProfileRef {
            name: String::new(),
            path: String::new(),
        }),
        profile_sha256: s.profile_sha256.clone(),
        mode: mode.to_owned(),
        enforcement_paused_until: s
            .enforcement_paused_until
            .as_ref()
            .map(|t| secs_from_timestamp(Some(t))),
        enforcement_paused_by: (!s.enforcement_paused_by.is_empty())
            .then(|| s.enforcement_paused_by.clone()),
        last_verify: s.last_verify.as_ref().map(|t| secs_from_timestamp(Some(t))),
        summary: s.summary.map(Into::into).unwrap_or_default(),
        interrupted_apply: s.interrupted_apply.clone().map(Into::into),
    }
}

// ---------------------------------------------------------------------------------------------
// Units

impl From<&UnitStatus> for pb::UnitStatus {
    fn from(u: &UnitStatus) -> pb::UnitStatus {
        pb::UnitStatus {
            unit: u.unit.clone(),
            load_state: u.load_state.clone(),
            active_state: u.active_state.clone(),
            sub_state: u.sub_state.clone(),
            unit_file_state: u.unit_file_state.clone(),
            main_pid: u.main_pid,
            active_since: timestamp_from_us(u.active_since_us),
            cpu_affinity: u.cpu_affinity.clone(),
            memory_bytes: u.memory_bytes,
        }
    }
}

impl From<pb::UnitStatus> for UnitStatus {
    fn from(u: pb::UnitStatus) -> UnitStatus {
        UnitStatus {
            unit: u.unit,
            load_state: u.load_state,
            active_state: u.active_state,
            sub_state: u.sub_state,
            unit_file_state: u.unit_file_state,
            main_pid: u.main_pid,
            active_since_us: us_from_timestamp(u.active_since.as_ref()),
            cpu_affinity: u.cpu_affinity,
            memory_bytes: u.memory_bytes,
        }
    }
}

/// `succeeded` is [`Step::succeeded`], the daemon's verdict.
impl From<&Step> for pb::JobStep {
    fn from(s: &Step) -> pb::JobStep {
        pb::JobStep {
            unit: s.unit.clone(),
            action: pb::UnitAction::from(s.op) as i32,
            result: pb::JobResult::from(s.result) as i32,
            duration_ms: s.duration_ms,
            active_state: s.active_state.clone(),
            sub_state: s.sub_state.clone(),
            succeeded: s.succeeded(),
        }
    }
}

impl From<&PlatformReport> for pb::PlatformReport {
    fn from(r: &PlatformReport) -> pb::PlatformReport {
        pb::PlatformReport {
            action: pb::UnitAction::from(r.op) as i32,
            steps: r.steps.iter().map(Into::into).collect(),
            failed: r.failed.clone(),
            not_reached: r.not_reached.clone(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Drift

impl From<&DriftEvent> for pb::DriftEvent {
    fn from(e: &DriftEvent) -> pb::DriftEvent {
        pb::DriftEvent {
            transition: pb::DriftTransition::from(e.transition) as i32,
            item: Some((&e.item).into()),
            time: Some(timestamp_from_secs(e.at)),
            previous_status: e
                .previous
                .map_or(pb::ItemStatus::Unspecified, pb::ItemStatus::from)
                as i32,
            previous_actual: e.previous_actual.clone(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Requests → Rust (validated; errors are INVALID_ARGUMENT naming the field)

/// `classes` of PlanRequest and ApplyRequest: `None` when empty (every class but cmdline, as
/// `tune apply`), else the classes in request order without repeats. CLASS_UNSPECIFIED and
/// numbers this agent does not know are refused.
pub fn classes_from_proto(raw: &[i32]) -> Result<Option<Vec<Class>>, RpcStatus> {
    if raw.is_empty() {
        return Ok(None);
    }
    let mut out = Vec::with_capacity(raw.len());
    for (i, &n) in raw.iter().enumerate() {
        let class = class_from_proto(n).ok_or_else(|| {
            RpcStatus::invalid_argument(if n == pb::Class::Unspecified as i32 {
                format!(
                    "classes[{i}]: CLASS_UNSPECIFIED is not a class (send no classes for every \
                     class but CLASS_CMDLINE)"
                )
            } else {
                format!("classes[{i}]: unknown class {n}")
            })
        })?;
        if !out.contains(&class) {
            out.push(class);
        }
    }
    Ok(Some(out))
}

/// What ControlUnit does to a unit: a job awaited, or enabling/disabling its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnitAction {
    Job(JobOp),
    Enable,
    Disable,
}

impl From<UnitAction> for pb::UnitAction {
    fn from(a: UnitAction) -> pb::UnitAction {
        match a {
            UnitAction::Job(op) => op.into(),
            UnitAction::Enable => pb::UnitAction::Enable,
            UnitAction::Disable => pb::UnitAction::Disable,
        }
    }
}

/// `action` of ControlUnitRequest; UNIT_ACTION_UNSPECIFIED and unknown numbers are refused.
pub fn unit_action_from_proto(raw: i32) -> Result<UnitAction, RpcStatus> {
    match pb::UnitAction::try_from(raw) {
        Ok(pb::UnitAction::Start) => Ok(UnitAction::Job(JobOp::Start)),
        Ok(pb::UnitAction::Stop) => Ok(UnitAction::Job(JobOp::Stop)),
        Ok(pb::UnitAction::Restart) => Ok(UnitAction::Job(JobOp::Restart)),
        Ok(pb::UnitAction::Enable) => Ok(UnitAction::Enable),
        Ok(pb::UnitAction::Disable) => Ok(UnitAction::Disable),
        Ok(pb::UnitAction::Unspecified) => Err(RpcStatus::invalid_argument(
            "action: UNIT_ACTION_UNSPECIFIED is not an action (START, STOP, RESTART, ENABLE or \
             DISABLE)",
        )),
        Err(_) => Err(RpcStatus::invalid_argument(format!(
            "action: unknown unit action {raw}"
        ))),
    }
}

/// `duration_seconds` of EnforcePauseRequest: at least 1 s, at most 24 h.
pub fn pause_duration(seconds: u64) -> Result<Duration, RpcStatus> {
    let d = Duration::from_secs(seconds);
    if d.is_zero() {
        return Err(RpcStatus::invalid_argument(
            "duration_seconds: must be at least 1",
        ));
    }
    if d > MAX_PAUSE {
        return Err(RpcStatus::invalid_argument(format!(
            "duration_seconds: {seconds} is more than 24 h ({})",
            MAX_PAUSE.as_secs()
        )));
    }
    Ok(d)
}

/// `unit` of ControlUnitRequest, parsed as systemctl reads it (`trading-engine` is
/// `trading-engine.service`); whether it is managed is [`managed_unit`].
pub fn unit_name(raw: &str) -> Result<UnitName, RpcStatus> {
    if raw.is_empty() {
        return Err(RpcStatus::invalid_argument(
            "unit: missing (a managed unit's name, e.g. trading-engine.service)",
        ));
    }
    raw.parse::<UnitName>()
        .map_err(|e| RpcStatus::invalid_argument(format!("unit: {e}")))
}

/// `unit` of ControlUnitRequest: a valid name of a managed unit (settings `[units]`).
pub fn managed_unit(managed: &Units, raw: &str) -> Result<UnitName, RpcStatus> {
    let name = unit_name(raw)?;
    units::managed(managed, name.as_str())
        .map_err(|e| RpcStatus::invalid_argument(format!("unit: {e}")))
}

/// A unit step the daemon ran, for agentctl `--remote` (unknown values: `Other`, and an action
/// it does not know reads as start).
impl From<pb::JobStep> for Step {
    fn from(s: pb::JobStep) -> Step {
        Step {
            unit: s.unit,
            op: job_op_from_proto(s.action),
            result: match pb::JobResult::try_from(s.result) {
                Ok(pb::JobResult::Done) => JobResult::Done,
                Ok(pb::JobResult::Canceled) => JobResult::Canceled,
                Ok(pb::JobResult::Timeout) => JobResult::Timeout,
                Ok(pb::JobResult::Failed) => JobResult::Failed,
                Ok(pb::JobResult::Dependency) => JobResult::Dependency,
                Ok(pb::JobResult::Skipped) => JobResult::Skipped,
                _ => JobResult::Other,
            },
            duration_ms: s.duration_ms,
            active_state: s.active_state,
            sub_state: s.sub_state,
        }
    }
}

fn job_op_from_proto(raw: i32) -> JobOp {
    match pb::UnitAction::try_from(raw) {
        Ok(pb::UnitAction::Stop) => JobOp::Stop,
        Ok(pb::UnitAction::Restart) => JobOp::Restart,
        _ => JobOp::Start,
    }
}

impl From<pb::PlatformReport> for PlatformReport {
    fn from(r: pb::PlatformReport) -> PlatformReport {
        PlatformReport {
            op: job_op_from_proto(r.action),
            steps: r.steps.into_iter().map(Into::into).collect(),
            failed: r.failed,
            not_reached: r.not_reached,
        }
    }
}

// ---- health ----

impl From<crate::health::Status> for pb::HealthStatus {
    fn from(s: crate::health::Status) -> Self {
        use crate::health::Status as H;
        match s {
            H::Ok => pb::HealthStatus::Ok,
            H::Warn => pb::HealthStatus::Warn,
            H::Crit => pb::HealthStatus::Crit,
            H::Unknown => pb::HealthStatus::Unknown,
        }
    }
}

/// A status from the wire; one this client does not know (or unset) is `unknown`.
pub fn health_status_from_proto(v: i32) -> crate::health::Status {
    use crate::health::Status as H;
    match pb::HealthStatus::try_from(v) {
        Ok(pb::HealthStatus::Ok) => H::Ok,
        Ok(pb::HealthStatus::Warn) => H::Warn,
        Ok(pb::HealthStatus::Crit) => H::Crit,
        _ => H::Unknown,
    }
}

impl From<&crate::health::HealthReport> for pb::GetHealthResponse {
    fn from(r: &crate::health::HealthReport) -> Self {
        pb::GetHealthResponse {
            status: pb::HealthStatus::from(r.status) as i32,
            checks: r
                .checks
                .iter()
                .map(|c| pb::HealthCheck {
                    name: c.name.clone(),
                    status: pb::HealthStatus::from(c.status) as i32,
                    value: c.value_text(),
                    threshold: c.threshold.clone(),
                    message: c.message.clone(),
                })
                .collect(),
        }
    }
}

/// The report from the wire (agentctl through the daemon): the value is the number in front
/// of its unit, and the overall status is recomputed from the checks (never better than the
/// daemon's).
pub fn health_from_proto(r: &pb::GetHealthResponse) -> crate::health::HealthReport {
    let checks: Vec<crate::health::Check> = r
        .checks
        .iter()
        .map(|c| crate::health::Check {
            name: c.name.clone(),
            status: health_status_from_proto(c.status),
            value: c
                .value
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok()),
            threshold: c.threshold.clone(),
            message: c.message.clone(),
        })
        .collect();
    let mut report = crate::health::HealthReport::new(checks);
    report.status = report.status.max(health_status_from_proto(r.status));
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollback::journal::{RunState, Step as JournalStep};
    use prost::Message;
    use tonic::Code;

    mod erased {
        pub trait Json {
            fn json(&self) -> String;
        }
        impl<T: serde::Serialize> Json for T {
            fn json(&self) -> String {
                serde_json::to_string(self).unwrap()
            }
        }
    }

    fn profile() -> ProfileRef {
        ProfileRef {
            name: "trading-latency".into(),
            path: "/etc/node-agent/profiles/trading-latency.toml".into(),
        }
    }

    const CLASSES: [Class; 10] = [
        Class::Sysctl,
        Class::Cpu,
        Class::Memory,
        Class::Block,
        Class::Limits,
        Class::Mount,
        Class::Clocksource,
        Class::Units,
        Class::Isolation,
        Class::Cmdline,
    ];

    /// Every status and every class, optional fields absent and present.
    fn report() -> Report {
        let mut items = Vec::new();
        for (n, class) in CLASSES.iter().enumerate() {
            for (m, status) in Status::ALL.iter().enumerate() {
                let mut item = Item::new(*class, format!("{}.k{m}", class.as_str()), ">= 1024")
                    .status(*status);
                if (n + m) % 2 == 0 {
                    item = item
                        .actual(format!("{m}"))
                        .path(format!("/proc/sys/x/{n}/{m}"))
                        .reason(format!("reason {n} {m}"));
                }
                if (n + m) % 3 == 0 {
                    item = item.actual("");
                }
                items.push(item);
            }
        }
        let mut r = Report::new(profile(), "host1".into(), items);
        r.interrupted_apply = Some(InterruptedApply {
            profile: "trading-latency".into(),
            started: 1_764_110_228,
            user: "root".into(),
            steps_done: 3,
            steps_total: 7,
        });
        r
    }

    fn through_wire(r: &Report) -> Report {
        let msg = pb::Report::from(r);
        let bytes = msg.encode_to_vec();
        pb::Report::decode(bytes.as_slice()).unwrap().into()
    }

    #[test]
    fn report_round_trips_through_proto() {
        let original = report();
        let back = through_wire(&original);
        assert_eq!(back, original);
        assert_eq!(back.to_table(), original.to_table());
        assert_eq!(back.to_json(), original.to_json());

        let mut plain = report();
        plain.interrupted_apply = None;
        let back = through_wire(&plain);
        assert_eq!(back, plain);
        assert_eq!(back.to_json(), plain.to_json());

        let empty = Report::new(profile(), "h".into(), Vec::new());
        assert_eq!(through_wire(&empty), empty);
    }

    #[test]
    fn report_proto_fields_match_the_json() {
        let r = report();
        let p = pb::Report::from(&r);
        assert_eq!(p.schema_version, crate::verify::REPORT_SCHEMA_VERSION);
        assert_eq!(p.items.len(), 60);
        let s = p.summary.unwrap();
        assert_eq!(
            (
                s.pass,
                s.drift,
                s.pending_reboot,
                s.not_persistent,
                s.unsupported,
                s.error
            ),
            (10, 10, 10, 10, 10, 10)
        );
        let i = p.interrupted_apply.unwrap();
        assert_eq!(i.started.unwrap().seconds, 1_764_110_228);
        assert_eq!((i.steps_done, i.steps_total), (3, 7));
        let first = &p.items[0];
        assert_eq!(first.class(), pb::Class::Sysctl);
        assert_eq!(first.status(), pb::ItemStatus::Error);
        assert_eq!(first.actual.as_deref(), Some(""));
        assert_eq!(p.items[1].actual, None);
        assert_eq!(p.items[1].reason, None);
    }

    #[test]
    fn unknown_enum_numbers_fall_back() {
        let mut p = pb::Report::from(&report());
        p.items[0].status = 99;
        p.items[0].reason = None;
        p.items[1].status = pb::ItemStatus::Unspecified as i32;
        p.items[1].reason = Some("why".into());
        p.items[2].class = 42;
        let r = Report::from(p);
        assert_eq!(r.items[0].status, UNKNOWN_STATUS);
        assert_eq!(
            r.items[0].reason.as_deref(),
            Some("status 99 unknown to this agentctl (a newer daemon?)")
        );
        assert_eq!(r.items[1].status, Status::Error);
        assert_eq!(
            r.items[1].reason.as_deref(),
            Some("status 0 unknown to this agentctl (a newer daemon?); why")
        );
        assert_eq!(r.items[2].class, UNKNOWN_CLASS);
        assert!(
            r.items[2]
                .reason
                .as_deref()
                .unwrap()
                .starts_with("class 42 unknown to this agentctl")
        );
        // The counts are recounted so they add up with the fallback.
        assert_eq!(r.summary, Summary::of(&r.items));
        assert_eq!(r.summary.error, 11);
        assert!(!r.to_table().is_empty());

        assert_eq!(class_from_proto(99), None);
        assert_eq!(class_from_proto(0), None);
        assert_eq!(status_from_proto(99), None);
        assert_eq!(status_from_proto(6), Some(Status::Error));

        // A Report without profile or summary still renders.
        let bare = Report::from(pb::Report {
            schema_version: 1,
            host: "h".into(),
            items: vec![pb::Item::from(&Item::new(
                Class::Cpu,
                "cpu.0.governor",
                "performance",
            ))],
            ..Default::default()
        });
        assert_eq!(bare.profile.name, "");
        assert_eq!(bare.summary.pass, 1);

        // Unknown target kinds and value states keep the daemon's description.
        let t = Target::from(pb::Target {
            kind: None,
            description: "something new".into(),
        });
        assert_eq!(t.describe(), "something new");
        let v = Value::from(pb::Value {
            state: None,
            description: "on (weird)".into(),
        });
        assert_eq!(v.describe(), "on (weird)");
        let s = Skipped::from(pb::Skipped {
            class: 77,
            key: "k".into(),
            status: 99,
            reason: String::new(),
        });
        assert_eq!((s.class, s.status), (UNKNOWN_CLASS, UNKNOWN_STATUS));
    }

    fn targets() -> Vec<(Target, Value, Value)> {
        vec![
            (
                Target::KernelFile {
                    path: "/proc/sys/vm/swappiness".into(),
                },
                Value::text("60"),
                Value::text("10"),
            ),
            (
                Target::ConfigFile {
                    path: "/etc/sysctl.d/zz-node-agent.conf".into(),
                },
                Value::Absent,
                Value::text("vm.swappiness = 10\nnet.core.somaxconn = 4096\n"),
            ),
            (
                Target::Swap {
                    device: "/dev/sda2".into(),
                },
                Value::SwapOn { priority: -2 },
                Value::SwapOff,
            ),
            (
                Target::Mount {
                    path: "/data".into(),
                },
                Value::MountOptions {
                    options: vec!["relatime".into(), "rw".into()],
                },
                Value::MountOptions {
                    options: vec!["noatime".into()],
                },
            ),
            (
                Target::ProcessAffinity { pid: 1 },
                Value::text("0-15"),
                Value::text("0-1"),
            ),
        ]
    }

    fn plan() -> Plan {
        let changes = targets()
            .into_iter()
            .zip(CLASSES)
            .map(|((target, from, to), class)| Change {
                class,
                key: format!("{}.key", class.as_str()),
                target,
                from,
                to,
            })
            .collect();
        Plan {
            schema_version: crate::tuning::plan::PLAN_SCHEMA_VERSION,
            profile: profile(),
            host: "host1".into(),
            changes,
            unsupported: vec![Skipped {
                class: Class::Cpu,
                key: "cpu.0.governor".into(),
                status: Status::Unsupported,
                reason: String::new(),
            }],
            not_fixable: vec![Skipped {
                class: Class::Sysctl,
                key: "vm.swappiness".into(),
                status: Status::NotPersistent,
                reason: "set later by /etc/sysctl.d/99-x.conf".into(),
            }],
        }
    }

    #[test]
    fn plan_converts_every_target_and_value() {
        let p = plan();
        let msg = pb::Plan::from(&p);
        let decoded = pb::Plan::decode(msg.encode_to_vec().as_slice()).unwrap();
        assert_eq!(decoded, msg);
        use pb::target::Kind;
        use pb::value::State;
        let kinds: Vec<_> = msg
            .changes
            .iter()
            .map(|c| c.target.clone().unwrap().kind.unwrap())
            .collect();
        assert_eq!(
            kinds,
            [
                Kind::KernelFile("/proc/sys/vm/swappiness".into()),
                Kind::ConfigFile("/etc/sysctl.d/zz-node-agent.conf".into()),
                Kind::Swap("/dev/sda2".into()),
                Kind::Mount("/data".into()),
                Kind::ProcessAffinity(1),
            ]
        );
        let descriptions: Vec<_> = msg
            .changes
            .iter()
            .map(|c| c.target.as_ref().unwrap().description.as_str())
            .collect();
        assert_eq!(
            descriptions,
            [
                "/proc/sys/vm/swappiness",
                "/etc/sysctl.d/zz-node-agent.conf",
                "swap /dev/sda2",
                "mount /data",
                "CPU affinity of pid 1",
            ]
        );
        let states: Vec<_> = msg
            .changes
            .iter()
            .flat_map(|c| [c.from.clone().unwrap(), c.to.clone().unwrap()])
            .map(|v| (v.state.unwrap(), v.description))
            .collect();
        assert_eq!(states[1], (State::Text("10".into()), "10".into()));
        assert_eq!(
            states[2],
            (State::Absent(pb::value::Absent {}), "absent".into())
        );
        assert_eq!(
            states[3],
            (
                State::Text("vm.swappiness = 10\nnet.core.somaxconn = 4096\n".into()),
                "2 lines".into()
            )
        );
        assert_eq!(
            states[4],
            (
                State::SwapOn(pb::value::SwapOn { priority: -2 }),
                "on (priority -2)".into()
            )
        );
        assert_eq!(
            states[5],
            (State::SwapOff(pb::value::SwapOff {}), "off".into())
        );
        assert_eq!(
            states[6],
            (
                State::MountOptions(pb::value::MountOptions {
                    options: vec!["relatime".into(), "rw".into()]
                }),
                "relatime,rw".into()
            )
        );
        assert_eq!(msg.not_fixable[0].status(), pb::ItemStatus::NotPersistent);
        assert_eq!(msg.unsupported[0].class(), pb::Class::Cpu);
        // And back, for agentctl printing the daemon's plan.
        let back = Plan::from(decoded);
        assert_eq!(back, p);
        assert_eq!(back.to_table(), p.to_table());
        assert_eq!(back.to_json(), p.to_json());
    }

    #[test]
    fn apply_outcome_converts_with_refusals_and_interruption() {
        let p = plan();
        let run = Run {
            profile: "trading-latency".into(),
            profile_path: profile().path,
            started: 1_700_000_000,
            finished: None,
            uid: 0,
            user: "root".into(),
            state: RunState::Interrupted,
            steps: p
                .changes
                .iter()
                .enumerate()
                .map(|(i, c)| JournalStep {
                    class: c.class,
                    key: c.key.clone(),
                    target: c.target.clone(),
                    before: c.from.clone(),
                    after: c.to.clone(),
                    done: i < 2,
                })
                .collect(),
            error: None,
        };
        let refused: Vec<RefusedChange> = targets()
            .into_iter()
            .map(|(target, _, to)| RefusedChange {
                class: Class::Isolation,
                key: "isolation.irq.30.affinity".into(),
                target,
                value: to.describe(),
                reason: "managed IRQ".into(),
                error: "Input/output error (os error 5)".into(),
            })
            .collect();
        let outcome = ApplyOutcome {
            plan: p.clone(),
            interrupted: Some(run.summary()),
            after: report(),
            systemd_reload_error: Some("failed to reload systemd: timeout".into()),
            refused,
            follow_up_errors: vec!["failed to restart irqbalance.service: x".into()],
            notes: vec!["update-grub ran".into()],
        };
        let msg = pb::ApplyResponse::from(&outcome);
        let msg = pb::ApplyResponse::decode(msg.encode_to_vec().as_slice()).unwrap();
        assert_eq!(Plan::from(msg.plan.clone().unwrap()), p);
        assert_eq!(Report::from(msg.after.clone().unwrap()), report());
        assert_eq!(
            msg.systemd_reload_error.as_deref(),
            Some("failed to reload systemd: timeout")
        );
        assert_eq!(
            msg.interrupted,
            Some(pb::InterruptedApply {
                profile: "trading-latency".into(),
                started: Some(Timestamp {
                    seconds: 1_700_000_000,
                    nanos: 0
                }),
                user: "root".into(),
                steps_done: 2,
                steps_total: 5,
            })
        );
        assert_eq!(msg.refused.len(), 5);
        let r = &msg.refused[3];
        assert_eq!(r.class(), pb::Class::Isolation);
        assert_eq!(r.target.as_ref().unwrap().description, "mount /data");
        assert_eq!(r.value, "noatime");
        assert_eq!(
            (r.reason.as_str(), r.error.as_str()),
            ("managed IRQ", "Input/output error (os error 5)")
        );
        assert_eq!(
            Target::from(msg.refused[4].target.clone().unwrap()),
            Target::ProcessAffinity { pid: 1 }
        );
        assert_eq!(msg.follow_up_errors, outcome.follow_up_errors);
        assert_eq!(msg.notes, outcome.notes);

        // And back, for agentctl printing what the daemon did.
        let back = apply_outcome_from_proto(msg.clone());
        let json = |v: &dyn erased::Json| v.json();
        assert_eq!(json(&back.plan), json(&outcome.plan));
        assert_eq!(back.after, outcome.after);
        assert_eq!(json(&back.refused), json(&outcome.refused));
        assert_eq!(back.systemd_reload_error, outcome.systemd_reload_error);
        assert_eq!(back.follow_up_errors, outcome.follow_up_errors);
        assert_eq!(back.notes, outcome.notes);
        assert_eq!(back.interrupted, outcome.interrupted);

        let dry = dry_run_response(&p);
        assert!(dry.after.is_none() && dry.interrupted.is_none());
        assert_eq!(dry.plan, Some(pb::Plan::from(&p)));

        let quiet = ApplyOutcome {
            interrupted: None,
            systemd_reload_error: None,
            refused: Vec::new(),
            follow_up_errors: Vec::new(),
            notes: Vec::new(),
            ..outcome
        };
        let msg = pb::ApplyResponse::from(&quiet);
        assert!(msg.interrupted.is_none() && msg.systemd_reload_error.is_none());
        assert!(msg.refused.is_empty() && msg.notes.is_empty());
        let back = apply_outcome_from_proto(msg);
        assert_eq!(
            serde_json::to_string(&back).unwrap(),
            serde_json::to_string(&quiet).unwrap()
        );
        // A dry run's answer: the plan, and an empty report for `after`.
        let back = apply_outcome_from_proto(dry);
        assert_eq!(back.plan, p);
        assert!(back.after.items.is_empty() && back.interrupted.is_none());
    }

    #[test]
    fn rollback_outcome_converts() {
        let mut restored = Vec::new();
        let mut left = Vec::new();
        for (target, from, to) in targets() {
            restored.push(Restored {
                class: Class::Mount,
                key: target.describe(),
                target: target.clone(),
                from: to.clone(),
                to: from.clone(),
            });
            left.push(NotRestored {
                class: Class::Memory,
                key: target.describe(),
                target,
                current: None,
                original: from,
                reason: "changed by someone else".into(),
            });
        }
        left[1].current = Some(Value::text("x"));
        let o = RollbackOutcome {
            restored,
            left_alone: left.clone(),
            failed: left[..1].to_vec(),
            systemd_reload_error: Some("e".into()),
            follow_up_errors: vec!["f".into()],
            notes: vec!["n".into()],
        };
        let msg = pb::RollbackResponse::from(&o);
        assert_eq!(msg.restored.len(), 5);
        assert_eq!(
            Value::from(msg.restored[2].to.clone().unwrap()),
            Value::SwapOn { priority: -2 }
        );
        assert_eq!(msg.restored[2].class(), pb::Class::Mount);
        assert_eq!(msg.left_alone[0].current, None);
        assert_eq!(msg.left_alone[1].current.as_ref().unwrap().description, "x");
        assert_eq!(
            msg.left_alone[1].original.as_ref().unwrap().description,
            "absent"
        );
        assert_eq!(msg.failed.len(), 1);
        assert_eq!(msg.failed[0].reason, "changed by someone else");
        assert_eq!(msg.systemd_reload_error.as_deref(), Some("e"));
        assert_eq!((msg.follow_up_errors.len(), msg.notes.len()), (1, 1));
        let back = rollback_outcome_from_proto(msg);
        assert_eq!(
            serde_json::to_string(&back).unwrap(),
            serde_json::to_string(&o).unwrap()
        );
        assert_eq!(back.is_complete(), o.is_complete());
    }

    #[test]
    fn units_and_platform_convert() {
        let status = UnitStatus {
            unit: "trading-engine.service".into(),
            load_state: "loaded".into(),
            active_state: "active".into(),
            sub_state: "running".into(),
            unit_file_state: "enabled".into(),
            main_pid: 4242,
            active_since_us: 1_700_000_000_123_456,
            cpu_affinity: Some("2-15".into()),
            memory_bytes: Some(1 << 30),
        };
        let msg = pb::UnitStatus::from(&status);
        assert_eq!(
            msg.active_since,
            Some(Timestamp {
                seconds: 1_700_000_000,
                nanos: 123_456_000
            })
        );
        assert_eq!(UnitStatus::from(msg), status);
        let never = UnitStatus {
            active_since_us: 0,
            cpu_affinity: None,
            memory_bytes: None,
            ..status
        };
        let msg = pb::UnitStatus::from(&never);
        assert_eq!(msg.active_since, None);
        assert_eq!(UnitStatus::from(msg), never);

        let step = |unit: &str, op, result, active: &str| Step {
            unit: unit.into(),
            op,
            result,
            duration_ms: 12,
            active_state: active.into(),
            sub_state: "dead".into(),
        };
        let report = PlatformReport {
            op: JobOp::Stop,
            steps: vec![
                step(
                    "order-gateway.service",
                    JobOp::Stop,
                    JobResult::Done,
                    "inactive",
                ),
                step(
                    "trading-engine.service",
                    JobOp::Stop,
                    JobResult::Timeout,
                    "deactivating",
                ),
            ],
            failed: Some("trading-engine.service".into()),
            not_reached: vec!["risk-engine.service".into(), "market-data.service".into()],
        };
        let msg = pb::PlatformReport::from(&report);
        assert_eq!(msg.action(), pb::UnitAction::Stop);
        assert!(msg.steps[0].succeeded);
        assert!(!msg.steps[1].succeeded);
        assert_eq!(msg.steps[1].result(), pb::JobResult::Timeout);
        assert_eq!(msg.steps[1].duration_ms, 12);
        assert_eq!(msg.failed.as_deref(), Some("trading-engine.service"));
        assert_eq!(msg.not_reached.len(), 2);

        let results = [
            (JobResult::Done, pb::JobResult::Done),
            (JobResult::Canceled, pb::JobResult::Canceled),
            (JobResult::Timeout, pb::JobResult::Timeout),
            (JobResult::Failed, pb::JobResult::Failed),
            (JobResult::Dependency, pb::JobResult::Dependency),
            (JobResult::Skipped, pb::JobResult::Skipped),
            (JobResult::Other, pb::JobResult::Other),
        ];
        for (r, p) in results {
            assert_eq!(pb::JobResult::from(r), p);
            let s = step("a.service", JobOp::Start, r, "active");
            assert_eq!(pb::JobStep::from(&s).succeeded, r == JobResult::Done);
            assert_eq!(pb::JobStep::from(&s).action(), pb::UnitAction::Start);
        }
        assert_eq!(
            pb::UnitAction::from(JobOp::Restart),
            pb::UnitAction::Restart
        );
        assert_eq!(pb::Mode::from(Mode::Observe), pb::Mode::Observe);
        assert_eq!(pb::Mode::from(Mode::Enforce), pb::Mode::Enforce);
    }

    #[test]
    fn drift_events_convert() {
        let item = Item::new(Class::Sysctl, "vm.swappiness", "10")
            .actual("60")
            .status(Status::Drift);
        let new = DriftEvent {
            transition: Transition::New,
            item: item.clone(),
            previous: None,
            previous_actual: None,
            at: 1_700_000_000,
        };
        let msg = pb::DriftEvent::from(&new);
        assert_eq!(msg.transition(), pb::DriftTransition::New);
        assert_eq!(msg.previous_status(), pb::ItemStatus::Unspecified);
        assert_eq!(msg.time.unwrap().seconds, 1_700_000_000);
        assert_eq!(msg.item, Some(pb::Item::from(&item)));
        assert_eq!(msg.previous_actual, None);
        for (t, p, prev) in [
            (
                Transition::Resolved,
                pb::DriftTransition::Resolved,
                Status::Drift,
            ),
            (
                Transition::Changed,
                pb::DriftTransition::Changed,
                Status::Error,
            ),
        ] {
            let e = DriftEvent {
                transition: t,
                previous: Some(prev),
                previous_actual: Some("59".into()),
                ..new.clone()
            };
            let msg = pb::DriftEvent::from(&e);
            assert_eq!(msg.previous_actual.as_deref(), Some("59"));
            assert_eq!(msg.transition(), p);
            assert_eq!(msg.previous_status(), pb::ItemStatus::from(prev));
        }
    }

    #[test]
    fn every_enum_value_maps_both_ways() {
        for c in CLASSES {
            assert_eq!(class_from_proto(pb::Class::from(c) as i32), Some(c));
            assert_eq!(
                pb::Class::from(c).as_str_name(),
                format!("CLASS_{}", c.as_str().to_uppercase())
            );
        }
        for s in Status::ALL {
            assert_eq!(status_from_proto(pb::ItemStatus::from(s) as i32), Some(s));
            assert_eq!(
                pb::ItemStatus::from(s).as_str_name(),
                format!(
                    "ITEM_STATUS_{}",
                    s.as_str().to_uppercase().replace('-', "_")
                )
            );
        }
    }

    fn invalid(r: Result<impl std::fmt::Debug, RpcStatus>) -> String {
        let e = r.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        e.message().to_owned()
    }

    #[test]
    fn request_classes_are_validated() {
        assert_eq!(classes_from_proto(&[]).unwrap(), None);
        assert_eq!(
            classes_from_proto(&[10, 1, 2, 1]).unwrap(),
            Some(vec![Class::Cmdline, Class::Sysctl, Class::Cpu])
        );
        assert_eq!(
            invalid(classes_from_proto(&[1, 0])),
            "classes[1]: CLASS_UNSPECIFIED is not a class (send no classes for every class but \
             CLASS_CMDLINE)"
        );
        assert_eq!(
            invalid(classes_from_proto(&[99])),
            "classes[0]: unknown class 99"
        );
        assert_eq!(
            invalid(classes_from_proto(&[-1])),
            "classes[0]: unknown class -1"
        );
    }

    #[test]
    fn unit_actions_are_validated() {
        let ok = |a: pb::UnitAction| unit_action_from_proto(a as i32).unwrap();
        assert_eq!(ok(pb::UnitAction::Start), UnitAction::Job(JobOp::Start));
        assert_eq!(ok(pb::UnitAction::Stop), UnitAction::Job(JobOp::Stop));
        assert_eq!(ok(pb::UnitAction::Restart), UnitAction::Job(JobOp::Restart));
        assert_eq!(ok(pb::UnitAction::Enable), UnitAction::Enable);
        assert_eq!(ok(pb::UnitAction::Disable), UnitAction::Disable);
        for a in [
            UnitAction::Job(JobOp::Start),
            UnitAction::Job(JobOp::Stop),
            UnitAction::Job(JobOp::Restart),
            UnitAction::Enable,
            UnitAction::Disable,
        ] {
            assert_eq!(
                unit_action_from_proto(pb::UnitAction::from(a) as i32).unwrap(),
                a
            );
        }
        assert_eq!(
            invalid(unit_action_from_proto(0)),
            "action: UNIT_ACTION_UNSPECIFIED is not an action (START, STOP, RESTART, ENABLE or \
             DISABLE)"
        );
        assert_eq!(
            invalid(unit_action_from_proto(42)),
            "action: unknown unit action 42"
        );
    }

    #[test]
    fn pause_durations_are_bounded() {
        assert_eq!(pause_duration(1).unwrap(), Duration::from_secs(1));
        assert_eq!(pause_duration(86_400).unwrap(), MAX_PAUSE);
        assert_eq!(
            invalid(pause_duration(0)),
            "duration_seconds: must be at least 1"
        );
        assert_eq!(
            invalid(pause_duration(86_401)),
            "duration_seconds: 86401 is more than 24 h (86400)"
        );
        assert_eq!(
            invalid(pause_duration(u64::MAX)),
            "duration_seconds: 18446744073709551615 is more than 24 h (86400)"
        );
    }

    #[test]
    fn unit_names_are_validated() {
        assert_eq!(
            unit_name("trading-engine").unwrap().as_str(),
            "trading-engine.service"
        );
        assert_eq!(
            invalid(unit_name("")),
            "unit: missing (a managed unit's name, e.g. trading-engine.service)"
        );
        assert_eq!(
            invalid(unit_name("bad name")),
            "unit: invalid unit name \"bad name\": letters, digits and \":-_.@\\\", with a type \
             suffix such as .service"
        );
        assert_eq!(
            invalid(unit_name("../etc.service")),
            "unit: invalid unit name \"../etc.service\": letters, digits and \":-_.@\\\", with a \
             type suffix such as .service"
        );
        let units = Units::default();
        assert_eq!(
            managed_unit(&units, "order-gateway").unwrap().as_str(),
            "order-gateway.service"
        );
        assert_eq!(
            invalid(managed_unit(&units, "sshd.service")),
            "unit: sshd.service is not a managed unit (managed: market-data.service, \
             risk-engine.service, trading-engine.service, order-gateway.service); see [units] \
             in the settings"
        );
        assert!(invalid(managed_unit(&units, "a b")).starts_with("unit: invalid unit name"));
    }

    #[test]
    fn status_json_follows_the_cli_conventions() {
        let mut s = pb::GetStatusResponse {
            agent_version: "0.1.0".into(),
            api_version: "v1".into(),
            api_minor: 0,
            host: "host1".into(),
            kernel_release: "6.12.0".into(),
            profile: Some((&profile()).into()),
            profile_sha256: "ab".into(),
            mode: pb::Mode::Enforce as i32,
            enforcement_paused_until: Some(timestamp_from_secs(1_700_000_600)),
            last_verify: Some(timestamp_from_secs(1_700_000_000)),
            summary: Some((&report().summary).into()),
            interrupted_apply: None,
            enforcement_paused_by: "uid 0 (root)".into(),
        };
        let v = serde_json::to_value(status_json(&s)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "agent_version": "0.1.0",
                "api_version": "v1",
                "api_minor": 0,
                "host": "host1",
                "kernel_release": "6.12.0",
                "profile": {
                    "name": "trading-latency",
                    "path": "/etc/node-agent/profiles/trading-latency.toml"
                },
                "profile_sha256": "ab",
                "mode": "enforce",
                "enforcement_paused_until": 1_700_000_600,
                "enforcement_paused_by": "uid 0 (root)",
                "last_verify": 1_700_000_000,
                "summary": {
                    "pass": 10, "drift": 10, "pending-reboot": 10, "not-persistent": 10,
                    "unsupported": 10, "error": 10
                }
            })
        );
        s.mode = 9;
        s.enforcement_paused_until = None;
        s.enforcement_paused_by = String::new();
        s.last_verify = None;
        s.summary = None;
        s.interrupted_apply = report().interrupted_apply.as_ref().map(Into::into);
        let j = status_json(&s);
        assert_eq!(j.mode, "unknown");
        assert_eq!(
            (
                j.enforcement_paused_until,
                j.enforcement_paused_by.as_deref(),
                j.last_verify
            ),
            (None, None, None)
        );
        assert_eq!(j.summary, Summary::default());
        assert_eq!(j.interrupted_apply, report().interrupted_apply);
        let v = serde_json::to_value(&j).unwrap();
        assert_eq!(v["interrupted_apply"]["started"], 1_764_110_228);
        assert!(v["last_verify"].is_null());
    }

    #[test]
    fn timestamps_convert() {
        assert_eq!(secs_from_timestamp(None), 0);
        assert_eq!(
            secs_from_timestamp(Some(&Timestamp {
                seconds: -5,
                nanos: 0
            })),
            0
        );
        assert_eq!(secs_from_timestamp(Some(&timestamp_from_secs(42))), 42);
        assert_eq!(
            us_from_timestamp(timestamp_from_us(1_500_001).as_ref()),
            1_500_001
        );
        assert_eq!(timestamp_from_us(0), None);
    }
}
