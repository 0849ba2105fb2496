//! The isolation layout's kernel command line: /proc/cmdline read as the kernel splits it (a
//! bare `--`, quotes, `-` for `_`), one `cmdline.*` item per expected argument with the exact
//! change, the kernel's effective view, the boot loader change (`agentctl isolation
//! bootloader`) for Debian's GRUB drop-ins and for grubby, and `--write` (apply with class
//! `cmdline`) written, update-grub run, and rolled back, on fixture trees.
//!
//! The last test reads this machine's own /proc/cmdline (read-only), with
//! `NODE_AGENT_PRIVILEGED_TESTS=1`.

#[path = "support/real.rs"]
mod real;
mod support;

use node_agent::audit::{Audit, Caller};
use node_agent::change::{Target, Value};
use node_agent::host::HostRoot;
use node_agent::profile::{self, Isolation, Profile, SearchPath};
use node_agent::rollback::apply::{self, Session};
use node_agent::rollback::journal::StateDir;
use node_agent::system::RecordingSystem;
use node_agent::tuning::isolation::cmdline::{
    self, Action, BootLoaderKind, DROP_IN, KernelArg, SetIn, expected_args, parse_cmdline,
};
use node_agent::verify::{Class, Fix, Item, Status};
use support::FixtureHost;

const LAYOUT: &str = r#"
[isolation]
housekeeping_cpus = "0-1"
isolated_cpus = "2-15"
kernel_args = ["skew_tick=1", "nosoftlockup", "tsc=reliable"]
"#;

const BOOT: &str = "BOOT_IMAGE=/boot/vmlinuz-6.1.0-27-amd64 \
                    root=UUID=5d2a6a1e-8f3b-4c8e-9d0a-1b2c3d4e5f60 ro quiet";

const EXPECTED: [&str; 7] = [
    "isolcpus=managed_irq,domain,2-15",
    "nohz_full=2-15",
    "rcu_nocbs=2-15",
    "irqaffinity=0-1",
    "skew_tick=1",
    "nosoftlockup",
    "tsc=reliable",
];

const KEYS: [&str; 7] = [
    "cmdline.isolcpus",
    "cmdline.nohz_full",
    "cmdline.rcu_nocbs",
    "cmdline.irqaffinity",
    "cmdline.skew_tick",
    "cmdline.nosoftlockup",
    "cmdline.tsc",
];

/// The drop-in, byte for byte.
const DROP_IN_CONTENT: &str = "\
# Written by node-agent (agentctl isolation bootloader --write); do not edit.
# Removed by `agentctl tune rollback`, which runs update-grub again.
# CPU isolation: housekeeping 0-1, isolated 2-15. Sourced by update-grub after
# /etc/default/grub; takes effect at the next boot.
GRUB_CMDLINE_LINUX=\"$GRUB_CMDLINE_LINUX isolcpus=managed_irq,domain,2-15 nohz_full=2-15 \
rcu_nocbs=2-15 irqaffinity=0-1 skew_tick=1 nosoftlockup tsc=reliable\"
";

/// Debian 12's /etc/default/grub as installed, with `cmdline_linux` as GRUB_CMDLINE_LINUX
/// (line 10).
fn grub_default(cmdline_linux: &str) -> String {
    format!(
        "# If you change this file, run 'update-grub' afterwards to update\n\
         # /boot/grub/grub.cfg.\n\
         # For full documentation of the options in this file, see:\n\
         #   info -f grub -n 'Simple configuration'\n\
         \n\
         GRUB_DEFAULT=0\n\
         GRUB_TIMEOUT=5\n\
         GRUB_DISTRIBUTOR=`lsb_release -i -s 2> /dev/null || echo Debian`\n\
         GRUB_CMDLINE_LINUX_DEFAULT=\"quiet\"\n\
         GRUB_CMDLINE_LINUX=\"{cmdline_linux}\"\n"
    )
}

/// A Debian host with GRUB: /etc/default/grub, update-grub (no grub.d directory yet, as on a
/// plain install).
fn debian(fx: &FixtureHost) {
    fx.write("/etc/default/grub", grub_default(""));
    fx.write(
        "/usr/sbin/update-grub",
        "#!/bin/sh\nexec grub-mkconfig -o /boot/grub/grub.cfg \"$@\"\n",
    );
}

fn load(fx: &FixtureHost, toml: &str) -> Profile {
    profile::load(
        fx.profile("layout", toml).to_str().unwrap(),
        &SearchPath::new(Vec::new()),
    )
    .unwrap()
}

fn layout(p: &Profile) -> &Isolation {
    p.settings.isolation.as_ref().unwrap()
}

/// The cmdline items of the layout on this fixture.
fn items(fx: &FixtureHost, toml: &str) -> Vec<Item> {
    let p = load(fx, toml);
    let mut out = Vec::new();
    cmdline::verify(&fx.host(), layout(&p), &mut out);
    assert!(out.iter().all(|i| i.class == Class::Cmdline), "{out:#?}");
    out
}

fn item<'i>(items: &'i [Item], key: &str) -> &'i Item {
    items
        .iter()
        .find(|i| i.key == key)
        .unwrap_or_else(|| panic!("no item {key} in {items:#?}"))
}

