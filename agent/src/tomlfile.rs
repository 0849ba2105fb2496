//! Strict TOML files (profiles, settings, inventories): a parse error, or a value the types
//! refuse, reported with line, column and the key it is about.

use serde::de::DeserializeOwned;

/// A TOML document that does not parse into the expected type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// Parses `text` into `T`; on failure, where and why, naming the key.
pub fn parse<T: DeserializeOwned>(text: &str) -> Result<T, Invalid> {
    match toml::from_str::<T>(text) {
        Ok(v) => Ok(v),
        Err(e) => {
            let offset = e.span().map_or(0, |s| s.start);
            let (line, column) = line_col(text, offset);
            let message = e.message().trim_end();
            // serde's messages do not say which key they are about ("invalid type: string
            // "yes", expected a boolean"): name it, unless the error is a TOML syntax error.
            let message = match e.span().and_then(|_| locate(text, offset)) {
                Some(Location::Key {
                    table,
                    value_is_table,
                }) if table.is_empty() => {
                    let what = if value_is_table {
                        "unknown section"
                    } else {
                        "unknown top-level key"
                    };
                    message.replacen("unknown field", what, 1)
                }
                Some(Location::Key { table: path, .. } | Location::Value { path }) => {
                    format!("{path}: {message}")
                }
                // toml's own message does not say which key.
                None if message == "duplicate key" => match e.span().and_then(|s| text.get(s)) {
                    Some(key) => format!("duplicate key `{key}`"),
                    None => message.to_owned(),
                },
                None => message.to_owned(),
            };
            Err(Invalid {
                line,
                column,
                message,
            })
        }
    }
}

/// Where in the document a byte offset falls.
#[derive(Debug, PartialEq)]
enum Location {
    /// On a key: the error is about the key itself (unknown, or an invalid sysctl key).
    /// `table` is the path of the table holding it, empty at the top level.
    Key { table: String, value_is_table: bool },
    /// Inside a value, or on a `[table]` / `[[array]]` header: `path` leads to it.
    Value { path: String },
}

/// Finds the key path of `offset` in `text`, as TOML would write it: `cpu.boost`,
/// `sysctl."net.core.somaxconn"`, `block[1].scheduler`. `None` when `text` does not parse.
fn locate(text: &str, offset: usize) -> Option<Location> {
    let doc = toml::de::DeTable::parse(text).ok()?;
    locate_in_table(doc.get_ref(), offset, "")
}

fn locate_in_table(table: &toml::de::DeTable<'_>, offset: usize, prefix: &str) -> Option<Location> {
    for (key, value) in table {
        if key.span().contains(&offset) {
            let value_is_table = match value.get_ref() {
                toml::de::DeValue::Table(_) => true,
                toml::de::DeValue::Array(a) => {
                    !a.is_empty() && a.iter().all(|v| v.get_ref().is_table())
                }
                _ => false,
            };
            return Some(Location::Key {
                table: prefix.to_owned(),
                value_is_table,
            });
        }
        let path = join_key(prefix, key.get_ref());
        if let Some(found) = locate_in_value(value, offset, &path) {
            return Some(found);
        }
    }
    None
}

fn locate_in_value(
    value: &toml::Spanned<toml::de::DeValue<'_>>,
    offset: usize,
    path: &str,
) -> Option<Location> {
    // Children first: a `[table]` header's span is the header alone, and an inline table's
    // span covers its children, so the innermost match is the precise one.
    let inner = match value.get_ref() {
        toml::de::DeValue::Table(t) => locate_in_table(t, offset, path),
        toml::de::DeValue::Array(a) => a
            .iter()
            .enumerate()
            .find_map(|(i, v)| locate_in_value(v, offset, &format!("{path}[{i}]"))),
        _ => None,
    };
    inner.or_else(|| {
        value.span().contains(&offset).then(|| Location::Value {
            path: path.to_owned(),
        })
    })
}

/// Appends a key to a dotted path, quoted when it is not a bare TOML key.
fn join_key(prefix: &str, key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    let key = if bare {
        key.to_owned()
    } else {
        format!("{key:?}")
    };
    if prefix.is_empty() {
        key
    } else {
        format!("{prefix}.{key}")
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..text.floor_char_boundary(offset)];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column() {
        let t = "a\nbc\n\u{e9}x";
        assert_eq!(line_col(t, 0), (1, 1));
        assert_eq!(line_col(t, 3), (2, 2));
        assert_eq!(line_col(t, 7), (3, 2));
    }
}
