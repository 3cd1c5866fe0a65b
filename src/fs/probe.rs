//! What the upper filesystem really does, learned at mount by trying it in the work dir (never
//! in the merged view): whiteout devices, overlay xattrs, the renameat2 flags, `O_TMPFILE`
//! and FICLONE. The marker format and the write paths follow the answers, so a filesystem
//! that refuses something (a kernel overlay refuses char 0/0 nodes: the nested-container case)
//! is found out at mount, not at the first `rm`.

use std::ffi::{OsStr, OsString};
use std::io::Write;

use super::upper::{self, MarkerFormat};
use crate::sys::{file, rename_flags, Dir, Errno, FileKind};

/// The answers of one probe of an upper filesystem.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Features {
    /// A char 0/0 node can be made and reads back as one by its name. `Err` holds why not.
    pub device_whiteout: Result<(), Errno>,
    /// `trusted.overlay.*` xattrs can be set and read back on a directory and a regular file.
    pub trusted_xattr: Result<(), Errno>,
    /// `user.overlay.*` xattrs can be set and read back on a directory and a regular file.
    pub user_xattr: Result<(), Errno>,
    /// `renameat2(RENAME_WHITEOUT)` leaves a whiteout device at the source.
    pub rename_whiteout: bool,
    /// `renameat2(RENAME_EXCHANGE)` swaps two names.
    pub rename_exchange: bool,
    /// `O_TMPFILE` makes unnamed files.
    pub tmpfile: bool,
    /// FICLONE shares data blocks between files (btrfs, xfs with reflink=1).
    pub reflink: bool,
}

impl Features {
    /// Probes the filesystem of `work` (the work dir's `work/`, empty and ours), with
    /// scratch names from `temp`; leaves nothing behind.
    pub fn probe(work: &Dir, mut temp: impl FnMut() -> OsString) -> Features {
        Features {
            device_whiteout: probe_device_whiteout(work, &temp()),
            trusted_xattr: probe_xattr(work, &temp(), &temp(), "trusted.overlay.opaque"),
            user_xattr: probe_xattr(work, &temp(), &temp(), "user.overlay.opaque"),
            rename_whiteout: probe_rename_whiteout(work, &temp(), &temp()),
            rename_exchange: probe_rename_exchange(work, &temp(), &temp()),
            tmpfile: work.tmpfile(0o600).is_ok(),
            reflink: probe_reflink(work, &temp(), &temp()),
        }
    }

    /// The most native format this filesystem can hold: the kernel's, its `userxattr` form,
    /// or AUFS files (which need nothing but regular files).
    pub fn best_format(&self) -> MarkerFormat {
        [MarkerFormat::Kernel, MarkerFormat::UserXattr]
            .into_iter()
            .find(|f| self.check(*f).is_ok())
            .unwrap_or(MarkerFormat::Aufs)
    }

    /// Whether `format` can be written here; `Err` says what the filesystem refuses.
    /// Device whiteouts also need `RENAME_EXCHANGE`: a whiteout and the object that replaces
    /// it swap in one step, so a crash never shows the lower object again.
    pub fn check(&self, format: MarkerFormat) -> Result<(), String> {
        if format == MarkerFormat::Aufs {
            return Ok(());
        }
        if let Err(e) = self.device_whiteout {
            return Err(format!("it cannot hold char 0/0 whiteout devices ({e})"));
        }
        if !self.rename_exchange {
            return Err("it cannot swap names with RENAME_EXCHANGE".into());
        }
        let (namespace, xattr) = match format {
            MarkerFormat::Kernel => ("trusted", self.trusted_xattr),
            _ => ("user", self.user_xattr),
        };
        xattr.map_err(|e| format!("it cannot keep {namespace}.overlay.* xattrs ({e})"))
    }

    /// One line for the log: what was found.
    pub fn describe(&self) -> String {
        let yes = |ok: bool| if ok { "yes" } else { "no" };
        let res = |r: Result<(), Errno>| match r {
            Ok(()) => "yes".to_string(),
            Err(e) => format!("no ({e})"),
        };
        format!(
            "whiteout devices {}, trusted.overlay xattrs {}, user.overlay xattrs {}, \
             RENAME_WHITEOUT {}, RENAME_EXCHANGE {}, O_TMPFILE {}, FICLONE {}",
            res(self.device_whiteout),
            res(self.trusted_xattr),
            res(self.user_xattr),
            yes(self.rename_whiteout),
            yes(self.rename_exchange),
            yes(self.tmpfile),
            yes(self.reflink),
        )
    }
}