fn set_cmdline(fx: &FixtureHost, args: &str) {
    fx.write("/proc/cmdline", format!("{BOOT} {args}\n"));
}

fn drop_in_fix(from: Value) -> Fix {
    Fix {
        target: Target::ConfigFile {
            path: DROP_IN.to_owned(),
        },
        from,
        to: Value::text(DROP_IN_CONTENT),
    }
}

const WRITE_HINT: &str = "run `agentctl isolation bootloader --write` (writes \
                          /etc/default/grub.d/zz-node-agent-isolation.cfg, runs update-grub)";

#[test]
fn expected_args_are_derived_in_compact_ranges_then_the_profile_extras() {
    let fx = FixtureHost::tuned();
    let p = load(&fx, LAYOUT);
    let args: Vec<String> = expected_args(layout(&p))
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(args, EXPECTED);
    assert_eq!(
        expected_args(layout(&p))[5],
        KernelArg::new("nosoftlockup", None)
    );
    // An extra naming a derived parameter replaces it in place; a repeated extra replaces the
    // earlier one (the kernel's last-wins).
    let p = load(
        &fx,
        "[isolation]\nhousekeeping_cpus = \"0,1\"\nisolated_cpus = \"2,3,4,5,8-9\"\n\
         kernel_args = [\"isolcpus=nohz,domain,managed_irq,2-5,8-9\", \"skew-tick=0\", \
         \"skew_tick=1\"]\n",
    );
    let args: Vec<String> = expected_args(layout(&p))
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        args,
        [
            "isolcpus=nohz,domain,managed_irq,2-5,8-9",
            "nohz_full=2-5,8-9",
            "rcu_nocbs=2-5,8-9",
            "irqaffinity=0-1",
            "skew_tick=1",
        ]
    );
}

#[test]
fn without_isolation_args_every_argument_is_pending_reboot_with_the_drop_in_fix() {
    let fx = FixtureHost::tuned();
    debian(&fx);
    let items = items(&fx, LAYOUT);
    let keys: Vec<&str> = items.iter().map(|i| i.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            &KEYS[..],
            &["cmdline.effective.isolated", "cmdline.effective.nohz_full"]
        ]
        .concat()
    );
    for (key, expected) in KEYS.iter().zip(EXPECTED) {
        let it = item(&items, key);
        assert_eq!(it.status, Status::PendingReboot, "{it:?}");
        assert_eq!(it.expected, expected);
        assert_eq!(it.actual, None);
        assert_eq!(it.path.as_deref(), Some("/proc/cmdline"));
        assert_eq!(
            it.reason.as_deref(),
            Some(format!("add {expected}: {WRITE_HINT}, then reboot").as_str())
        );
        assert_eq!(it.fixes, [drop_in_fix(Value::Absent)], "{key}");
    }
    let isolated = item(&items, "cmdline.effective.isolated");
    assert_eq!(
        (
            isolated.status,
            isolated.expected.as_str(),
            isolated.actual.as_deref(),
            isolated.path.as_deref()
        ),
        (
            Status::PendingReboot,
            "2-15",
            Some("none"),
            Some("/sys/devices/system/cpu/isolated")
        )
    );
    assert_eq!(
        isolated.reason.as_deref(),
        Some(
            "the running kernel was booted without isolcpus=managed_irq,domain,2-15 \
             (cmdline.isolcpus): reboot after the boot loader sets it"
        )
    );
    assert!(isolated.fixes.is_empty());
    // The fixture kernel has no nohz_full file: built without NO_HZ_FULL.
    let nohz = item(&items, "cmdline.effective.nohz_full");
    assert_eq!(
        (nohz.status, nohz.actual.as_deref(), nohz.reason.as_deref()),
        (
            Status::Unsupported,
            None,
            Some("the kernel is built without NO_HZ_FULL: nohz_full= has no effect")
        )
    );
}

#[test]
fn a_plain_apply_plan_lists_the_boot_arguments_as_not_fixable() {
    let fx = FixtureHost::tuned();
    debian(&fx);
    let p = load(&fx, LAYOUT);
    let (plan, _) = apply::plan(&fx.host(), &p, None, None);
    assert!(
        !plan.changes.iter().any(|c| c.class == Class::Cmdline),
        "{:?}",
        plan.changes
    );
    let isolcpus = plan
        .not_fixable
        .iter()
        .find(|s| s.key == "cmdline.isolcpus")
        .unwrap();
    assert_eq!(isolcpus.status, Status::PendingReboot);
    assert_eq!(
        isolcpus.reason,
        "the boot loader does not set it: run `agentctl isolation bootloader --write`, then \
         reboot"
    );
    // With the class named (`--write`), the one drop-in is the one change.
    let (plan, _) = apply::plan(&fx.host(), &p, Some(&[Class::Cmdline]), None);
    let changes: Vec<(&str, &Value, &Value)> = plan
        .changes
        .iter()
        .map(|c| (c.key.as_str(), &c.from, &c.to))
        .collect();
    assert_eq!(
        changes,
        [(DROP_IN, &Value::Absent, &Value::text(DROP_IN_CONTENT))]
    );
}

