//! Host actions that are system calls rather than file writes (swap, remount, a process's CPU
//! affinity, regenerating the boot loader configuration). They go through [`SystemActions`] so
//! fixture tests can record them; production runs util-linux's tools, which know every
//! filesystem's remount rules and swap signatures, and the distribution's update-grub.

use std::path::Path;
use std::process::Command;

use crate::profile::types::CpuList;

#[derive(Debug, thiserror::Error)]
#[error("failed to {action}: {detail}")]
pub struct ActionError {
    pub action: String,
    pub detail: String,
}

pub trait SystemActions {
    /// Deactivates one swap area.
    fn swapoff(&mut self, device: &str) -> Result<(), ActionError>;
    /// Activates a swap area again with its former priority.
    fn swapon(&mut self, device: &str, priority: i32) -> Result<(), ActionError>;
    /// Remounts a mount point with the given per-mount options (e.g. `noatime,nodiratime`).
    fn remount(&mut self, path: &str, options: &str) -> Result<(), ActionError>;
    /// sched_setaffinity(2) of one process (PID 1 on rollback of systemd's CPUAffinity=).
    fn set_affinity(&mut self, pid: u32, cpus: &CpuList) -> Result<(), ActionError>;
    /// Regenerates the boot loader configuration after /etc/default/grub.d changed:
    /// update-grub where it is installed. Says what it did.
    fn update_bootloader(&mut self) -> Result<String, ActionError>;
}

/// Why a remount is refused in a private mount namespace.
pub const PRIVATE_MOUNT_NAMESPACE: &str = "this process runs in its own mount namespace (node-agentd \
     under ProtectSystem=), where a remount would change only its own view of the mount, not the \
     host's; run `agentctl tune apply --local` (or `tune rollback --local`) as root instead";

/// Whether this process's mount namespace differs from PID 1's. Read once: the daemon asks
/// before it drops its capabilities (reading /proc/1/ns needs them). Where the namespace links
/// cannot be read (some sandboxes refuse even root), the id of the root mount in each
/// mountinfo tells: a new mount namespace numbers its copies of the mounts afresh.
pub fn private_mount_namespace() -> bool {
    static PRIVATE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PRIVATE.get_or_init(|| {
        if let (Ok(me), Ok(init)) = (
            std::fs::read_link("/proc/self/ns/mnt"),
            std::fs::read_link("/proc/1/ns/mnt"),
        ) {
            return me != init;
        }
        let root_mount_id = |pid: &str| {
            let text = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).ok()?;
            text.lines().find_map(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                (f.get(4) == Some(&"/")).then(|| f[0].to_owned())
            })
        };
        match (root_mount_id("self"), root_mount_id("1")) {
            (Some(me), Some(init)) => me != init,
            // Nothing to compare: as before this check existed, the remount goes ahead.
            _ => false,
        }
    })
}

/// Debian's and Ubuntu's script; RHEL uses grubby, which edits the entries itself.
pub const UPDATE_GRUB: &str = "/usr/sbin/update-grub";

/// The real thing: swapoff(8), swapon(8), mount(8). Only valid with the host root `/`.
#[derive(Debug, Default)]
pub struct RealSystem;

fn run(action: String, cmd: &mut Command) -> Result<(), ActionError> {
    let out = cmd.output().map_err(|e| ActionError {
        action: action.clone(),
        detail: format!("cannot run {:?}: {e}", cmd.get_program()),
    })?;
    if out.status.success() {
        return Ok(());
    }
    Err(ActionError {
        action,
        detail: format!(
            "{} ({})",
            String::from_utf8_lossy(&out.stderr).trim(),
            out.status
        ),
    })
}

impl SystemActions for RealSystem {
    fn swapoff(&mut self, device: &str) -> Result<(), ActionError> {
        run(
            format!("swapoff {device}"),
            Command::new("swapoff").arg(device),
        )
    }

