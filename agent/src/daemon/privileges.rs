//! The daemon's capabilities. It runs as root (writing /proc/sys and sysfs as uid 0 does not
//! depend on capabilities: the files are root's), and before any thread starts it drops every
//! capability the operations its settings and profile allow do not need. What each kept one is
//! for:
//!
//! | capability | kept when | needed by |
//! |---|---|---|
//! | CAP_SYS_ADMIN | the profile has swap or mount rules, or sysctl keys the kernel guards with it | swapoff/swapon, remount, `kernel.kptr_restrict`-style sysctls |
//! | CAP_SYS_PTRACE | the profile has `[isolation]` | reading irqbalance's /proc/PID/environ (a process with more capabilities than the daemon) |
//! | CAP_NET_BIND_SERVICE | `listen.tcp` has a port below 1024 | binding it |
//!
//! Everything else (module loading, raw I/O, ptrace otherwise, changing uids, …) is gone, from
//! the bounding set too, so neither the daemon nor anything it runs can get it back. The Unix
//! socket is created and chowned before the drop. An operation that would need a dropped
//! capability is refused before anything changes ([`check_plan`]), never midway.

use caps::{CapSet, Capability, CapsHashSet};

use crate::change::Target;
use crate::profile::Profile;
use crate::settings::Settings;
use crate::tuning::plan::Plan;

/// sysctls whose handler requires CAP_SYS_ADMIN even of root (proc_dointvec_minmax_sysadmin
/// and friends in the kernel).
const SYSADMIN_SYSCTLS: &[&str] = &[
    "/proc/sys/kernel/kptr_restrict",
    "/proc/sys/kernel/dmesg_restrict",
    "/proc/sys/kernel/unprivileged_bpf_disabled",
    "/proc/sys/kernel/perf_event_paranoid",
    "/proc/sys/kernel/yama/ptrace_scope",
];

/// A capability the daemon keeps, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kept {
    pub cap: Capability,
    pub why: &'static str,
}

/// The capabilities the daemon needs for `settings` and `profile`.
pub fn needed(settings: &Settings, profile: &Profile) -> Vec<Kept> {
    let s = &profile.settings;
    let mut out = Vec::new();
    let swap = s.memory.as_ref().is_some_and(|m| m.swap.is_some());
    let sysadmin_sysctl = s
        .sysctl
        .keys()
        .any(|k| SYSADMIN_SYSCTLS.contains(&k.proc_path().as_str()));
    if swap || !s.mount.is_empty() || sysadmin_sysctl {
        out.push(Kept {
            cap: Capability::CAP_SYS_ADMIN,
            why: "swap, remount or sysadmin-guarded sysctls in the profile",
        });
    }
    if s.isolation.is_some() {
        out.push(Kept {
            cap: Capability::CAP_SYS_PTRACE,
            why: "reading irqbalance's environment (isolation)",
        });
    }
    if settings.listen.tcp.is_some_and(|a| a.port() < 1024) {
        out.push(Kept {
            cap: Capability::CAP_NET_BIND_SERVICE,
            why: "listen.tcp port below 1024",
        });
    }
    out
}

/// The capability a change needs beyond uid 0, if any.
pub fn required_for(target: &Target) -> Option<Capability> {
    match target {
        Target::Swap { .. } | Target::Mount { .. } => Some(Capability::CAP_SYS_ADMIN),
        Target::KernelFile { path } if SYSADMIN_SYSCTLS.contains(&path.as_str()) => {
            Some(Capability::CAP_SYS_ADMIN)
        }
        _ => None,
    }
}

/// Refuses a plan that needs a capability this process does not have, naming the change and
/// the capability: checked before the first write.
pub fn check_plan(plan: &Plan) -> Result<(), String> {
    check_targets(
        plan.changes
            .iter()
            .map(|c| (c.class.as_str(), c.key.as_str(), &c.target)),
    )
}

/// [`check_plan`] for any changes (rollback checks the journal's entries the same way).
pub fn check_targets<'t>(
    targets: impl Iterator<Item = (&'t str, &'t str, &'t Target)>,
) -> Result<(), String> {
    for (class, key, target) in targets {
        if matches!(target, Target::Mount { .. }) && crate::system::private_mount_namespace() {
            return Err(format!(
                "{class} {key}: {}",
                crate::system::PRIVATE_MOUNT_NAMESPACE
            ));
        }
        let Some(cap) = required_for(target) else {
            continue;
        };
        if !caps::has_cap(None, CapSet::Effective, cap).unwrap_or(false) {
            return Err(format!(
                "{class} {key} needs {cap}, which node-agentd dropped at start (its profile then \
                 did not need it); restart node-agentd so it keeps what the current profile \
                 needs, or use `agentctl tune apply --local` / `tune rollback --local` as root"
            ));
        }
    }
    Ok(())
}

/// Drops every capability but `keep` from the bounding, inheritable, ambient, effective and
/// permitted sets of the calling thread. Call before any other thread exists: capabilities
/// are per thread and new threads inherit them.
pub fn drop_all_but(keep: &[Kept]) -> Result<(), caps::errors::CapsError> {
    let keep: CapsHashSet = keep.iter().map(|k| k.cap).collect();
    // The bounding set first: dropping from it needs CAP_SETPCAP, still effective here.
    for cap in caps::all() {
        if !keep.contains(&cap) && caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false) {
            caps::drop(None, CapSet::Bounding, cap)?;
        }
    }
    caps::clear(None, CapSet::Ambient)?;
    caps::clear(None, CapSet::Inheritable)?;
    caps::set(None, CapSet::Effective, &keep)?;
    caps::set(None, CapSet::Permitted, &keep)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_map_to_the_capability_they_need() {
        assert_eq!(
            required_for(&Target::Swap {
                device: "/swapfile".into()
            }),
            Some(Capability::CAP_SYS_ADMIN)
        );
        assert_eq!(
            required_for(&Target::KernelFile {
                path: "/proc/sys/kernel/kptr_restrict".into()
            }),
            Some(Capability::CAP_SYS_ADMIN)
        );
        assert_eq!(
            required_for(&Target::KernelFile {
                path: "/proc/sys/vm/swappiness".into()
            }),
            None
        );
        assert_eq!(required_for(&Target::ProcessAffinity { pid: 1 }), None);
    }

    /// Capabilities are per thread: a thread that lowers its own effective set sees the check
    /// refuse a swap change (and still pass a sysctl), naming the capability.
    #[test]
    fn a_dropped_capability_refuses_before_anything_changes() {
        std::thread::spawn(|| {
            if !caps::has_cap(None, CapSet::Effective, Capability::CAP_SYS_ADMIN).unwrap_or(false) {
                // Not root here: the refusal is the only possible answer.
                assert!(check_targets([("memory", "memory.swap", &swap())].into_iter()).is_err());
                return;
            }
            caps::drop(None, CapSet::Effective, Capability::CAP_SYS_ADMIN).unwrap();
            let sysctl = Target::KernelFile {
                path: "/proc/sys/vm/swappiness".into(),
            };
            assert_eq!(
                check_targets([("sysctl", "vm.swappiness", &sysctl)].into_iter()),
                Ok(())
            );
            let err = check_targets([("memory", "memory.swap", &swap())].into_iter()).unwrap_err();
            assert!(
                err.starts_with(
                    "memory memory.swap needs CAP_SYS_ADMIN, which node-agentd dropped"
                ),
                "{err}"
            );
        })
        .join()
        .unwrap();
    }

    fn swap() -> Target {
        Target::Swap {
            device: "/swapfile".into(),
        }
    }
}