#[test]
fn with_every_argument_and_the_kernel_agreeing_everything_passes() {
    let fx = FixtureHost::tuned();
    debian(&fx);
    set_cmdline(&fx, &EXPECTED.join(" "));
    fx.write("/sys/devices/system/cpu/isolated", "2-15\n");
    fx.write("/sys/devices/system/cpu/nohz_full", "2-15\n");
    let items = items(&fx, LAYOUT);
    assert_eq!(items.len(), 9);
    for it in &items {
        assert_eq!((it.status, &it.reason), (Status::Pass, &None), "{it:?}");
        assert!(it.fixes.is_empty());
    }
    for (key, expected) in KEYS.iter().zip(EXPECTED) {
        assert_eq!(item(&items, key).actual.as_deref(), Some(expected));
    }
    assert_eq!(
        item(&items, "cmdline.effective.nohz_full")
            .actual
            .as_deref(),
        Some("2-15")
    );
    // The same CPUs written otherwise, and the isolcpus flags in another order, are the same.
    set_cmdline(
        &fx,
        "isolcpus=domain,managed_irq,2-7,8-15 nohz_full=2,3,4-15 rcu_nocbs=2-15 \
         irqaffinity=0,1 skew_tick=1 nosoftlockup tsc=reliable",
    );
    let items2 = self::items(&fx, LAYOUT);
    assert!(
        items2.iter().all(|i| i.status == Status::Pass),
        "{items2:#?}"
    );
    assert_eq!(
        item(&items2, "cmdline.isolcpus").actual.as_deref(),
        Some("isolcpus=domain,managed_irq,2-7,8-15")
    );
}

#[test]
fn a_different_isolcpus_is_replaced_and_where_it_is_set_is_named() {
    let fx = FixtureHost::tuned();
    debian(&fx);
    fx.write(
        "/etc/default/grub",
        grub_default("isolcpus=1 console=ttyS0"),
    );
    set_cmdline(
        &fx,
        "isolcpus=1 nohz_full=2-15 rcu_nocbs=2-15 irqaffinity=0-1 skew_tick=1 nosoftlockup \
         tsc=reliable",
    );
    let items = items(&fx, LAYOUT);
    let it = item(&items, "cmdline.isolcpus");
    assert_eq!(
        (it.status, it.actual.as_deref()),
        (Status::PendingReboot, Some("isolcpus=1"))
    );
    assert_eq!(
        it.reason.as_deref(),
        Some(
            format!(
                "replace isolcpus=1 with isolcpus=managed_irq,domain,2-15: {WRITE_HINT} and \
                 remove isolcpus=1 from /etc/default/grub:10, then reboot"
            )
            .as_str()
        )
    );
    assert_eq!(it.fixes, [drop_in_fix(Value::Absent)]);
    // The others are there.
    for key in &KEYS[1..] {
        assert_eq!(item(&items, key).status, Status::Pass, "{key}");
    }
    // A plain `isolcpus=2-15` means the domain flag only: managed_irq is missing. What to
    // remove is what the GRUB defaults set, not the running value.
    set_cmdline(&fx, "isolcpus=2-15");
    let items = self::items(&fx, LAYOUT);
    assert_eq!(
        item(&items, "cmdline.isolcpus").reason.as_deref(),
        Some(
            format!(
                "replace isolcpus=2-15 with isolcpus=managed_irq,domain,2-15: {WRITE_HINT} and \
                 remove isolcpus=1 from /etc/default/grub:10, then reboot"
            )
            .as_str()
        )
    );
}

#[test]
fn init_arguments_after_a_bare_double_dash_are_ignored() {
    let fx = FixtureHost::tuned();
    debian(&fx);
    set_cmdline(
        &fx,
        "isolcpus=managed_irq,domain,2-15 rcu_nocbs=2-15 irqaffinity=0-1 skew_tick=1 \
         nosoftlockup tsc=reliable -- --init-flag nohz_full=1 nohz_full=2-15",
    );
    let items = items(&fx, LAYOUT);
    let it = item(&items, "cmdline.nohz_full");
    assert_eq!(
        (it.status, it.actual.as_deref()),
        (Status::PendingReboot, None)
    );
    assert_eq!(
        it.reason.as_deref(),
        Some(format!("add nohz_full=2-15: {WRITE_HINT}, then reboot").as_str())
    );
    assert_eq!(item(&items, "cmdline.tsc").status, Status::Pass);
    let args = parse_cmdline(&std::fs::read_to_string(fx.real("/proc/cmdline")).unwrap());
    assert_eq!(
        args.last(),
        Some(&KernelArg::new("tsc", Some("reliable".into())))
    );
}

