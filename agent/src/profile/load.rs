//! Finding profiles and loading them with their include chains.

use std::path::{Path, PathBuf};

use super::types::ProfileName;
use super::{Profile, ProfileFile};

/// Environment variable with extra profile directories, `:`-separated, searched first.
pub const PROFILE_PATH_ENV: &str = "NODE_AGENT_PROFILE_PATH";
/// Local profiles, then the shipped ones.
pub const DEFAULT_PROFILE_DIRS: [&str; 2] =
    ["/etc/node-agent/profiles", "/usr/share/node-agent/profiles"];
/// Deeper include chains are certainly a mistake.
const MAX_INCLUDE_DEPTH: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("profile {name:?} not found; searched {}", display_dirs(searched))]
    NotFound {
        name: String,
        searched: Vec<PathBuf>,
    },
    #[error("{0}")]
    BadName(String),
    // The cause is the source, not part of this message: agentctl prints the whole chain, and
    // printing it here too would say it twice.
    #[error("failed to read profile {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Anything wrong inside a file: syntax, unknown key, wrong type, invalid value, include
    /// problems. Always with the position of the offending text.
    #[error("{}:{line}:{column}: {message}", path.display())]
    Invalid {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
}

fn display_dirs(dirs: &[PathBuf]) -> String {
    if dirs.is_empty() {
        return "no directories".into();
    }
    dirs.iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Where profiles are looked up by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchPath {
    dirs: Vec<PathBuf>,
}

impl SearchPath {
    pub fn new(dirs: Vec<PathBuf>) -> Self {
        SearchPath { dirs }
    }

    /// `NODE_AGENT_PROFILE_PATH` entries, then /etc/node-agent/profiles, then
    /// /usr/share/node-agent/profiles.
    pub fn from_env() -> Self {
        let mut dirs: Vec<PathBuf> = std::env::var_os(PROFILE_PATH_ENV)
            .map(|v| {
                std::env::split_paths(&v)
                    .filter(|p| !p.as_os_str().is_empty())
                    .collect()
            })
            .unwrap_or_default();
        dirs.extend(DEFAULT_PROFILE_DIRS.iter().map(PathBuf::from));
        SearchPath { dirs }
    }

    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    fn find(&self, name: &str) -> Option<PathBuf> {
        self.dirs
            .iter()
            .map(|d| d.join(format!("{name}.toml")))
            .find(|p| p.is_file())
    }

    /// Every profile reachable by name: (name, path), first directory wins; later files of the
    /// same name are shadowed and listed with `shadowed = true`.
    pub fn list(&self) -> Vec<ListedProfile> {
        let mut out: Vec<ListedProfile> = Vec::new();
        for dir in &self.dirs {
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            let mut names: Vec<(String, PathBuf)> = entries
                .filter_map(Result::ok)
                .filter_map(|e| {
                    let path = e.path();
                    let name = path
                        .file_name()?
                        .to_str()?
                        .strip_suffix(".toml")?
                        .to_owned();
                    name.parse::<ProfileName>().ok()?;
                    Some((name, path))
                })
                .collect();
            names.sort();
            for (name, path) in names {
                let shadowed = out.iter().any(|p| p.name == name);
                out.push(ListedProfile {
                    name,
                    path,
                    shadowed,
                });
            }
        }
        out
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ListedProfile {
    pub name: String,
    pub path: PathBuf,
    pub shadowed: bool,
}

/// A profile argument is a path when it contains `/` or ends in `.toml`, otherwise a name.
fn is_path_like(spec: &str) -> bool {
    spec.contains('/') || spec.ends_with(".toml")
}

/// Turns `--profile NAME|PATH` into a file path.
pub fn resolve(spec: &str, search: &SearchPath) -> Result<PathBuf, ProfileError> {
    if is_path_like(spec) {
        return Ok(PathBuf::from(spec));
    }
    spec.parse::<ProfileName>().map_err(ProfileError::BadName)?;
    search.find(spec).ok_or_else(|| ProfileError::NotFound {
        name: spec.to_owned(),
        searched: search.dirs.clone(),
    })
}

/// Loads `--profile NAME|PATH` with its whole include chain merged.
pub fn load(spec: &str, search: &SearchPath) -> Result<Profile, ProfileError> {
    let path = resolve(spec, search)?;
    let mut files = Vec::new();
    let settings = load_chain(&path, search, &mut Vec::new(), &mut files)?;
    if settings.is_empty() {
        return Err(ProfileError::Invalid {
            path,
            line: 1,
            column: 1,
            message: "the profile sets nothing: add at least one of [sysctl], [cpu], [memory], \
                      [[block]], [limits], [[mount]], [clocksource], or include a profile"
                .into(),
        });
    }
    let name = match &settings.profile.name {
        Some(n) => n.to_string(),
        None => file_stem(&path),
    };
    Ok(Profile {
        name,
        description: settings.profile.description.clone(),
        source: path,
        files,
        settings,
    })
}

/// Parses one file without following its includes (used to report what a file itself says).
pub fn load_file_only(path: &Path) -> Result<ProfileFile, ProfileError> {
    parse_file(path).map(|(_, f)| f)
}

fn file_stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn parse_file(path: &Path) -> Result<(String, ProfileFile), ProfileError> {
    let text = std::fs::read_to_string(path).map_err(|source| ProfileError::Read {
        path: path.to_owned(),
        source,
    })?;
    match crate::tomlfile::parse::<ProfileFile>(&text) {
        Ok(file) => Ok((text, file)),
        Err(e) => Err(ProfileError::Invalid {
            path: path.to_owned(),
            line: e.line,
            column: e.column,
            message: e.message,
        }),
    }
}

/// One file being loaded: its canonical path (to detect cycles whatever the spelling) and the
/// path as found (to report).
struct Open {
    identity: PathBuf,
    path: PathBuf,
}

fn load_chain(
    path: &Path,
    search: &SearchPath,
    stack: &mut Vec<Open>,
    files: &mut Vec<PathBuf>,
) -> Result<ProfileFile, ProfileError> {
    let (text, mut file) = parse_file(path)?;
    let identity = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    stack.push(Open {
        identity,
        path: path.to_owned(),
    });
    let mut merged = ProfileFile::default();
    for (i, include) in std::mem::take(&mut file.profile.include)
        .into_iter()
        .enumerate()
    {
        let (line, column) = crate::tomlfile::line_col(&text, include.span().start);
        let invalid = |message: String| ProfileError::Invalid {
            path: path.to_owned(),
            line,
            column,
            message: format!("profile.include[{i}]: {message}"),
        };
        let target = resolve_include(include.get_ref(), path, search).map_err(invalid)?;
        let target_id = std::fs::canonicalize(&target).unwrap_or_else(|_| target.clone());
        if let Some(pos) = stack.iter().position(|o| o.identity == target_id) {
            let chain: Vec<String> = stack[pos..]
                .iter()
                .map(|o| &o.path)
                .chain(std::iter::once(&target))
                .map(|p| p.display().to_string())
                .collect();
            return Err(invalid(format!("include cycle: {}", chain.join(" -> "))));
        }
        if stack.len() >= MAX_INCLUDE_DEPTH {
            return Err(invalid(format!(
                "includes nested deeper than {MAX_INCLUDE_DEPTH} levels"
            )));
        }
        let included = load_chain(&target, search, stack, files)?;
        merged.merge(included);
    }
    stack.pop();
    files.push(path.to_owned());
    merged.merge(file);
    Ok(merged)
}

/// An include is a name (looked up beside the including file, then on the search path) or a
/// path relative to the including file.
fn resolve_include(spec: &str, from: &Path, search: &SearchPath) -> Result<PathBuf, String> {
    let dir = from.parent().unwrap_or(Path::new("."));
    if is_path_like(spec) {
        let p = dir.join(spec);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!(
                "included profile {spec:?} not found at {}",
                p.display()
            ))
        };
    }
    spec.parse::<ProfileName>()?;
    let beside = dir.join(format!("{spec}.toml"));
    if beside.is_file() {
        return Ok(beside);
    }
    search.find(spec).ok_or_else(|| {
        let mut searched = vec![dir.to_owned()];
        searched.extend(search.dirs.iter().cloned());
        format!(
            "included profile {spec:?} not found; searched {}",
            display_dirs(&searched)
        )
    })
}
