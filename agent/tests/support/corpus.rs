//! Malformed-input corpora (profiles, settings): a directory of `.toml` cases and a table of
//! their expected messages, kept in step, every case checked in one run.

use std::path::Path;

/// Runs `check(case, expected)` on every case and fails once, listing every case that went
/// wrong.
pub fn for_each_case(cases: &[(&str, &str)], check: impl Fn(&str, &str) -> Result<(), String>) {
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|(case, expected)| check(case, expected).err())
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// The `.toml` files of `dir` and the table's case names are the same set, none listed twice.
pub fn assert_corpus_matches(dir: &Path, cases: &[(&str, &str)]) {
    let mut on_disk: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .map(|name| {
            name.strip_suffix(".toml")
                .unwrap_or_else(|| panic!("{name}: only .toml cases belong in the corpus"))
                .to_owned()
        })
        .collect();
    on_disk.sort();
    let mut in_table: Vec<String> = cases.iter().map(|(c, _)| c.to_string()).collect();
    in_table.sort();
    let before = in_table.len();
    in_table.dedup();
    assert_eq!(
        before,
        in_table.len(),
        "a case is listed twice in the table"
    );
    assert_eq!(on_disk, in_table);
}