#[test]
fn quoted_values_are_read_as_the_kernel_reads_them() {
    let fx = FixtureHost::tuned();
    debian(&fx);
    set_cmdline(
        &fx,
        "\"isolcpus=managed_irq,domain,2-15\" dyndbg=\"file sched.c +p\" nohz_full=\"2-15\" \
         rcu_nocbs=2-15 irqaffinity=0-1 \"acpi_osi=!Windows 2012\" skew_tick=1 nosoftlockup \
         tsc=\"reliable\"",
    );
    let items = items(&fx, LAYOUT);
    for key in KEYS {
        assert_eq!(item(&items, key).status, Status::Pass, "{key}");
    }
    assert_eq!(
        item(&items, "cmdline.tsc").actual.as_deref(),
        Some("tsc=reliable")
    );
    let args = parse_cmdline(&std::fs::read_to_string(fx.real("/proc/cmdline")).unwrap());
    assert!(args.contains(&KernelArg::new("dyndbg", Some("file sched.c +p".into()))));
    assert!(args.contains(&KernelArg::new("acpi_osi", Some("!Windows 2012".into()))));
}

#[test]
fn hyphens_and_underscores_name_the_same_parameter() {
    let fx = FixtureHost::tuned();
    debian(&fx);
    set_cmdline(
        &fx,
        "isolcpus=managed_irq,domain,2-15 nohz-full=2-15 rcu-nocbs=1 irqaffinity=0-1 \
         skew-tick=1 nosoftlockup tsc=reliable",
    );
    let items = items(&fx, LAYOUT);
    let nohz = item(&items, "cmdline.nohz_full");
    assert_eq!(
        (nohz.status, nohz.actual.as_deref()),
        (Status::Pass, Some("nohz-full=2-15"))
    );
    assert_eq!(item(&items, "cmdline.skew_tick").status, Status::Pass);
    let rcu = item(&items, "cmdline.rcu_nocbs");
    assert_eq!(rcu.status, Status::PendingReboot);
    assert_eq!(
        rcu.reason.as_deref(),
        Some(
            format!(
                "replace rcu-nocbs=1 with rcu_nocbs=2-15: {WRITE_HINT} and remove rcu-nocbs=1 \
                 from the boot loader configuration, then reboot"
            )
            .as_str()
        )
    );
    // grubby removes the spelling the command line has.
    let p = load(&fx, LAYOUT);
    let b = cmdline::bootloader(&fx.host(), layout(&p));
    assert_eq!(
        b.rhel.command,
        format!(
            "grubby --update-kernel=ALL --remove-args=\"rcu-nocbs\" --args=\"{}\"",
            EXPECTED.join(" ")
        )
    );
}

#[test]
fn the_kernel_ignoring_an_argument_on_the_command_line_is_drift() {
    let fx = FixtureHost::tuned();
    debian(&fx);
    set_cmdline(&fx, &EXPECTED.join(" "));
    fx.write("/sys/devices/system/cpu/isolated", "2-7\n");
    fx.write("/sys/devices/system/cpu/nohz_full", "(null)\n");
    let items = items(&fx, LAYOUT);
    let isolated = item(&items, "cmdline.effective.isolated");
    assert_eq!(
        (isolated.status, isolated.actual.as_deref()),
        (Status::Drift, Some("2-7"))
    );
    assert_eq!(
        isolated.reason.as_deref(),
        Some(
            "the kernel ignored isolcpus=managed_irq,domain,2-15: /proc/cmdline has it, yet \
             the kernel's CPUs are 2-7 (see `dmesg | grep -i -e isol -e nohz -e housekeeping`)"
        )
    );
    assert!(isolated.fixes.is_empty());
    let nohz = item(&items, "cmdline.effective.nohz_full");
    assert_eq!(
        (nohz.status, nohz.actual.as_deref()),
        (Status::Drift, Some("none"))
    );
    assert_eq!(
        nohz.reason.as_deref(),
        Some(
            "the kernel ignored nohz_full=2-15: /proc/cmdline has it, yet the kernel's CPUs are \
             none (see `dmesg | grep -i -e isol -e nohz -e housekeeping`)"
        )
    );
    // Not something apply fixes: listed apart, never planned.
    let p = load(&fx, LAYOUT);
    let (plan, _) = apply::plan(&fx.host(), &p, Some(&[Class::Cmdline]), None);
    assert!(plan.changes.is_empty(), "{:?}", plan.changes);
    assert!(
        plan.not_fixable
            .iter()
            .any(|s| s.key == "cmdline.effective.isolated" && s.status == Status::Drift)
    );
}

#[test]
fn an_earlier_isolcpus_wins_in_the_kernel_and_the_effective_item_says_so() {
    let fx = FixtureHost::tuned();
    debian(&fx);
    // An old hand edit plus the drop-in's value after it: the last one is compared (pass),
    // the kernel kept the first mask.
    set_cmdline(&fx, &format!("isolcpus=2-7 {}", EXPECTED.join(" ")));
    fx.write("/sys/devices/system/cpu/isolated", "2-7\n");
    fx.write("/sys/devices/system/cpu/nohz_full", "2-15\n");
    let items = items(&fx, LAYOUT);
    assert_eq!(item(&items, "cmdline.isolcpus").status, Status::Pass);
    let isolated = item(&items, "cmdline.effective.isolated");
    assert_eq!(isolated.status, Status::Drift);
    assert_eq!(
        isolated.reason.as_deref(),
        Some(
            "the kernel ignored isolcpus=managed_irq,domain,2-15: /proc/cmdline has it, yet \
             the kernel's CPUs are 2-7 (see `dmesg | grep -i -e isol -e nohz -e housekeeping`); \
             /proc/cmdline has it 2 times (isolcpus=2-7 isolcpus=managed_irq,domain,2-15): the \
             kernel keeps the first CPU list and rejects a different later one, so remove the \
             others from the boot loader configuration"
        )
    );
    assert_eq!(
        item(&items, "cmdline.effective.nohz_full").status,
        Status::Pass
    );
}

