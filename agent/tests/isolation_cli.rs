//! `agentctl isolation bootloader [--write]` and `agentctl isolation audit` through the binary,
//! on fixture trees: exit codes, output, and what --write leaves for `tune rollback`.

mod support;

use serde_json::Value as Json;
use support::{FixtureHost, proc_status};

const LAYOUT: &str = "[isolation]\nhousekeeping_cpus = \"0-1\"\nisolated_cpus = \"2-15\"\n\
                      kernel_args = [\"skew_tick=1\"]\n";

const DROP_IN: &str = "/etc/default/grub.d/zz-node-agent-isolation.cfg";
const GRUB_LINE: &str = "GRUB_CMDLINE_LINUX=\"$GRUB_CMDLINE_LINUX isolcpus=managed_irq,domain,2-15 \
                         nohz_full=2-15 rcu_nocbs=2-15 irqaffinity=0-1 skew_tick=1\"\n";

fn text(b: &[u8]) -> String {
    String::from_utf8(b.to_vec()).unwrap()
}

/// A Debian-style host: GRUB reads /etc/default/grub.d.
fn debian() -> FixtureHost {
    let fx = FixtureHost::tuned();
    fx.write(
        "/etc/default/grub.d/init-select.cfg",
        "# from grub-common\n",
    );
    fx
}

#[test]
fn bootloader_prints_the_change_and_exits_1_until_the_host_boots_with_it() {
    let fx = debian();
    let path = fx.profile("layout", LAYOUT);
    let p = path.to_str().unwrap();
    let before = fx.snapshot();

    let out = fx.agentctl(&["isolation", "bootloader", "-p", p]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains(&format!("    {GRUB_LINE}")), "{stdout}");
    assert!(
        stdout.contains(
            "grubby --update-kernel=ALL --args=\"isolcpus=managed_irq,domain,2-15 nohz_full=2-15 \
             rcu_nocbs=2-15 irqaffinity=0-1 skew_tick=1\""
        ),
        "{stdout}"
    );
    assert!(stdout.contains("node-agent never reboots"), "{stdout}");

    let out = fx.agentctl(&["isolation", "bootloader", "-p", p, "--output", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let json: Json = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["reboot_needed"], Json::Bool(true));
    assert_eq!(json["isolated_cpus"], "2-15");
    assert!(before == fx.snapshot(), "printing changed nothing");
}

#[test]
fn bootloader_write_journals_the_drop_in_and_rollback_removes_it() {
    let fx = debian();
    let path = fx.profile("layout", LAYOUT);
    let p = path.to_str().unwrap();

    let out = fx.agentctl(&["isolation", "bootloader", "-p", p, "--write"]);
    let stdout = text(&out.stdout);
    // Under a fixture root no program runs: update-grub is refused, and that is a failure the
    // operator must see (the boot loader was not regenerated).
    assert_eq!(out.status.code(), Some(4), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains("applied 1 change(s):")
            && stdout.contains(&format!("cmdline {DROP_IN}: absent → 5 lines")),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "WARNING: failed to run update-grub: system calls act on the running machine"
        ),
        "{stdout}"
    );
    let written = std::fs::read_to_string(fx.real(DROP_IN)).unwrap();
    assert!(written.ends_with(GRUB_LINE), "{written}");

    // A plain apply leaves the boot loader alone, and a second --write has nothing to do.
    let out = fx.agentctl(&["tune", "apply", "-p", p, "--dry-run", "--output", "json"]);
    let plan: Json = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        !plan["changes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["key"].as_str().unwrap().contains("grub")),
        "{plan}"
    );

    let out = fx.agentctl(&["tune", "rollback"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(4), "{stdout}");
    assert!(
        stdout.contains(&format!("cmdline {DROP_IN}: 5 lines → absent")),
        "{stdout}"
    );
    assert!(!fx.real(DROP_IN).exists());
}

#[test]
fn isolation_commands_need_an_isolation_section() {
    let fx = debian();
    let path = fx.profile("plain", "[sysctl]\n\"vm.swappiness\" = 10\n");
    for cmd in ["bootloader", "audit"] {
        let out = fx.agentctl(&["isolation", cmd, "-p", path.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2), "{cmd}");
        assert_eq!(
            text(&out.stderr).trim_end(),
            format!(
                "agentctl: error: {}: the profile has no [isolation] section",
                path.display()
            )
        );
    }
}

/// A process as the kernel shows it, pinned to `cpus`, last run on `last`.
fn user_process(fx: &FixtureHost, pid: u32, comm: &str, cpus: &str, last: u32) {
    let stat = format!(
        "{pid} ({comm}) S 1 {pid} {pid} 0 -1 4194560 102 0 0 0 3 5 0 0 20 0 1 0 721388 3133440 \
         411 18446744073709551615 93952397754368 93952397774249 140730415145664 0 0 0 0 0 0 0 0 \
         0 17 {last} 0 0 0 0 0 93952397790256 93952397791872 93953039060992 140730415151831 \
         140730415151851 140730415151851 140730415153131 0\n"
    );
    let status = proc_status(comm, pid, pid, cpus, fx.spec().possible);
    for dir in [format!("/proc/{pid}"), format!("/proc/{pid}/task/{pid}")] {
        fx.write(&format!("{dir}/stat"), &stat);
        fx.write(&format!("{dir}/status"), &status);
    }
    fx.write(
        &format!("/proc/{pid}/cgroup"),
        "0::/system.slice/chronyd.service\n",
    );
}

#[test]
fn audit_lists_a_task_pinned_to_an_isolated_cpu_and_exits_1() {
    let fx = debian();
    user_process(&fx, 812, "chronyd", "0-1", 0);
    let path = fx.profile("layout", LAYOUT);
    let p = path.to_str().unwrap();

    let out = fx.agentctl(&["isolation", "audit", "-p", p, "--output", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let json: Json = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["stray"], Json::Array(Vec::new()), "{json}");

    user_process(&fx, 955, "taskset-sleep", "5", 5);
    let out = fx.agentctl(&["isolation", "audit", "-p", p, "--output", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let json: Json = serde_json::from_slice(&out.stdout).unwrap();
    let stray = json["stray"].as_array().unwrap();
    assert_eq!(stray.len(), 1, "{json}");
    assert_eq!(
        (&stray[0]["pid"], &stray[0]["comm"], &stray[0]["affinity"]),
        (
            &Json::from(955),
            &Json::from("taskset-sleep"),
            &Json::from("5")
        )
    );
    assert_eq!(stray[0]["unit"], "chronyd.service");

    let out = fx.agentctl(&["isolation", "audit", "-p", p]);
    assert_eq!(out.status.code(), Some(1));
    let table = text(&out.stdout);
    assert!(
        table.lines().any(|l| l.contains("955")
            && l.contains("taskset-sleep")
            && l.contains("chronyd.service")),
        "{table}"
    );
}
