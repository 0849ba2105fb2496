//! The packages `cargo xtask package` builds (README, "Packages"), for the package tests
//! (tests/tests/package_*.rs).
//!
//! # Opt-in
//!
//! The package tests run only with `NODE_AGENT_PACKAGE_TESTS=1`, as root, after
//! `cargo xtask package` has left the packages in `target/package/out/` (.ci/run does both);
//! otherwise each of them says on stderr that it was skipped and passes. Switched on, a missing
//! package or tool is a failure, not a skip.
//!
//! ```sh
//! cargo xtask package
//! NODE_AGENT_PACKAGE_TESTS=1 cargo test -p node-agent-e2e --test package_deb --test package_rpm
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;

/// The switch of the package tests.
pub const PACKAGE_TESTS_ENV: &str = "NODE_AGENT_PACKAGE_TESTS";

/// True when the package tests are switched on (`NODE_AGENT_PACKAGE_TESTS=1`); otherwise says
/// on stderr that `test` was skipped. Panics when switched on but not root.
pub fn package_tests_enabled(test: &str) -> bool {
    if std::env::var(PACKAGE_TESTS_ENV).as_deref() != Ok("1") {
        #[allow(clippy::print_stderr)]
        {
            eprintln!(
                "{test}: skipped (run `cargo xtask package`, then set {PACKAGE_TESTS_ENV}=1, as root)"
            );
        }
        return false;
    }
    assert!(
        nix::unistd::geteuid().is_root(),
        "{PACKAGE_TESTS_ENV}=1 needs root (dpkg in containers, rpm --root)"
    );
    true
}

/// `target/package/out` of this workspace, where `cargo xtask package` leaves the packages.
pub fn out_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/package/out")
        .canonicalize()
        .unwrap_or_else(|e| {
            panic!("target/package/out: {e}: build the packages first with `cargo xtask package`")
        })
}

/// The kinds of package built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Deb,
    Rpm,
}

/// The one built package `name` of `kind` in [`out_dir`] (`NAME_VERSION_ARCH.deb`,
/// `NAME-VERSION-RELEASE.ARCH.rpm`). Panics saying how to build it when there is none, or when
/// there are several.
pub fn built(name: &str, kind: Kind) -> PathBuf {
    let dir = out_dir();
    let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let file = p.file_name().unwrap_or_default().to_string_lossy();
            match kind {
                Kind::Deb => file.starts_with(&format!("{name}_")) && file.ends_with(".deb"),
                Kind::Rpm => {
                    file.strip_prefix(&format!("{name}-"))
                        .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
                        && file.ends_with(".rpm")
                }
            }
        })
        .collect();
    found.sort();
    match found.as_slice() {
        [one] => one.clone(),
        [] => panic!(
            "no {kind:?} package {name} in {}: build it with `cargo xtask package`",
            dir.display()
        ),
        many => panic!("several {kind:?} packages {name}: {many:?}"),
    }
}

/// Runs `program args` on the host; panics with its output when it cannot start or fails.
/// Returns stdout.
pub fn host_ok(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e} (is it installed? .ci/run installs it)"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The highest `GLIBC_X.Y[.Z]` symbol version in `objdump -T` output, as (X, Y, Z).
pub fn max_glibc(objdump: &str) -> Option<(u32, u32, u32)> {
    objdump
        .split(|c: char| c.is_whitespace() || c == '(' || c == ')')
        .filter_map(|word| word.strip_prefix("GLIBC_"))
        .filter_map(|v| {
            let mut parts = v.split('.').map(str::parse::<u32>);
            let major = parts.next()?.ok()?;
            let minor = parts.next().unwrap_or(Ok(0)).ok()?;
            let patch = parts.next().unwrap_or(Ok(0)).ok()?;
            Some((major, minor, patch))
        })
        .max()
}

/// Copies the .deb at `deb` to `out` with its version raised to `VERSION+SUFFIX` (the control
/// file rewritten, the payload unchanged): the "rebuilt package with a higher version" of an
/// upgrade; `work` is an empty scratch directory. Returns the new version.
pub fn repack_deb_with_version_suffix(deb: &Path, suffix: &str, work: &Path, out: &Path) -> String {
    let tree = work.join("tree");
    std::fs::create_dir_all(work).unwrap_or_else(|e| panic!("{}: {e}", work.display()));
    host_ok(
        "dpkg-deb",
        &[
            "--raw-extract",
            deb.to_str().unwrap(),
            tree.to_str().unwrap(),
        ],
    );
    let control_path = tree.join("DEBIAN/control");
    let control = std::fs::read_to_string(&control_path).unwrap();
    let version = control
        .lines()
        .find_map(|l| l.strip_prefix("Version: "))
        .unwrap_or_else(|| panic!("no Version in {control}"))
        .to_owned();
    let new_version = format!("{version}+{suffix}");
    std::fs::write(
        &control_path,
        control.replace(
            &format!("Version: {version}\n"),
            &format!("Version: {new_version}\n"),
        ),
    )
    .unwrap();
    host_ok(
        "dpkg-deb",
        &[
            "--root-owner-group",
            "--build",
            tree.to_str().unwrap(),
            out.to_str().unwrap(),
        ],
    );
    host_ok(
        "dpkg",
        &["--compare-versions", &new_version, "gt", &version],
    );
    new_version
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glibc_versions_compare_numerically() {
        let objdump = "0000 DF *UND* 0000 (GLIBC_2.3.4) __fprintf_chk\n\
                       0000 DF *UND* 0000 (GLIBC_2.28) statx\n\
                       0000 DF *UND* 0000  GLIBC_2.9   pipe2\n\
                       0000 DF *UND* 0000 (GLIBC_PRIVATE) x\n";
        assert_eq!(max_glibc(objdump), Some((2, 28, 0)));
        assert_eq!(
            max_glibc("(GLIBC_2.34) x\n(GLIBC_2.28) y"),
            Some((2, 34, 0))
        );
        assert_eq!(max_glibc("nothing versioned"), None);
    }
}