#[test]
fn unreadable_kernel_views_are_errors() {
    let fx = FixtureHost::tuned();
    fx.make_unreadable("/sys/devices/system/cpu/isolated");
    fx.write("/sys/devices/system/cpu/nohz_full", "2-x\n");
    let items = items(&fx, LAYOUT);
    let isolated = item(&items, "cmdline.effective.isolated");
    assert_eq!(isolated.status, Status::Error);
    assert!(
        isolated
            .reason
            .as_deref()
            .unwrap()
            .starts_with("failed to read "),
        "{isolated:?}"
    );
    let nohz = item(&items, "cmdline.effective.nohz_full");
    assert_eq!(
        (nohz.status, nohz.actual.as_deref()),
        (Status::Error, Some("2-x"))
    );
    // /proc/cmdline itself unreadable: one error item, and the effective view cannot tell.
    fx.make_unreadable("/proc/cmdline");
    fx.write("/sys/devices/system/cpu/isolated", "\n");
    let items = self::items(&fx, LAYOUT);
    let keys: Vec<&str> = items.iter().map(|i| i.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "cmdline",
            "cmdline.effective.isolated",
            "cmdline.effective.nohz_full"
        ]
    );
    assert_eq!(items[0].status, Status::Error);
    assert_eq!(items[0].expected, EXPECTED.join(" "));
    assert_eq!(
        (items[1].status, items[1].reason.as_deref()),
        (
            Status::Error,
            Some("/proc/cmdline could not be read: cannot tell whether a reboot fixes it")
        )
    );
}

#[test]
fn a_written_drop_in_means_reboot_and_no_fix() {
    let fx = FixtureHost::tuned();
    debian(&fx);
    fx.write(DROP_IN, DROP_IN_CONTENT);
    let items = items(&fx, LAYOUT);
    for (key, expected) in KEYS.iter().zip(EXPECTED) {
        let it = item(&items, key);
        assert_eq!(it.status, Status::PendingReboot);
        assert_eq!(
            it.reason.as_deref(),
            Some(
                format!(
                    "add {expected}: the boot loader is configured \
                     (/etc/default/grub.d/zz-node-agent-isolation.cfg); reboot to apply"
                )
                .as_str()
            )
        );
        assert!(it.fixes.is_empty(), "{key}");
    }
    // Another content (an older layout): rewritten from what is there.
    fx.write(
        DROP_IN,
        "GRUB_CMDLINE_LINUX=\"$GRUB_CMDLINE_LINUX isolcpus=3\"\n",
    );
    let items = self::items(&fx, LAYOUT);
    assert_eq!(
        item(&items, "cmdline.isolcpus").fixes,
        [drop_in_fix(Value::text(
            "GRUB_CMDLINE_LINUX=\"$GRUB_CMDLINE_LINUX isolcpus=3\"\n"
        ))]
    );
}

#[test]
fn grub_d_alone_makes_a_host_debian_style() {
    let fx = FixtureHost::tuned();
    fx.write(
        "/etc/default/grub.d/50-cloudimg-settings.cfg",
        "GRUB_TIMEOUT=0\n",
    );
    assert_eq!(BootLoaderKind::of(&fx.host()), BootLoaderKind::DebianGrub);
    let items = items(&fx, LAYOUT);
    assert_eq!(
        item(&items, "cmdline.nohz_full").fixes,
        [drop_in_fix(Value::Absent)]
    );
}

