//! Build tasks of the node-agent workspace, run as `cargo xtask …` (alias in .cargo/config.toml).
//!
//! `cargo xtask package` builds the `node-agent` and `node-collector` .deb and .rpm from a
//! clean checkout:
//!
//! 1. installs what is missing: cargo-deb, cargo-generate-rpm, cargo-zigbuild (`cargo install
//!    --locked`, pinned versions) and zig (the `ziglang` wheel from PyPI, into
//!    `target/package/tools/`, unless a `zig` or a `python3` with `ziglang` is already there);
//! 2. generates man pages (clap_mangen) and bash/zsh/fish completions (clap_complete) from the
//!    clap definitions into `target/package/gen/`;
//! 3. builds the release binaries once with `cargo zigbuild --target
//!    x86_64-unknown-linux-gnu.2.28` and a GNU build-id, so both packages run on glibc 2.28 and
//!    newer (RHEL 8/9, Debian 11/12), into `target/package/` (its own target directory: the
//!    debug build of the workspace is left alone);
//! 4. packs them with `cargo deb --no-build` and `cargo generate-rpm`, metadata from
//!    `[package.metadata.deb]` / `[package.metadata.generate-rpm]` in agent/Cargo.toml and
//!    collector/Cargo.toml, scripts from packaging/{deb,rpm}/NAME;
//! 5. checks the binaries need no GLIBC symbol newer than 2.28 and carry a build-id, and leaves
//!    the packages in `target/package/out/`.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail, ensure};
use clap::{CommandFactory, Parser, Subcommand};
use clap_complete::Shell;

/// The Rust target the packages' binaries are built for; `.2.28` is the glibc version
/// cargo-zigbuild links against (RHEL 8's).
const ZIG_TARGET: &str = "x86_64-unknown-linux-gnu.2.28";
/// The target directory name cargo uses for it (cargo-zigbuild strips the glibc suffix).
const TARGET: &str = "x86_64-unknown-linux-gnu";
/// The newest GLIBC symbol version the packaged binaries may need.
const MAX_GLIBC: (u32, u32) = (2, 28);
/// Cargo subcommands installed when missing: (subcommand, crate, version).
const CARGO_TOOLS: &[(&str, &str, &str)] = &[
    ("deb", "cargo-deb", "3.8.0"),
    ("generate-rpm", "cargo-generate-rpm", "0.21.0"),
    ("zigbuild", "cargo-zigbuild", "0.24.1"),
];
/// The PyPI wheel that carries zig.
const ZIGLANG: &str = "ziglang==0.17.1";

/// A package this task builds: its cargo package and crate directory, its binaries, and the
/// workspace files it ships that its crate's own work supplies.
struct Package {
    name: &'static str,
    crate_dir: &'static str,
    binaries: &'static [&'static str],
    inputs: &'static [&'static str],
}

const PACKAGES: &[Package] = &[
    Package {
        name: "node-agent",
        crate_dir: "agent",
        binaries: &["node-agentd", "agentctl"],
        inputs: &[
            "systemd/node-agentd.service",
            "packaging/agent.toml",
            "tuning-profiles/trading-latency.toml",
        ],
    },
    Package {
        name: "node-collector",
        crate_dir: "collector",
        binaries: &["node-collector"],
        inputs: &[
            "systemd/node-collector.service",
            "packaging/collector/collector.toml",
            "packaging/collector/inventory.toml",
            "packaging/collector/inventory.example.toml",
            "packaging/collector/sysusers.conf",
        ],
    },
];

/// The inputs of `package` that are missing from the workspace at `root`.
fn missing_inputs(root: &Path, package: &Package) -> Vec<&'static str> {
    package
        .inputs
        .iter()
        .copied()
        .filter(|input| !root.join(input).is_file())
        .collect()
}

