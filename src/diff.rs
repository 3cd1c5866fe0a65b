//! `overlayfuse diff`: what an upper layer changes in its lowers, printed as `podman diff`
//! prints a container's changes ([`crate::fs::diff`] finds them).

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::cli::optlist::split_layers;
use crate::cli::DiffArgs;
use crate::error::Error;
use crate::fs::diff::{changes, to_json, DirRule};
use crate::fs::Layer;

/// Lists the changes `args.upper` makes to `args.lower` on stdout.
pub fn run(args: &DiffArgs) -> Result<(), Error> {
    let (upper, lowers) = open_layers(&args.lower, &args.upper)?;
    let found = changes(&upper, &lowers, DirRule::Podman).map_err(|e| {
        Error::runtime(format!(
            "cannot read the layers of '{}': {e}",
            args.upper.display()
        ))
    })?;
    let mut text = String::new();
    if args.format == "json" {
        text.push_str(&to_json(&found));
        text.push('\n');
    } else {
        for c in &found {
            text.push(c.kind.letter());
            text.push(' ');
            text.push_str(&c.path.to_string_lossy());
            text.push('\n');
        }
    }
    let mut out = std::io::stdout().lock();
    // A closed pipe (`| head`) ends the listing quietly.
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
    Ok(())
}

/// Opens the upper layer `upper` and the lowers `lower` (a `--lower` list), each lower at
/// its position; one-line errors for a missing, non-directory or repeated layer.
pub(crate) fn open_layers(lower: &str, upper: &Path) -> Result<(Layer, Vec<Layer>), Error> {
    let paths = split_layers(lower, "--lower")?;
    if paths.iter().any(|p| same_dir(p, upper)) {
        return Err(Error::invalid(format!(
            "'{}' is given as --upper and as a --lower layer: give each layer once",
            upper.display()
        )));
    }
    let mut lowers = Vec::with_capacity(paths.len());
    for (i, path) in paths.iter().enumerate() {
        lowers.push(open(i, path, "--lower layer")?);
    }
    Ok((open(0, upper, "--upper")?, lowers))
}

/// Opens layer `path` (`what` in messages) as position `index`.
fn open(index: usize, path: &Path, what: &str) -> Result<Layer, Error> {
    let meta = std::fs::metadata(path).map_err(|e| {
        Error::invalid(format!(
            "{what} '{}' cannot be used: {e}: give an existing directory",
            path.display()
        ))
    })?;
    if !meta.is_dir() {
        return Err(Error::invalid(format!(
            "{what} '{}' is not a directory: give a layer directory",
            path.display()
        )));
    }
    Layer::open(index, path)
        .map_err(|e| Error::invalid(format!("{what} '{}' cannot be opened: {e}", path.display())))
}

fn same_dir(a: &Path, b: &Path) -> bool {
    let real = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| PathBuf::from(p));
    real(a) == real(b)
}