#[test]
fn a_host_without_grub_drop_ins_gets_the_grubby_command_and_no_fix() {
    let fx = FixtureHost::tuned();
    set_cmdline(&fx, "nohz_full=1 nohz-full=3");
    // Neither update-grub, /etc/default/grub.d nor grubby.
    assert_eq!(BootLoaderKind::of(&fx.host()), BootLoaderKind::Unknown);
    let items = items(&fx, LAYOUT);
    let nohz = item(&items, "cmdline.nohz_full");
    assert_eq!(
        nohz.reason.as_deref(),
        Some(
            "replace nohz-full=3 with nohz_full=2-15: this host has neither \
             /usr/sbin/update-grub, /etc/default/grub.d nor /usr/sbin/grubby; on RHEL run \
             `grubby --update-kernel=ALL --remove-args=\"nohz_full nohz-full\" \
             --args=\"nohz_full=2-15\"`, otherwise set it where this host's boot loader takes \
             the kernel command line; then reboot"
        )
    );
    assert!(items.iter().all(|i| i.fixes.is_empty()));

    // RHEL: grubby is there.
    fx.write("/usr/sbin/grubby", "#!/bin/bash\n");
    fx.write(
        "/etc/default/grub",
        "GRUB_CMDLINE_LINUX=\"crashkernel=auto rhgb quiet\"\n",
    );
    assert_eq!(BootLoaderKind::of(&fx.host()), BootLoaderKind::Grubby);
    let items = self::items(&fx, LAYOUT);
    assert_eq!(
        item(&items, "cmdline.skew_tick").reason.as_deref(),
        Some(
            "add skew_tick=1: run `grubby --update-kernel=ALL --args=\"skew_tick=1\"`, then reboot"
        )
    );
    assert!(items.iter().all(|i| i.fixes.is_empty()));
    let p = load(&fx, LAYOUT);
    let (plan, _) = apply::plan(&fx.host(), &p, Some(&[Class::Cmdline]), None);
    assert!(plan.changes.is_empty(), "{:?}", plan.changes);
    let skew = plan
        .not_fixable
        .iter()
        .find(|s| s.key == "cmdline.skew_tick")
        .unwrap();
    assert_eq!(
        skew.reason,
        "add skew_tick=1: run `grubby --update-kernel=ALL --args=\"skew_tick=1\"`, then reboot"
    );
    let b = cmdline::bootloader(&fx.host(), layout(&p));
    assert_eq!(b.boot_loader, BootLoaderKind::Grubby);
    assert_eq!(
        b.rhel.command,
        format!(
            "grubby --update-kernel=ALL --remove-args=\"nohz_full nohz-full\" --args=\"{}\"",
            EXPECTED.join(" ")
        )
    );
}

#[test]
fn shell_characters_in_a_profile_argument_are_refused_when_the_profile_loads() {
    // The drop-in is sourced by sh and ends up in grub.cfg: such an argument never gets as far
    // as a plan (the writer refuses it again, as a second guard).
    let fx = FixtureHost::tuned();
    debian(&fx);
    let path = fx.profile(
        "shell",
        "[isolation]\nhousekeeping_cpus = \"0-1\"\nisolated_cpus = \"2-15\"\n\
         kernel_args = [\"skew_tick=1\", \"foo=$(reboot)\"]\n",
    );
    let err = node_agent::profile::load(
        path.to_str().unwrap(),
        &node_agent::profile::SearchPath::new(Vec::new()),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.ends_with(
            "isolation: invalid kernel argument \"foo=$(reboot)\": one argument per string, of \
             letters, digits and = , . - _ : / + @ % ~ (no spaces, quotes or shell characters)"
        ),
        "{err}"
    );
}

