//! The README's settings table must list every setting as the code
//! declares it (name, environment variable, default, meaning).
//!
//! On a mismatch, run this test with `HERALD_UPDATE_README=1` to rewrite
//! the table, and commit the result.

use std::path::PathBuf;

const HEADER: &str = "| setting | environment | default | meaning |\n|---|---|---|---|\n";

fn table() -> String {
    let rows: Vec<String> = herald::config::Config::describe()
        .into_iter()
        .map(|(name, env, default, doc)| {
            let default = default.replace('|', "\\|");
            format!("| `{name}` | `{env}` | `{default}` | {doc} |")
        })
        .collect();
    format!("{HEADER}{}\n", rows.join("\n"))
}

#[test]
fn readme_lists_every_setting() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("README.md");
    let readme = std::fs::read_to_string(&path).expect("README.md");
    let start = readme
        .find(HEADER)
        .expect("the README has a settings table");
    let end = readme[start..]
        .find("\n\n")
        .map_or(readme.len(), |e| start + e + 1);
    let expected = table();
    if std::env::var("HERALD_UPDATE_README").is_ok_and(|v| v == "1") {
        let updated = format!("{}{}{}", &readme[..start], expected, &readme[end..]);
        std::fs::write(&path, updated).expect("cannot write README.md");
        return;
    }
    let current = &readme[start..end];
    if current != expected {
        let missing: Vec<&str> = expected.lines().filter(|l| !current.contains(l)).collect();
        panic!(
            "the README's settings table is out of date; rows missing or different:\n{}\n\
             Rewrite it with HERALD_UPDATE_README=1 cargo test --test readme_settings",
            missing.join("\n")
        );
    }
}
