//! The only door to host state: /proc, /sys, /dev and the system configuration under /etc,
//! /run and /usr/lib. Every read goes through a [`HostRoot`], which prefixes a root directory:
//! `/` in production, a fixture tree in tests (`NODE_AGENT_HOST_ROOT`).

use std::io;
use std::path::{Component, Path, PathBuf};

/// Environment variable that relocates every host-state access under another directory.
pub const HOST_ROOT_ENV: &str = "NODE_AGENT_HOST_ROOT";

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// A host path that is not absolute or climbs with `..`: a bug or hostile input, never
    /// something to resolve.
    #[error("refusing host path {path:?}: it must be absolute and must not contain `..`")]
    BadPath { path: String },
    #[error("failed to read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("failed to write {value:?} to {path}: {source}")]
    Write {
        path: PathBuf,
        value: String,
        #[source]
        source: io::Error,
    },
    #[error("failed to list {path}: {source}")]
    List {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl HostError {
    /// True when the file or directory does not exist (or a parent is not a directory): on a
    /// kernel file this means the knob is absent on this kernel or machine (`unsupported`), not
    /// that reading failed (`error`).
    pub fn is_not_found(&self) -> bool {
        match self {
            HostError::Read { source, .. }
            | HostError::List { source, .. }
            | HostError::Write { source, .. } => {
                matches!(
                    source.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                )
            }
            HostError::BadPath { .. } => false,
        }
    }
}

/// The root under which host state is read. Cheap to clone; passed explicitly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRoot {
    root: PathBuf,
}

impl Default for HostRoot {
    fn default() -> Self {
        HostRoot {
            root: PathBuf::from("/"),
        }
    }
}