#[test]
fn bootloader_gives_the_drop_in_the_grubby_line_and_a_text_to_follow() {
    let fx = FixtureHost::tuned();
    debian(&fx);
    fx.write(
        "/etc/default/grub",
        grub_default("isolcpus=1 console=ttyS0"),
    );
    set_cmdline(&fx, "isolcpus=1 irqaffinity=0-1 -- nohz_full=2-15");
    let p = load(&fx, LAYOUT);
    let b = cmdline::bootloader(&fx.host(), layout(&p));
    assert_eq!(b.expected, EXPECTED.join(" "));
    assert_eq!(
        b.running.as_deref(),
        Some(format!("{BOOT} isolcpus=1 irqaffinity=0-1").as_str())
    );
    assert!(b.reboot_needed);
    assert_eq!(b.boot_loader, BootLoaderKind::DebianGrub);
    assert_eq!(b.debian.drop_in, DROP_IN);
    assert_eq!(b.debian.content, DROP_IN_CONTENT);
    assert_eq!(b.debian.drop_in_state, "absent");
    assert!(b.debian.write_needed);
    assert_eq!(b.debian.command, "update-grub");
    assert_eq!(
        b.rhel.command,
        "grubby --update-kernel=ALL --remove-args=\"isolcpus\" \
         --args=\"isolcpus=managed_irq,domain,2-15 nohz_full=2-15 rcu_nocbs=2-15 \
         irqaffinity=0-1 skew_tick=1 nosoftlockup tsc=reliable\""
    );
    assert_eq!(
        b.rhel.undo,
        "grubby --update-kernel=ALL --remove-args=\"isolcpus nohz_full rcu_nocbs irqaffinity \
         skew_tick nosoftlockup tsc\""
    );
    let actions: Vec<(&str, Action, Option<&str>)> = b
        .args
        .iter()
        .map(|a| (a.name.as_str(), a.action, a.actual.as_deref()))
        .collect();
    assert_eq!(
        actions,
        [
            ("isolcpus", Action::Replace, Some("isolcpus=1")),
            ("nohz_full", Action::Add, None),
            ("rcu_nocbs", Action::Add, None),
            ("irqaffinity", Action::Ok, Some("irqaffinity=0-1")),
            ("skew_tick", Action::Add, None),
            ("nosoftlockup", Action::Add, None),
            ("tsc", Action::Add, None),
        ]
    );
    assert_eq!(
        b.args[0].set_in,
        [SetIn {
            at: "/etc/default/grub:10".into(),
            arg: "isolcpus=1".into()
        }]
    );
    assert_eq!(
        json_of(&b)["args"][0]["set_in"],
        serde_json::json!([{"at": "/etc/default/grub:10", "arg": "isolcpus=1"}])
    );

    let json = json_of(&b);
    assert_eq!(json["schema_version"], 1);
    assert_eq!(json["boot_loader"], "debian-grub");
    assert_eq!(json["reboot_needed"], true);
    assert_eq!(json["args"][0]["action"], "replace");
    assert_eq!(json["args"][1]["action"], "add");
    assert_eq!(json["args"][3]["action"], "ok");
    assert_eq!(json["debian"]["content"], DROP_IN_CONTENT);

    let mut text = Vec::new();
    cmdline::render(&b, &mut text).unwrap();
    let text = String::from_utf8(text).unwrap();
    let expected = format!(
        "\
Kernel command line for CPU isolation: housekeeping 0-1, isolated 2-15

Expected arguments:
  isolcpus=managed_irq,domain,2-15 nohz_full=2-15 rcu_nocbs=2-15 irqaffinity=0-1 skew_tick=1 nosoftlockup tsc=reliable

Running kernel (/proc/cmdline, before `--`):
  {BOOT} isolcpus=1 irqaffinity=0-1

  replace  isolcpus=1  with  isolcpus=managed_irq,domain,2-15
           remove isolcpus=1 from /etc/default/grub:10
  add      nohz_full=2-15
  add      rcu_nocbs=2-15
  ok       irqaffinity=0-1
  add      skew_tick=1
  add      nosoftlockup
  add      tsc=reliable

Debian/Ubuntu (GRUB)  <- this host
  node-agent writes the drop-in and runs update-grub (journaled):
    agentctl isolation bootloader --write
  or by hand, write /etc/default/grub.d/zz-node-agent-isolation.cfg with:
{}  then run: update-grub
  Undo: agentctl tune rollback (removes the drop-in, runs update-grub again)

RHEL/Rocky/Alma (grubby)
  {}
  Undo: {}
        (re-add any value shown as `replace` above)

A reboot is needed; node-agent never reboots. Reboot in a maintenance window, then
check with `agentctl tune verify`: the cmdline items must pass.
",
        DROP_IN_CONTENT
            .lines()
            .map(|l| format!("    {l}\n"))
            .collect::<String>(),
        b.rhel.command,
        b.rhel.undo
    );
    assert_eq!(text, expected);

    // Everything there: nothing to do, no reboot.
    set_cmdline(&fx, &EXPECTED.join(" "));
    let b = cmdline::bootloader(&fx.host(), layout(&p));
    assert!(!b.reboot_needed);
    assert!(!b.debian.write_needed);
    let mut text = Vec::new();
    cmdline::render(&b, &mut text).unwrap();
    let text = String::from_utf8(text).unwrap();
    assert!(
        text.ends_with(
            "\nThe running kernel has every argument: nothing to change, no reboot needed.\n"
        ),
        "{text}"
    );
    // The drop-in written, not yet booted: the boot loader is configured.
    set_cmdline(&fx, "");
    fx.write(DROP_IN, DROP_IN_CONTENT);
    let b = cmdline::bootloader(&fx.host(), layout(&p));
    assert_eq!(
        (
            b.reboot_needed,
            b.debian.write_needed,
            b.debian.drop_in_state.as_str()
        ),
        (true, false, "current")
    );
    let mut text = Vec::new();
    cmdline::render(&b, &mut text).unwrap();
    let text = String::from_utf8(text).unwrap();
    assert!(
        text.contains(
            "\n  /etc/default/grub.d/zz-node-agent-isolation.cfg is in place: the boot loader is \
             configured (if update-grub failed, run it).\n"
        ),
        "{text}"
    );
}

fn json_of(b: &cmdline::Bootloader) -> serde_json::Value {
    serde_json::to_value(b).unwrap()
}

struct Run {
    fx: FixtureHost,
    profile: Profile,
    host: HostRoot,
    state: StateDir,
    audit: Audit,
}

impl Run {
    fn new() -> Run {
        let fx = FixtureHost::tuned();
        debian(&fx);
        let profile = load(&fx, LAYOUT);
        let host = fx.host();
        let state = StateDir::new(fx.state_dir());
        let audit = Audit::new(Some(&fx.state_dir()));
        Run {
            fx,
            profile,
            host,
            state,
            audit,
        }
    }

    fn session<'a>(&'a self, system: &'a mut RecordingSystem) -> Session<'a> {
        Session {
            host: &self.host,
            state: &self.state,
            system,
            audit: &self.audit,
            caller: Caller::current(),
            units: None,
            systemd: None,
        }
    }
}