fn is_whiteout_device(dir: &Dir, name: &OsStr) -> bool {
    dir.stat_child(name)
        .is_ok_and(|st| st.kind() == Some(FileKind::CharDevice) && st.rdev == 0)
}

fn probe_device_whiteout(work: &Dir, name: &OsStr) -> Result<(), Errno> {
    work.mknod(name, libc::S_IFCHR | 0o600, 0)?;
    let read_back = is_whiteout_device(work, name);
    let _ = work.unlink(name);
    if read_back {
        Ok(())
    } else {
        Err(Errno::EIO)
    }
}

/// Sets `attr` to `y` on a new directory and a new regular file and reads both back.
fn probe_xattr(work: &Dir, dir: &OsStr, file: &OsStr, attr: &str) -> Result<(), Errno> {
    let attr = OsStr::new(attr);
    let on_dir = work.mkdir(dir, 0o700).and_then(|()| {
        let d = work.child_dir(dir)?;
        d.xattr_set(attr, b"y", 0)?;
        d.xattr_get(attr)
    });
    let _ = upper::remove_tree(work, dir);
    let on_file = work.create_file(file, libc::O_WRONLY, 0o600).and_then(|_| {
        work.child_xattr_set(file, attr, b"y", 0)?;
        work.child_xattr_get(file, attr)
    });
    let _ = work.unlink(file);
    for value in [on_dir?, on_file?] {
        if value != b"y" {
            return Err(Errno::EIO);
        }
    }
    Ok(())
}

fn probe_rename_whiteout(work: &Dir, from: &OsStr, to: &OsStr) -> bool {
    let ok = work.create_file(from, libc::O_WRONLY, 0o600).is_ok()
        && work.rename(from, work, to, rename_flags::WHITEOUT).is_ok()
        && is_whiteout_device(work, from);
    let _ = work.unlink(from);
    let _ = work.unlink(to);
    ok
}

fn probe_rename_exchange(work: &Dir, a: &OsStr, b: &OsStr) -> bool {
    let ok = work.create_file(a, libc::O_WRONLY, 0o600).is_ok()
        && work.mkdir(b, 0o700).is_ok()
        && work.rename(a, work, b, rename_flags::EXCHANGE).is_ok()
        && work.stat_child(a).is_ok_and(|st| st.is_dir());
    let _ = upper::remove_tree(work, a);
    let _ = upper::remove_tree(work, b);
    ok
}

fn probe_reflink(work: &Dir, src: &OsStr, dst: &OsStr) -> bool {
    let ok = (|| -> Result<(), Errno> {
        let mut s = work.create_file(src, libc::O_RDWR, 0o600)?;
        s.write_all(&[0x5a; 4096]).map_err(crate::sys::io_errno)?;
        let d = work.create_file(dst, libc::O_WRONLY, 0o600)?;
        file::clone_file(&d, &s)
    })()
    .is_ok();
    let _ = work.unlink(src);
    let _ = work.unlink(dst);
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probed() -> (tempfile::TempDir, Features) {
        let t = tempfile::tempdir().unwrap();
        let work = Dir::open_root(t.path()).unwrap();
        let mut n = 0;
        let features = Features::probe(&work, || {
            n += 1;
            OsString::from(format!("#probe.{n}"))
        });
        (t, features)
    }

    #[test]
    fn the_probe_leaves_nothing_behind_and_answers_for_plain_files() {
        let (t, f) = probed();
        assert_eq!(std::fs::read_dir(t.path()).unwrap().count(), 0);
        // Every filesystem the tests run on has these.
        assert!(f.rename_exchange && f.tmpfile, "{}", f.describe());
        assert_eq!(f.check(MarkerFormat::Aufs), Ok(()));
    }

    #[test]
    fn a_filesystem_without_whiteout_devices_gets_aufs_markers() {
        let (_t, mut f) = probed();
        f.device_whiteout = Err(Errno::EPERM);
        assert_eq!(f.best_format(), MarkerFormat::Aufs);
        let why = f.check(MarkerFormat::Kernel).unwrap_err();
        assert!(why.contains("char 0/0") && why.contains("EPERM"), "{why}");
        f.device_whiteout = Ok(());
        f.trusted_xattr = Err(Errno::EPERM);
        f.user_xattr = Ok(());
        assert_eq!(f.best_format(), MarkerFormat::UserXattr);
        f.rename_exchange = false;
        assert_eq!(f.best_format(), MarkerFormat::Aufs);
    }
}
