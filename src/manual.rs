//! Manual pages and shell completions, generated from the command line's definition
//! (`cli::definition`), so they cannot drift from what the parser accepts. The pages are also
//! checked in under `man/` (a unit test fails when they are stale), and `tools/install.sh`
//! installs them with the completions.

use std::path::Path;

use crate::cli;
use crate::error::Error;

/// Every manual page: `overlayfuse.1`, `overlayfuse-SUBCOMMAND.1` and, for a subcommand
/// with its own (`image`), `overlayfuse-SUBCOMMAND-SUB.1`, with its text.
pub fn pages() -> Vec<(String, Vec<u8>)> {
    let top = cli::definition();
    let mut pages = Vec::new();
    let mut render = |name: String, cmd: clap::Command| {
        let mut text = Vec::new();
        // Rendering into memory cannot fail.
        let _ = clap_mangen::Man::new(cmd).render(&mut text);
        pages.push((format!("{name}.1"), text));
    };
    for sub in top.get_subcommands().filter(|s| s.get_name() != "help") {
        let name = format!("overlayfuse-{}", sub.get_name());
        for inner in sub.get_subcommands().filter(|s| s.get_name() != "help") {
            let inner_name = format!("{name}-{}", inner.get_name());
            render(inner_name.clone(), inner.clone().name(inner_name));
        }
        render(name.clone(), sub.clone().name(name));
    }
    render("overlayfuse".into(), top);
    pages
}

/// Writes every manual page into `dir`.
pub fn write_pages(dir: &Path) -> Result<(), Error> {
    for (name, text) in pages() {
        let path = dir.join(&name);
        std::fs::write(&path, text).map_err(|e| {
            Error::runtime(format!(
                "cannot write '{}': {e}: give a writable directory",
                path.display()
            ))
        })?;
    }
    Ok(())
}

/// Writes the completion script for `shell` to `out`.
pub fn completions(shell: clap_complete::Shell, out: &mut dyn std::io::Write) {
    clap_complete::generate(shell, &mut cli::definition(), "overlayfuse", out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checked_in_manual_pages_are_current() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("man");
        let mut stale = Vec::new();
        for (name, text) in pages() {
            if std::fs::read(dir.join(&name)).ok().as_deref() != Some(&text[..]) {
                stale.push(name);
            }
        }
        assert!(
            stale.is_empty(),
            "stale manual pages {stale:?}: run `cargo run -- manpages man` and commit man/"
        );
        let names: Vec<String> = pages().into_iter().map(|(n, _)| n).collect();
        for page in std::fs::read_dir(&dir).unwrap() {
            let name = page.unwrap().file_name().into_string().unwrap();
            assert!(
                names.contains(&name),
                "man/{name} is no longer generated: remove it"
            );
        }
    }

    #[test]
    fn completions_name_every_subcommand() {
        let mut out = Vec::new();
        completions(clap_complete::Shell::Bash, &mut out);
        let script = String::from_utf8(out).unwrap();
        for sub in ["mount", "umount", "run", "diff", "commit", "features"] {
            assert!(
                script.contains(sub),
                "{sub} missing from the bash completions"
            );
        }
    }
}