impl HostRoot {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        HostRoot { root: root.into() }
    }

    /// `/`, or the directory named by `NODE_AGENT_HOST_ROOT` when it is set and non-empty.
    pub fn from_env() -> Self {
        match std::env::var_os(HOST_ROOT_ENV) {
            Some(dir) if !dir.is_empty() => HostRoot::new(dir),
            _ => HostRoot::default(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Maps an absolute host path to the real path under this root. This is the second
    /// traversal guard (the first is the validated types): it refuses relative paths and `..`.
    pub fn path(&self, host_path: impl AsRef<Path>) -> Result<PathBuf, HostError> {
        let host_path = host_path.as_ref();
        let bad = || HostError::BadPath {
            path: host_path.display().to_string(),
        };
        let mut out = self.root.clone();
        let mut components = host_path.components();
        if components.next() != Some(Component::RootDir) {
            return Err(bad());
        }
        for c in components {
            match c {
                Component::Normal(part) => out.push(part),
                Component::CurDir => {}
                Component::RootDir | Component::ParentDir | Component::Prefix(_) => {
                    return Err(bad());
                }
            }
        }
        Ok(out)
    }

    /// Reads a whole host file as text. Errors carry the real path read.
    pub fn read(&self, host_path: impl AsRef<Path>) -> Result<String, HostError> {
        let path = self.path(host_path)?;
        read_small(&path)
            .and_then(|bytes| {
                String::from_utf8(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
            })
            .map_err(|source| HostError::Read { path, source })
    }

    /// Reads a whole host file as bytes (for binary files such as /dev/cpu_dma_latency).
    pub fn read_bytes(&self, host_path: impl AsRef<Path>) -> Result<Vec<u8>, HostError> {
        let path = self.path(host_path)?;
        read_small(&path).map_err(|source| HostError::Read { path, source })
    }

    /// Reads a one-value kernel file and trims the trailing newline.
    pub fn read_value(&self, host_path: impl AsRef<Path>) -> Result<String, HostError> {
        self.read(host_path).map(|s| s.trim().to_owned())
    }

    pub fn exists(&self, host_path: impl AsRef<Path>) -> bool {
        self.path(host_path).map(|p| p.exists()).unwrap_or(false)
    }

    /// Names of the entries of a host directory, sorted byte-wise.
    pub fn list(&self, host_path: impl AsRef<Path>) -> Result<Vec<String>, HostError> {
        let path = self.path(host_path)?;
        let entries = std::fs::read_dir(&path).map_err(|source| HostError::List {
            path: path.clone(),
            source,
        })?;
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| HostError::List {
                path: path.clone(),
                source,
            })?;
            if let Some(name) = entry.file_name().to_str() {
                names.push(name.to_owned());
            }
        }
        names.sort();
        Ok(names)
    }

    /// True for the real machine; false for a fixture tree or a mounted image.
    pub fn is_live(&self) -> bool {
        self.root == Path::new("/")
    }

    /// Writes one value to an existing kernel file in a single write(2); never creates it.
    /// Under a root other than `/` the files are plain files, and the write reproduces what the
    /// kernel would show afterwards: a choice file (`always [madvise] never`) moves its
    /// brackets, or refuses a word it does not offer with EINVAL; a managed IRQ's affinity
    /// file (read-only, as the kernel makes it) refuses with EPERM; any other file holds the
    /// value and a newline.
    pub fn write_kernel_file(&self, host_path: &str, value: &str) -> Result<(), HostError> {
        use std::io::Write;
        let path = self.path(host_path)?;
        let err = |source| HostError::Write {
            path: path.clone(),
            value: value.to_owned(),
            source,
        };
        if !self.is_live() && managed_irq_file(host_path) && self.is_read_only(host_path) {
            return Err(err(io::Error::from_raw_os_error(1)));
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(false)
            .open(&path)
            .map_err(err)?;
        if self.is_live() {
            return f.write_all(value.as_bytes()).map_err(err);
        }
        let old = std::fs::read_to_string(&path).map_err(err)?;
        let content = if old.contains('[') {
            let words: Vec<&str> = old
                .split_whitespace()
                .map(|w| w.trim_start_matches('[').trim_end_matches(']'))
                .collect();
            if !words.contains(&value.trim()) {
                return Err(err(io::Error::from_raw_os_error(22)));
            }
            let marked: Vec<String> = words
                .iter()
                .map(|w| match *w == value.trim() {
                    true => format!("[{w}]"),
                    false => (*w).to_owned(),
                })
                .collect();
            // The kernel's own layout: a trailing space before the newline in block queues.
            let tail = if old.ends_with(" \n") { " \n" } else { "\n" };
            format!("{}{tail}", marked.join(" "))
        } else {
            format!("{value}\n")
        };
        f.set_len(0).map_err(err)?;
        f.write_all(content.as_bytes()).map_err(err)
    }

    /// The host name, read from the kernel (so fixture trees can set it).
    pub fn hostname(&self) -> String {
        self.read_value("/proc/sys/kernel/hostname")
            .unwrap_or_else(|_| "unknown".to_owned())
    }
}

impl HostRoot {
    /// Whether a file exists and has no write bit at all (a managed IRQ's affinity file).
    pub fn is_read_only(&self, host_path: &str) -> bool {
        use std::os::unix::fs::PermissionsExt;
        self.path(host_path)
            .ok()
            .and_then(|p| std::fs::metadata(p).ok())
            .is_some_and(|m| m.permissions().mode() & 0o222 == 0)
    }

    /// Whether `host_path` is on a read-only mount (a container's /proc/irq and /sys, which
    /// belong to the host): nothing there can be changed from here.
    pub fn on_read_only_mount(&self, host_path: &str) -> bool {
        use nix::sys::statvfs::{FsFlags, statvfs};
        self.path(host_path)
            .ok()
            .and_then(|p| statvfs(&p).ok())
            .is_some_and(|s| s.flags().contains(FsFlags::ST_RDONLY))
    }
}

/// A fixture's managed IRQ: the kernel creates a managed IRQ's `smp_affinity` and
/// `smp_affinity_list` read-only (0444; movable IRQs get 0644) and answers root's write with
/// EPERM (measured on 6.18). A fixture file under /proc/irq with no write bit stands for one.
fn managed_irq_file(host_path: &str) -> bool {
    host_path.starts_with("/proc/irq/")
        && (host_path.ends_with("/smp_affinity_list") || host_path.ends_with("/smp_affinity"))
}

/// Reads a whole file: open, read(2) to EOF, close. `std::fs::read` and `File::read_to_end`
/// first fstat and lseek for a size hint, which kernel files do not give (/proc says 0, sysfs
/// 4096): two wasted syscalls per read, and verify reads dozens of files.
fn read_small(path: &Path) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 512];
    let mut len = 0;
    loop {
        if len == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
        match file.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(len);
    Ok(buf)
}

/// Undoes the kernel's octal escaping of spaces, tabs, newlines and backslashes in paths
/// (/proc/swaps, /proc/self/mountinfo, /etc/fstab).
pub fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        // A byte is \000 to \377; `\777` (only in hand-written files) is left as text
        // instead of overflowing.
        if b[i] == b'\\'
            && i + 3 < b.len()
            && (b'0'..=b'3').contains(&b[i + 1])
            && b[i + 2..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn octal_escapes() {
        assert_eq!(unescape_octal("/a\\040b\\011c\\134d"), "/a b\tc\\d");
        assert_eq!(unescape_octal("/end\\04"), "/end\\04");
        assert_eq!(unescape_octal("/odd\\777"), "/odd\\777");
    }

    #[test]
    fn path_prefixes_root_and_refuses_traversal() {
        let host = HostRoot::new("/fixture");
        assert_eq!(
            host.path("/proc/sys/vm/swappiness").unwrap(),
            PathBuf::from("/fixture/proc/sys/vm/swappiness")
        );
        assert_eq!(
            host.path("/proc/./sys").unwrap(),
            PathBuf::from("/fixture/proc/sys")
        );
        for bad in ["proc/sys", "/proc/../etc/shadow", "/proc/sys/..", ""] {
            let err = host.path(bad).unwrap_err();
            assert!(
                matches!(err, HostError::BadPath { .. }),
                "{bad:?} gave {err}"
            );
        }
    }

    #[test]
    fn missing_file_and_missing_parent_are_not_found() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("file"), "x\n").unwrap();
        let host = HostRoot::new(dir.path());
        assert!(host.read("/nope").unwrap_err().is_not_found());
        // A path through a regular file gives ENOTDIR, which also means "absent".
        assert!(
            host.read("/file/queue/scheduler")
                .unwrap_err()
                .is_not_found()
        );
        assert_eq!(host.read_value("/file").unwrap(), "x");
    }
}
