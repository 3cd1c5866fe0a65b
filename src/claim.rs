//! One mount per upper: a live mount holds an exclusive flock on its upper dir and on its work
//! dir, so a second mount of either is refused before it touches anything (its start-up would
//! empty the work dir under a copy-up in flight). The locks belong to the daemon's open
//! descriptors and die with it, so a crash never leaves an upper locked.
//!
//! Each locked dir also carries an xattr naming the mount point that holds it, so the refusal
//! can name the other mount. It is the overlay's own (never shown through the mount) and only
//! informative: a stale one left by a crash is overwritten by the next mount.

use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::ffi::OsStringExt;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::error::Error;
use crate::sys::{file, lock, mount};

/// Xattrs naming the mount point that holds a dir, `trusted.` tried first.
const HOLDER_XATTRS: [&str; 2] = ["trusted.overlayfuse.mount", "user.overlayfuse.mount"];

/// How long a holder whose mount is already gone is waited for: a daemon finishing its exit.
const EXIT_GRACE: Duration = Duration::from_secs(5);

/// The locks of a live mount on its upper and work dirs; released when dropped.
#[derive(Debug)]
pub struct Claim {
    _upper: File,
    _work: File,
}

/// Locks `upper` and `work` (given as the user named them: `upper_shown`, `work_shown`) for
/// the mount on `mountpoint`, or says which mount holds them.
pub fn take(
    (upper, upper_shown): (&Path, &Path),
    (work, work_shown): (&Path, &Path),
    mountpoint: &Path,
) -> Result<Claim, Error> {
    let upper_file = lock_dir("upperdir", upper, upper_shown)?;
    let work_file = lock_dir("workdir", work, work_shown)?;
    let holder = mountpoint.as_os_str().as_encoded_bytes();
    for f in [&upper_file, &work_file] {
        let recorded = HOLDER_XATTRS
            .iter()
            .any(|x| file::xattr_set(f, OsStr::new(x), holder).is_ok());
        if !recorded {
            log::debug!("cannot record the mount point on a locked dir");
        }
    }
    Ok(Claim {
        _upper: upper_file,
        _work: work_file,
    })
}

fn lock_dir(role: &str, path: &Path, shown: &Path) -> Result<File, Error> {
    let f = File::open(path).map_err(|e| {
        Error::invalid(format!(
            "{role} '{}' cannot be opened: {e}",
            shown.display()
        ))
    })?;
    let start = Instant::now();
    loop {
        match lock::try_exclusive(&f) {
            Ok(true) => return Ok(f),
            Ok(false) => {}
            Err(e) => {
                // A filesystem without locks (NFS mounted nolock): serve, unguarded.
                log::warn!(
                    "cannot lock {role} '{}' ({e}): a second mount of it would not be refused",
                    shown.display()
                );
                return Ok(f);
            }
        }
        let holder = holder(&f);
        let live = holder.as_deref().is_some_and(is_mount_point);
        if live || start.elapsed() > EXIT_GRACE {
            return Err(Error::invalid(in_use(role, shown, holder.as_deref(), live)));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The refusal of a dir held by another daemon: one whose mount point is `holder` (if it was
/// recorded), still mounted in this namespace when `live`.
fn in_use(role: &str, shown: &Path, holder: Option<&Path>, live: bool) -> String {
    let shown = shown.display();
    match holder {
        Some(m) if live => format!(
            "{role} '{shown}' is in use by the overlayfuse mount on '{}': unmount that first, \
             or give another {role}",
            m.display()
        ),
        Some(m) => format!(
            "{role} '{shown}' is in use by the overlayfuse mount once on '{}', which is \
             unmounted here but still served (files open on a lazily unmounted mount, or a \
             copy of it in another mount namespace): end those, or give another {role}",
            m.display()
        ),
        None => format!(
            "{role} '{shown}' is in use by another overlayfuse mount: unmount that first, or \
             give another {role}"
        ),
    }
}

/// The mount point recorded on a locked dir.
fn holder(f: &File) -> Option<std::path::PathBuf> {
    HOLDER_XATTRS.iter().find_map(|x| {
        let v = file::xattr_get(f, OsStr::new(x)).ok()?;
        Some(std::path::PathBuf::from(std::ffi::OsString::from_vec(v)))
    })
}

/// True when `path` is a mount point in this mount namespace.
fn is_mount_point(path: &Path) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .is_ok_and(|info| mount::mount_points(&info).any(|m| m == path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_claim_of_a_locked_dir_names_the_holder() {
        let t = tempfile::tempdir().unwrap();
        let (u, w) = (t.path().join("u"), t.path().join("w"));
        std::fs::create_dir(&u).unwrap();
        std::fs::create_dir(&w).unwrap();
        // "/" is always a mount point: the holder counts as live, so no grace wait.
        let first = take((&u, &u), (&w, &w), Path::new("/")).unwrap();
        let e = take((&u, &u), (&w, &w), Path::new("/m2")).unwrap_err();
        assert!(e.to_string().contains("upperdir"), "{e}");
        drop(first);
        take((&u, &u), (&w, &w), Path::new("/")).unwrap();
    }
}
