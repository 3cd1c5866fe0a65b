//! Checks on the real directories of a [`MountConfig`] before anything is mounted: they
//! exist, are directories, are not given twice, do not nest, and the mount point lies
//! outside every layer (a mount point inside a layer deadlocks other tools).

use std::path::{Path, PathBuf};

use crate::config::MountConfig;
use crate::error::Error;

/// A directory named on the command line, with its canonical path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamedDir {
    /// What the option is called (`lowerdir`, `mount point`, ...).
    pub role: &'static str,
    /// The path as given.
    pub given: PathBuf,
    /// The path with symlinks and `..` resolved.
    pub real: PathBuf,
}

/// The directories of a mount, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checked {
    /// Lower layers, topmost first.
    pub lowers: Vec<NamedDir>,
    /// The writable upper layer and its work dir.
    pub upper: Option<(NamedDir, NamedDir)>,
    /// The merged directory.
    pub mountpoint: NamedDir,
}

fn directory(role: &'static str, given: &Path) -> Result<NamedDir, Error> {
    let shown = given.display();
    let meta = std::fs::metadata(given).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::invalid(format!(
            "{role} '{shown}' does not exist: create it or fix the path"
        )),
        _ => Error::invalid(format!("{role} '{shown}' cannot be used: {e}")),
    })?;
    if !meta.is_dir() {
        return Err(Error::invalid(format!(
            "{role} '{shown}' is not a directory: give a directory"
        )));
    }
    let real = std::fs::canonicalize(given)
        .map_err(|e| Error::invalid(format!("{role} '{shown}' cannot be resolved: {e}")))?;
    Ok(NamedDir {
        role,
        given: given.to_owned(),
        real,
    })
}

/// Checks every directory `cfg` names.
pub fn check(cfg: &MountConfig) -> Result<Checked, Error> {
    let lowers = cfg
        .lowers
        .iter()
        .map(|l| directory("lowerdir", l))
        .collect::<Result<Vec<_>, _>>()?;
    let mountpoint = directory("mount point", &cfg.mountpoint)?;
    let upper = match &cfg.upper {
        Some((u, w)) => Some((directory("upperdir", u)?, directory("workdir", w)?)),
        None => None,
    };
    let mut all = lowers.clone();
    if let Some((u, w)) = &upper {
        same_filesystem(u, w)?;
        all.push(u.clone());
        all.push(w.clone());
    }
    for (i, a) in all.iter().enumerate() {
        for b in &all[i + 1..] {
            if a.real == b.real {
                return Err(Error::invalid(format!(
                    "{} '{}' is given twice (as '{}' too): give each layer once",
                    a.role,
                    a.given.display(),
                    b.given.display()
                )));
            }
            for (inner, outer) in [(a, b), (b, a)] {
                if inner.real.starts_with(&outer.real) {
                    return Err(Error::invalid(format!(
                        "{} '{}' lies inside {} '{}': layers must not nest",
                        inner.role,
                        inner.given.display(),
                        outer.role,
                        outer.given.display()
                    )));
                }
            }
        }
        if mountpoint.real.starts_with(&a.real) {
            return Err(Error::invalid(format!(
                "mount point '{}' lies inside {} '{}': mount outside every layer",
                mountpoint.given.display(),
                a.role,
                a.given.display()
            )));
        }
        if a.real.starts_with(&mountpoint.real) {
            return Err(Error::invalid(format!(
                "{} '{}' lies inside the mount point '{}': the mount would hide it; move one",
                a.role,
                a.given.display(),
                mountpoint.given.display()
            )));
        }
    }
    Ok(Checked {
        lowers,
        upper,
        mountpoint,
    })
}

/// The work dir must be on the upper's filesystem: objects are built there and renamed in.
fn same_filesystem(upper: &NamedDir, work: &NamedDir) -> Result<(), Error> {
    use std::os::unix::fs::MetadataExt;
    let dev = |d: &NamedDir| {
        std::fs::metadata(&d.real).map(|m| m.dev()).map_err(|e| {
            Error::invalid(format!(
                "{} '{}' cannot be used: {e}",
                d.role,
                d.given.display()
            ))
        })
    };
    if dev(upper)? != dev(work)? {
        return Err(Error::invalid(format!(
            "workdir '{}' is on another filesystem than upperdir '{}': put both on one",
            work.given.display(),
            upper.given.display()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(lowers: &[&Path], mountpoint: &Path) -> MountConfig {
        let args = crate::cli::MountArgs {
            lower: Some(
                lowers
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(":"),
            ),
            mountpoint: mountpoint.to_owned(),
            ..Default::default()
        };
        MountConfig::from_args(&args).unwrap()
    }

    #[test]
    fn good_directories_pass() {
        let t = tempfile::tempdir().unwrap();
        for d in ["a", "b", "m"] {
            std::fs::create_dir(t.path().join(d)).unwrap();
        }
        let c = check(&cfg(
            &[&t.path().join("a"), &t.path().join("b")],
            &t.path().join("m"),
        ));
        assert_eq!(c.unwrap().lowers.len(), 2);
    }

    #[test]
    fn bad_directories_are_named() {
        let t = tempfile::tempdir().unwrap();
        let p = |s: &str| t.path().join(s);
        for d in ["a", "a/inner", "m"] {
            std::fs::create_dir(p(d)).unwrap();
        }
        std::fs::write(p("file"), "x").unwrap();
        std::os::unix::fs::symlink(p("a"), p("alias")).unwrap();
        let cases: [(Vec<PathBuf>, PathBuf, &str); 6] = [
            (vec![p("missing")], p("m"), "does not exist"),
            (vec![p("file")], p("m"), "not a directory"),
            (vec![p("a"), p("alias")], p("m"), "given twice"),
            (vec![p("a"), p("a/inner")], p("m"), "must not nest"),
            (vec![p("a")], p("a/inner"), "lies inside lowerdir"),
            (vec![p("a/inner")], p("a"), "inside the mount point"),
        ];
        for (lowers, mp, want) in cases {
            let lowers: Vec<&Path> = lowers.iter().map(|l| l.as_path()).collect();
            let e = check(&cfg(&lowers, &mp)).unwrap_err();
            assert!(e.message.contains(want), "{want}: {e}");
            assert_eq!(e.exit_code(), 2);
        }
    }
}