#[test]
fn bootloader_write_applies_the_drop_in_runs_update_grub_and_rollback_removes_it() {
    let r = Run::new();
    let mut system = RecordingSystem::default();
    let mut s = r.session(&mut system);
    let out = apply::apply(&mut s, &r.profile, Some(&[Class::Cmdline])).expect("apply");
    let keys: Vec<&str> = out.plan.changes.iter().map(|c| c.key.as_str()).collect();
    assert_eq!(keys, [DROP_IN]);
    assert!(
        out.follow_up_errors.is_empty(),
        "{:?}",
        out.follow_up_errors
    );
    assert_eq!(out.notes, ["recorded"]);
    assert_eq!(
        std::fs::read(r.fx.real(DROP_IN)).unwrap(),
        DROP_IN_CONTENT.as_bytes()
    );
    // After apply: still pending a reboot, now with nothing left to write.
    let isolcpus = out
        .after
        .items
        .iter()
        .find(|i| i.key == "cmdline.isolcpus")
        .unwrap();
    assert_eq!(isolcpus.status, Status::PendingReboot);
    assert!(isolcpus.fixes.is_empty());
    assert!(
        isolcpus
            .reason
            .as_deref()
            .unwrap()
            .ends_with("the boot loader is configured (/etc/default/grub.d/zz-node-agent-isolation.cfg); reboot to apply")
    );
    // Idempotent: a second --write has nothing to do and runs nothing.
    let again = apply::apply(&mut s, &r.profile, Some(&[Class::Cmdline])).expect("apply");
    assert!(again.plan.changes.is_empty(), "{:?}", again.plan.changes);

    let back = apply::rollback(&mut s, false).expect("rollback");
    assert!(back.is_complete());
    drop(s);
    assert!(!r.fx.real(DROP_IN).exists());
    assert_eq!(system.calls, ["update_bootloader", "update_bootloader"]);
    // The journal recorded it: apply audit lines name the drop-in.
    let audit = std::fs::read_to_string(r.fx.state_dir().join("audit.log")).unwrap();
    assert_eq!(
        audit.lines().filter(|l| l.contains(DROP_IN)).count(),
        2,
        "{audit}"
    );
}

#[test]
fn a_plain_apply_never_writes_the_drop_in() {
    let r = Run::new();
    let mut system = RecordingSystem::default();
    let mut s = r.session(&mut system);
    let out = apply::apply(&mut s, &r.profile, None).expect("apply");
    assert!(
        !out.plan.changes.iter().any(|c| c.key == DROP_IN),
        "{:?}",
        out.plan.changes
    );
    drop(s);
    assert!(!r.fx.real(DROP_IN).exists());
    assert!(!r.fx.real("/etc/default/grub.d").exists());
    assert!(
        !system.calls.iter().any(|c| c == "update_bootloader"),
        "{:?}",
        system.calls
    );
}

/// This VM boots without isolation arguments and with init arguments after `--`: with a layout
/// of housekeeping 0, isolated 1, isolcpus is pending a reboot, and nothing after `--` is read.
#[test]
fn real_cmdline_is_pending_reboot_and_stops_at_double_dash() {
    if !real::enabled("real_cmdline_is_pending_reboot_and_stops_at_double_dash") {
        return;
    }
    let raw = std::fs::read_to_string("/proc/cmdline").unwrap();
    let args = parse_cmdline(&raw);
    // An independent split: whitespace tokens up to the first bare `--` (this VM's command
    // line has no quotes).
    assert!(!raw.contains('"'), "{raw}");
    let tokens: Vec<&str> = raw.split_whitespace().collect();
    let before: Vec<&str> = tokens.iter().copied().take_while(|t| *t != "--").collect();
    let shown: Vec<String> = args.iter().map(ToString::to_string).collect();
    assert_eq!(shown, before, "{raw}");
    if tokens.contains(&"--") {
        assert!(before.len() < tokens.len());
        assert!(!args.iter().any(|a| a.name.starts_with("--")), "{args:?}");
    }
    assert!(
        !before.iter().any(|t| t.starts_with("isolcpus")),
        "this VM is expected to boot without isolcpus: {raw}"
    );

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vm.toml");
    std::fs::write(
        &path,
        "[isolation]\nhousekeeping_cpus = \"0\"\nisolated_cpus = \"1\"\n",
    )
    .unwrap();
    let p = profile::load(path.to_str().unwrap(), &SearchPath::new(Vec::new())).unwrap();
    let host = HostRoot::default();
    let mut items = Vec::new();
    cmdline::verify(&host, layout(&p), &mut items);
    let isolcpus = item(&items, "cmdline.isolcpus");
    assert_eq!(
        (
            isolcpus.status,
            isolcpus.expected.as_str(),
            isolcpus.actual.as_deref()
        ),
        (Status::PendingReboot, "isolcpus=managed_irq,domain,1", None)
    );
    assert!(
        isolcpus
            .reason
            .as_deref()
            .unwrap()
            .starts_with("add isolcpus=managed_irq,domain,1: "),
        "{isolcpus:?}"
    );
    let isolated = item(&items, "cmdline.effective.isolated");
    assert_eq!(
        (isolated.status, isolated.actual.as_deref()),
        (Status::PendingReboot, Some("none"))
    );
    let nohz = item(&items, "cmdline.effective.nohz_full");
    if std::path::Path::new("/sys/devices/system/cpu/nohz_full").exists() {
        assert_eq!(nohz.status, Status::PendingReboot, "{nohz:?}");
    } else {
        assert_eq!(nohz.status, Status::Unsupported, "{nohz:?}");
    }
    let b = cmdline::bootloader(&host, layout(&p));
    assert!(b.reboot_needed);
    assert_eq!(b.running.as_deref(), Some(before.join(" ").as_str()));
}