#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask",
    about = "Build tasks of the node-agent workspace"
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Build the .deb and .rpm packages into target/package/out/ (installs the packaging
    /// tools first when they are missing).
    Package {
        /// Fail instead of installing a missing tool.
        #[arg(long)]
        no_install: bool,
    },
    /// Write the man pages and shell completions (as packaged) into DIR.
    Docs {
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Package { no_install } => package(no_install),
        Task::Docs { dir } => generate_docs(&dir).map(|_| ()),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            #[allow(clippy::print_stderr)]
            {
                eprintln!("xtask: error: {e:#}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}

#[allow(clippy::print_stderr)]
fn say(message: &str) {
    eprintln!("xtask: {message}");
}

/// The workspace root (the parent of xtask/).
fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask/ has a parent")
        .to_path_buf()
}

/// `target/package` of the workspace: the packages' own target directory, generated files,
/// tools and the output. Fixed (not CARGO_TARGET_DIR) because the asset paths in the crates'
/// packaging metadata name it.
fn package_dir() -> PathBuf {
    workspace().join("target/package")
}

fn package(no_install: bool) -> Result<()> {
    ensure!(
        std::env::consts::ARCH == "x86_64" && std::env::consts::OS == "linux",
        "packages are built for x86_64 Linux only (this is {} {})",
        std::env::consts::ARCH,
        std::env::consts::OS
    );
    let root = workspace();
    let dir = package_dir();
    let out = dir.join("out");
    fs::create_dir_all(&out).with_context(|| format!("failed to create {}", out.display()))?;

    let tools = Tools::ensure(&dir, no_install)?;
    let generated = generate_docs(&dir.join("gen"))?;
    say(&format!(
        "generated {} man pages and completions",
        generated.len()
    ));
    stage(&root, &dir.join("gen"))?;

    let mut packages = Vec::new();
    for package in PACKAGES {
        let missing = missing_inputs(&root, package);
        if missing.is_empty() {
            packages.push(package);
            continue;
        }
        // The collector's unit and example files come with the collector issue; until then its
        // package is not built (and its tests say so).
        ensure!(
            package.name != "node-agent",
            "node-agent cannot be packaged: missing {missing:?}"
        );
        say(&format!(
            "skipped {}: missing {} (its crate's issue supplies them)",
            package.name,
            missing.join(", ")
        ));
        remove_old_packages(&out, package.name)?;
    }
    // One build for every package: shared dependencies are compiled once, with one set of
    // features.
    build(&root, &dir, &tools, &packages)?;
    for package in packages {
        for binary in package.binaries {
            let path = dir.join(TARGET).join("release").join(binary);
            check_binary(&path)?;
        }
        remove_old_packages(&out, package.name)?;
        let mut deb = tools.cargo();
        deb.current_dir(&root)
            .args(["deb", "--no-build", "--locked", "--package", package.name])
            .args(["--target", TARGET, "--output"])
            .arg(&out)
            .env("CARGO_TARGET_DIR", &dir);
        run(&mut deb)?;
        let mut rpm = tools.cargo();
        rpm.current_dir(&root)
            .args(["generate-rpm", "--package", package.crate_dir])
            .args(["--target", TARGET, "--target-dir"])
            .arg(&dir)
            .arg("--output")
            .arg(&out);
        run(&mut rpm)?;
    }
    let mut built: Vec<_> = fs::read_dir(&out)
        .with_context(|| format!("failed to list {}", out.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "deb" || e == "rpm"))
        .collect();
    built.sort();
    for path in &built {
        say(&format!("built {}", path.display()));
    }
    Ok(())
}

/// Files packed under another name than their source's, copied into `gen`: cargo-deb names
/// the `systemd-sysusers` call of its postinst after the source file, so the sysusers.d file
/// must be called `PACKAGE.conf` already.
const STAGED: &[(&str, &str)] = &[(
    "packaging/collector/sysusers.conf",
    "sysusers/node-collector.conf",
)];

fn stage(root: &Path, gen_dir: &Path) -> Result<()> {
    for (source, staged) in STAGED {
        let (source, staged) = (root.join(source), gen_dir.join(staged));
        if !source.is_file() {
            continue; // its package is skipped (missing_inputs)
        }
        if let Some(parent) = staged.parent() {
            fs::create_dir_all(parent)
                .with_context(|| format!("failed to create {}", parent.display()))?;
        }
        fs::copy(&source, &staged).with_context(|| {
            format!(
                "failed to copy {} to {}",
                source.display(),
                staged.display()
            )
        })?;
    }
    Ok(())
}

/// The release binaries of `packages`, for glibc 2.28, with a build-id.
fn build(root: &Path, dir: &Path, tools: &Tools, packages: &[&Package]) -> Result<()> {
    let mut rustflags = std::env::var_os("RUSTFLAGS").unwrap_or_default();
    if !rustflags.is_empty() {
        rustflags.push(" ");
    }
    // Zig's linker writes no build-id by default; RHEL's tooling (debuginfo, rpmbuild policy)
    // expects one.
    rustflags.push("-C link-arg=-Wl,--build-id=sha1");
    let mut cmd = tools.cargo();
    cmd.current_dir(root)
        .args(["zigbuild", "--release", "--locked", "--target", ZIG_TARGET])
        .env("CARGO_TARGET_DIR", dir)
        .env("RUSTFLAGS", rustflags);
    for package in packages {
        cmd.args(["--package", package.name]);
        for binary in package.binaries {
            cmd.args(["--bin", binary]);
        }
    }
    run(&mut cmd)
}

/// Removes earlier builds of `name` from the output directory, so it holds one of each.
fn remove_old_packages(out: &Path, name: &str) -> Result<()> {
    for entry in fs::read_dir(out).with_context(|| format!("failed to list {}", out.display()))? {
        let path = entry?.path();
        let file = path.file_name().unwrap_or_default().to_string_lossy();
        let deb = file.starts_with(&format!("{name}_")) && file.ends_with(".deb");
        let rpm = file
            .strip_prefix(&format!("{name}-"))
            .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
            && file.ends_with(".rpm");
        if deb || rpm {
            fs::remove_file(&path)
                .with_context(|| format!("failed to remove {}", path.display()))?;
        }
    }
    Ok(())
}

/// Fails unless `binary` needs no GLIBC symbol version above [`MAX_GLIBC`] and has a GNU
/// build-id note.
fn check_binary(binary: &Path) -> Result<()> {
    let symbols = output(Command::new("objdump").arg("-T").arg(binary))?;
    let newest = max_glibc(&symbols)
        .with_context(|| format!("{}: no GLIBC symbol versions", binary.display()))?;
    ensure!(
        newest <= MAX_GLIBC,
        "{} needs GLIBC_{}.{}, newer than {}.{} (RHEL 8)",
        binary.display(),
        newest.0,
        newest.1,
        MAX_GLIBC.0,
        MAX_GLIBC.1
    );
    let notes = output(Command::new("readelf").arg("--notes").arg(binary))?;
    ensure!(
        notes.contains("NT_GNU_BUILD_ID"),
        "{} has no GNU build-id note",
        binary.display()
    );
    Ok(())
}

/// The highest `GLIBC_X.Y` version in `objdump -T` output.
fn max_glibc(objdump: &str) -> Option<(u32, u32)> {
    objdump
        .split(|c: char| c.is_whitespace() || c == '(' || c == ')')
        .filter_map(|word| word.strip_prefix("GLIBC_"))
        .filter_map(|v| {
            let mut parts = v.split('.');
            let major = parts.next()?.parse().ok()?;
            let minor = parts.next().unwrap_or("0").parse().ok()?;
            Some((major, minor))
        })
        .max()
}

// ---------------------------------------------------------------------------------------------
// Man pages and completions

/// A command line the packages document: its clap definition, man section, and whether it
/// gets shell completions (the daemon, started by systemd, does not).
struct Documented {
    command: clap::Command,
    section: &'static str,
    completions: bool,
}

fn documented() -> Vec<Documented> {
    vec![
        Documented {
            command: node_agent::cli::Cli::command(),
            section: "1",
            completions: true,
        },
        Documented {
            command: node_agent::daemon::run::Args::command(),
            section: "8",
            completions: false,
        },
        Documented {
            command: node_collector::cli::Cli::command(),
            section: "1",
            completions: true,
        },
    ]
}

/// Writes `DIR/man/*.N.gz` (one page per command and subcommand, as `git` does:
/// `agentctl-tune-verify.1`) and `DIR/completions/{bash,zsh,fish}/…`; returns the files written.
fn generate_docs(dir: &Path) -> Result<Vec<PathBuf>> {
    let man_dir = dir.join("man");
    let completions_dir = dir.join("completions");
    for d in [&man_dir, &completions_dir] {
        if d.exists() {
            fs::remove_dir_all(d).with_context(|| format!("failed to remove {}", d.display()))?;
        }
        fs::create_dir_all(d).with_context(|| format!("failed to create {}", d.display()))?;
    }
    let mut written = Vec::new();
    for doc in documented() {
        let mut command = doc.command;
        command.build();
        man_pages(&command, doc.section, &man_dir, &mut written)?;
        if doc.completions {
            let name = command.get_name().to_owned();
            for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
                let shell_dir = completions_dir.join(shell.to_string());
                fs::create_dir_all(&shell_dir)
                    .with_context(|| format!("failed to create {}", shell_dir.display()))?;
                let path = clap_complete::generate_to(shell, &mut command, &name, &shell_dir)
                    .with_context(|| format!("failed to write {shell} completions of {name}"))?;
                written.push(path);
            }
        }
    }
    Ok(written)
}

/// The man page of `command` and, recursively, of its subcommands (`help` excluded), gzipped.
fn man_pages(
    command: &clap::Command,
    section: &'static str,
    dir: &Path,
    written: &mut Vec<PathBuf>,
) -> Result<()> {
    let name = command
        .get_display_name()
        .unwrap_or_else(|| command.get_name())
        .replace(' ', "-");
    let mut page = Vec::new();
    clap_mangen::Man::new(command.clone())
        .title(name.to_uppercase())
        .section(section)
        .source(format!("node-agent {}", env!("CARGO_PKG_VERSION")))
        .manual("node-agent")
        .render(&mut page)
        .with_context(|| format!("failed to render the man page of {name}"))?;
    let path = dir.join(format!("{name}.{section}"));
    fs::write(&path, &page).with_context(|| format!("failed to write {}", path.display()))?;
    // -n: no name or time stamp in the header, so the package is reproducible.
    run(Command::new("gzip").args(["-9", "-n", "-f"]).arg(&path))?;
    written.push(path.with_extension(format!("{section}.gz")));
    for sub in command.get_subcommands().filter(|s| s.get_name() != "help") {
        let sub_name = format!("{name}-{}", sub.get_name());
        let sub = sub.clone().display_name(sub_name);
        man_pages(&sub, section, dir, written)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Tools

/// How to run cargo (with the subcommands installed) and zig.
struct Tools {
    cargo: OsString,
    /// CARGO_ZIGBUILD_ZIG_PATH when zig came from the private wheel.
    zig: Option<PathBuf>,
}

impl Tools {
    fn ensure(dir: &Path, no_install: bool) -> Result<Tools> {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        // The subcommands cargo finds (PATH and $CARGO_HOME/bin), one per line, indented.
        let list = output(Command::new(&cargo).arg("--list"))?;
        for (subcommand, krate, version) in CARGO_TOOLS {
            let present = list
                .lines()
                .any(|l| l.split_whitespace().next() == Some(subcommand));
            if present {
                continue;
            }
            if no_install {
                bail!("`cargo {subcommand}` is missing: cargo install --locked {krate}@{version}");
            }
            say(&format!("installing {krate} {version}"));
            run(Command::new(&cargo).args(["install", "--locked", &format!("{krate}@{version}")]))?;
        }
        let zig = Self::zig(dir, no_install)?;
        Ok(Tools { cargo, zig })
    }

    /// Finds zig as cargo-zigbuild does (CARGO_ZIGBUILD_ZIG_PATH, `zig` in PATH, `python3 -m
    /// ziglang`); else installs the ziglang wheel into `DIR/tools/python` and names its zig.
    fn zig(dir: &Path, no_install: bool) -> Result<Option<PathBuf>> {
        let works = |cmd: &mut Command| {
            cmd.stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        if std::env::var_os("CARGO_ZIGBUILD_ZIG_PATH").is_some()
            || works(Command::new("zig").arg("version"))
            || works(Command::new("python3").args(["-m", "ziglang", "version"]))
        {
            return Ok(None);
        }
        let site = dir.join("tools/python");
        let zig = site.join("ziglang/zig");
        if !works(Command::new(&zig).arg("version")) {
            if no_install {
                bail!("zig is missing: python3 -m pip install {ZIGLANG}");
            }
            say(&format!("installing {ZIGLANG} into {}", site.display()));
            run(Command::new("python3")
                .args(["-m", "pip", "install", "--quiet", "--upgrade", "--target"])
                .arg(&site)
                .arg(ZIGLANG))?;
            ensure!(
                works(Command::new(&zig).arg("version")),
                "{} does not run after installing {ZIGLANG}",
                zig.display()
            );
        }
        Ok(Some(zig))
    }

    fn cargo(&self) -> Command {
        let mut cmd = Command::new(&self.cargo);
        if let Some(zig) = &self.zig {
            cmd.env("CARGO_ZIGBUILD_ZIG_PATH", zig);
        }
        cmd
    }
}

// ---------------------------------------------------------------------------------------------
// Processes

fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `cmd` with inherited output; a non-zero exit is an error naming it.
fn run(cmd: &mut Command) -> Result<()> {
    let what = describe(cmd);
    let status = cmd
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("failed to run {what}"))?;
    ensure!(status.success(), "{what} failed ({status})");
    Ok(())
}

/// Runs `cmd` and returns its stdout; a non-zero exit is an error with its stderr.
fn output(cmd: &mut Command) -> Result<String> {
    let what = describe(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("failed to run {what}"))?;
    ensure!(
        out.status.success(),
        "{what} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glibc_versions_are_compared_numerically() {
        let objdump = "0000 DF *UND* 0000 (GLIBC_2.3.4) __fprintf_chk\n\
                       0000 DF *UND* 0000 (GLIBC_2.28) statx\n\
                       0000 DF *UND* 0000  GLIBC_2.9   pipe2\n\
                       0000 DF *UND* 0000 (GLIBC_PRIVATE) x\n";
        assert_eq!(max_glibc(objdump), Some((2, 28)));
        assert_eq!(max_glibc("(GLIBC_2.34) x\n(GLIBC_2.28) y"), Some((2, 34)));
        assert_eq!(max_glibc("no versions"), None);
    }

    #[test]
    fn docs_cover_every_subcommand_and_shell() {
        let dir = tempfile::tempdir().unwrap();
        let written = generate_docs(dir.path()).unwrap();
        let names: Vec<String> = written
            .iter()
            .map(|p| p.strip_prefix(dir.path()).unwrap().display().to_string())
            .collect();
        for expected in [
            "man/agentctl.1.gz",
            "man/agentctl-tune.1.gz",
            "man/agentctl-tune-verify.1.gz",
            "man/agentctl-tune-rollback.1.gz",
            "man/agentctl-units-status.1.gz",
            "man/node-agentd.8.gz",
            "completions/bash/agentctl.bash",
            "completions/zsh/_agentctl",
            "completions/fish/agentctl.fish",
            "man/node-collector.1.gz",
            "completions/bash/node-collector.bash",
            "completions/zsh/_node-collector",
            "completions/fish/node-collector.fish",
        ] {
            assert!(
                names.iter().any(|n| n == expected),
                "{expected} in {names:?}"
            );
        }
        assert!(!names.iter().any(|n| n.contains("help")), "{names:?}");
        assert!(!names.iter().any(|n| n.contains("node-agentd.bash")));
        // Every subcommand of agentctl has its page.
        let cli = node_agent::cli::Cli::command();
        for sub in cli.get_subcommands() {
            let page = format!("man/agentctl-{}.1.gz", sub.get_name());
            assert!(names.contains(&page), "{page} in {names:?}");
        }
        // The pages are roff, gzipped, and say what the clap definition says.
        let page = output(
            Command::new("gzip")
                .args(["-dc"])
                .arg(dir.path().join("man/agentctl-tune-verify.1.gz")),
        )
        .unwrap();
        assert!(page.starts_with(".ie \\n(.g .ds Aq"), "{page}");
        assert!(page.contains(".TH AGENTCTL-TUNE-VERIFY 1"), "{page}");
        assert!(page.contains("\\-\\-strict"), "{page}");
        let bash = fs::read_to_string(dir.path().join("completions/bash/agentctl.bash")).unwrap();
        assert!(bash.contains("complete -F _agentctl"), "{bash}");
        assert!(bash.contains("rollback"), "{bash}");
    }

    #[test]
    fn old_packages_are_removed_by_name() {
        let dir = tempfile::tempdir().unwrap();
        for f in [
            "node-agent_0.1.0-1_amd64.deb",
            "node-agent-0.1.0-1.x86_64.rpm",
            "node-agent-tools_0.1.0-1_amd64.deb",
            "node-agent-tools-0.1.0-1.x86_64.rpm",
            "notes.txt",
        ] {
            fs::write(dir.path().join(f), "").unwrap();
        }
        remove_old_packages(dir.path(), "node-agent").unwrap();
        let mut left: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                "node-agent-tools-0.1.0-1.x86_64.rpm",
                "node-agent-tools_0.1.0-1_amd64.deb",
                "notes.txt"
            ]
        );
    }
}