    fn swapon(&mut self, device: &str, priority: i32) -> Result<(), ActionError> {
        let mut cmd = Command::new("swapon");
        // Negative priorities are the kernel's automatic ones; swapon only accepts >= -1.
        if priority >= 0 {
            cmd.arg("--priority").arg(priority.to_string());
        }
        run(format!("swapon {device}"), cmd.arg(device))
    }

    fn remount(&mut self, path: &str, options: &str) -> Result<(), ActionError> {
        if private_mount_namespace() {
            return Err(ActionError {
                action: format!("remount {path} with {options}"),
                detail: PRIVATE_MOUNT_NAMESPACE.into(),
            });
        }
        run(
            format!("remount {path} with {options}"),
            Command::new("mount")
                .arg("-o")
                .arg(format!("remount,{options}"))
                .arg(path),
        )
    }

    fn set_affinity(&mut self, pid: u32, cpus: &CpuList) -> Result<(), ActionError> {
        let action = format!("set the CPU affinity of pid {pid} to {cpus}");
        let fail = |detail: String| ActionError {
            action: action.clone(),
            detail,
        };
        let mut set = nix::sched::CpuSet::new();
        for c in cpus.iter() {
            set.set(c as usize).map_err(|e| fail(e.to_string()))?;
        }
        let pid = i32::try_from(pid).map_err(|e| fail(e.to_string()))?;
        nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(pid), &set)
            .map_err(|e| fail(e.to_string()))
    }

    fn update_bootloader(&mut self) -> Result<String, ActionError> {
        if !Path::new(UPDATE_GRUB).exists() {
            return Ok(format!(
                "{UPDATE_GRUB} is not installed: regenerate the boot loader configuration by hand"
            ));
        }
        run("run update-grub".into(), &mut Command::new(UPDATE_GRUB))?;
        Ok(format!("ran {UPDATE_GRUB}"))
    }
}

/// Refuses every action: used when the host root is not `/`, where a system call would act on
/// the real machine instead of the tree being examined.
#[derive(Debug)]
pub struct NoSystem {
    pub why: String,
}

impl SystemActions for NoSystem {
    fn swapoff(&mut self, device: &str) -> Result<(), ActionError> {
        Err(self.refuse(format!("swapoff {device}")))
    }
    fn swapon(&mut self, device: &str, _priority: i32) -> Result<(), ActionError> {
        Err(self.refuse(format!("swapon {device}")))
    }
    fn remount(&mut self, path: &str, _options: &str) -> Result<(), ActionError> {
        Err(self.refuse(format!("remount {path}")))
    }
    fn set_affinity(&mut self, pid: u32, _cpus: &CpuList) -> Result<(), ActionError> {
        Err(self.refuse(format!("set the CPU affinity of pid {pid}")))
    }
    fn update_bootloader(&mut self) -> Result<String, ActionError> {
        Err(self.refuse("run update-grub".into()))
    }
}

impl NoSystem {
    fn refuse(&self, action: String) -> ActionError {
        ActionError {
            action,
            detail: self.why.clone(),
        }
    }
}

/// Records calls and succeeds: for tests of the apply and rollback logic.
#[derive(Debug, Default)]
pub struct RecordingSystem {
    pub calls: Vec<String>,
}

impl SystemActions for RecordingSystem {
    fn swapoff(&mut self, device: &str) -> Result<(), ActionError> {
        self.calls.push(format!("swapoff {device}"));
        Ok(())
    }
    fn swapon(&mut self, device: &str, priority: i32) -> Result<(), ActionError> {
        self.calls
            .push(format!("swapon {device} priority {priority}"));
        Ok(())
    }
    fn remount(&mut self, path: &str, options: &str) -> Result<(), ActionError> {
        self.calls.push(format!("remount {path} {options}"));
        Ok(())
    }
    fn set_affinity(&mut self, pid: u32, cpus: &CpuList) -> Result<(), ActionError> {
        self.calls.push(format!("set_affinity {pid} {cpus}"));
        Ok(())
    }
    fn update_bootloader(&mut self) -> Result<String, ActionError> {
        self.calls.push("update_bootloader".into());
        Ok("recorded".into())
    }
}
