//! [`Workspace`]: where the container's root is, and the private directories made for it
//! (an upper, a work dir and a mount point), removed afterwards.

use std::path::{Path, PathBuf};

use crate::cli::MountArgs;
use crate::config::run::RootSource;
use crate::config::MountConfig;
use crate::error::Error;
use crate::preflight;

/// The directories of one run.
#[derive(Clone, Debug)]
pub struct Workspace {
    /// The directory that becomes `/` in the container: the merged mount point, or `--rootfs`.
    pub root: PathBuf,
    /// The layers to mount there: `--lower` as given, the upper and the work dir.
    pub layers: Option<Layers>,
    /// The private directory holding what this run made; removed at the end unless kept.
    pub private: Option<PathBuf>,
    /// Keep the private upper (`--keep-upper`): only the mount point and work dir go.
    pub keep_upper: bool,
}

/// What to mount.
#[derive(Clone, Debug)]
pub struct Layers {
    /// `--lower`, as given.
    pub lower: String,
    /// Upper layer.
    pub upper: PathBuf,
    /// Work dir.
    pub work: PathBuf,
    /// True when the upper was made for this run (then its root takes the top lower's owner
    /// and mode, and copy-ups are not synced unless it is kept).
    pub private_upper: bool,
}

/// The directory under which private directories are made: `$TMPDIR`, else `/var/tmp`
/// (on disk, unlike `/tmp` on many systems: an upper can grow large).
fn base() -> PathBuf {
    std::env::var_os("TMPDIR")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .unwrap_or_else(|| PathBuf::from("/var/tmp"))
}

/// A new directory of this process under `$TMPDIR` (else `/var/tmp`), mode 0700, named
/// `PREFIX-PID-N`.
pub(crate) fn private_dir(prefix: &str) -> Result<PathBuf, Error> {
    use std::os::unix::fs::DirBuilderExt;
    let base = base();
    let pid = std::process::id();
    for n in 0..1000 {
        let dir = base.join(format!("{prefix}-{pid}-{n}"));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(Error::setup(format!(
                "cannot make a private directory in '{}': {e}: set TMPDIR to a writable directory",
                base.display()
            )))
            }
        }
    }
    Err(Error::setup(format!(
        "'{}' is full of {prefix}-* directories: remove the stale ones",
        base.display()
    )))
}

fn make_dir(path: &Path) -> Result<(), Error> {
    std::fs::create_dir(path)
        .map_err(|e| Error::setup(format!("cannot make '{}': {e}", path.display())))
}

impl Workspace {
    /// Makes the directories `root` needs.
    pub fn prepare(root: &RootSource) -> Result<Workspace, Error> {
        match root {
            RootSource::Dir(dir) => {
                if !dir.is_dir() {
                    return Err(Error::setup(format!(
                        "--rootfs '{}' is not a directory: give the root of an unpacked image",
                        dir.display()
                    )));
                }
                Ok(Workspace {
                    root: dir.clone(),
                    layers: None,
                    private: None,
                    keep_upper: false,
                })
            }
            RootSource::Layers {
                lower,
                upper,
                keep_upper,
            } => {
                let private = private_dir("overlayfuse-run")?;
                let merged = private.join("merged");
                let (upper, work, private_upper) = match upper {
                    Some((u, w)) => (u.clone(), w.clone(), false),
                    None => (private.join("upper"), private.join("work"), true),
                };
                let ws = Workspace {
                    root: merged,
                    layers: Some(Layers {
                        lower: lower.clone(),
                        upper: upper.clone(),
                        work,
                        private_upper,
                    }),
                    private: Some(private),
                    keep_upper: *keep_upper,
                };
                let made = (|| {
                    make_dir(&ws.root)?;
                    if private_upper {
                        make_dir(&upper)?;
                        if let Some(l) = &ws.layers {
                            make_dir(&l.work)?;
                        }
                    }
                    Ok(())
                })();
                if let Err(e) = made.and_then(|()| ws.check_layers()) {
                    ws.remove();
                    return Err(e);
                }
                Ok(ws)
            }
        }
    }

    /// Runs the mount's own checks of the layer directories (existence, nesting, the work
    /// dir's filesystem) now, so a bad `--lower` is one line from the run, not a daemon's.
    fn check_layers(&self) -> Result<(), Error> {
        let Some(layers) = &self.layers else {
            return Ok(());
        };
        let args = MountArgs {
            lower: Some(layers.lower.clone()),
            upper: Some(layers.upper.clone()),
            work: Some(layers.work.clone()),
            mountpoint: self.root.clone(),
            ..MountArgs::default()
        };
        MountConfig::from_args(&args)
            .and_then(|cfg| preflight::check(&cfg).map(drop))
            .map_err(Error::into_setup)
    }

    /// Removes what this run made (all of it, or all but the upper with `--keep-upper`).
    /// Errors are reported, not returned: the container's status matters more.
    pub fn remove(&self) {
        let Some(private) = &self.private else { return };
        let result = if self.keep_upper {
            // Only a work dir made for this run; never one the user gave.
            let work = self
                .layers
                .as_ref()
                .filter(|l| l.private_upper)
                .map(|l| l.work.clone());
            [Some(self.root.clone()), work]
                .into_iter()
                .flatten()
                .try_for_each(|p| remove_tree(&p))
        } else {
            remove_tree(private)
        };
        if let Err(e) = result {
            eprintln!(
                "overlayfuse run: cannot remove '{}': {e}",
                private.display()
            );
        }
    }
}

fn remove_tree(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}
