//! The writable upper layer's bookkeeping: the work dir where objects are built before they
//! are renamed into place, the marker format written, origin records, and the hard-link
//! index.
//!
//! Layout of the work dir the user gives: `work/` holds objects under construction (emptied
//! at every mount: anything there is a leftover of a crash and was never visible) and
//! `index/` holds one hard link per copied-up lower hard-link group, so every alias of a
//! lower hard link keeps showing one object after one alias was copied up.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use dashmap::DashMap;
use parking_lot::Mutex;

use super::layer::{self, aufs_whiteout_name};
use super::marker;
use super::probe::Features;
use crate::sys::{Dir, Errno, Stat};

/// Names allowed in a work dir: ours, and the kernel overlay's (so a work dir once used by
/// the kernel overlay can be reused).
const WORK_DIR_NAMES: [&str; 4] = ["work", "index", "incompat", "volatile"];

/// How whiteouts and opaque directories are written in the upper layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MarkerFormat {
    /// The kernel overlay's: char device 0/0 whiteouts, `trusted.overlay.opaque=y`.
    Kernel,
    /// The kernel overlay's `userxattr` form: char device 0/0, `user.overlay.opaque=y`.
    UserXattr,
    /// The OCI/AUFS layer form: `.wh.NAME` files and a `.wh..wh..opq` file.
    Aufs,
}

impl MarkerFormat {
    /// The format for `-o markers=VALUE`, `None` for an unknown value.
    pub fn parse(value: &str) -> Option<Option<MarkerFormat>> {
        match value {
            "auto" => Some(None),
            "kernel" => Some(Some(MarkerFormat::Kernel)),
            "userxattr" => Some(Some(MarkerFormat::UserXattr)),
            "aufs" => Some(Some(MarkerFormat::Aufs)),
            _ => None,
        }
    }

    /// The option value naming this format.
    pub fn option_value(self) -> &'static str {
        match self {
            MarkerFormat::Kernel => "kernel",
            MarkerFormat::UserXattr => "userxattr",
            MarkerFormat::Aufs => "aufs",
        }
    }

    /// The xattr that marks a directory opaque, `None` where a marker file is used.
    pub fn opaque_xattr(self) -> Option<&'static str> {
        match self {
            MarkerFormat::Kernel => Some(marker::OPAQUE_XATTRS[0]),
            MarkerFormat::UserXattr => Some(marker::OPAQUE_XATTRS[1]),
            MarkerFormat::Aufs => None,
        }
    }
}

/// Why a work dir cannot serve.
#[derive(Debug, PartialEq, Eq)]
pub enum OpenError {
    /// The work dir itself: foreign content, or it cannot be opened or set up.
    WorkDir(String),
    /// The marker format asked for cannot be written on the upper filesystem.
    Format(String),
}

/// The upper layer's work area and write settings.
#[derive(Debug)]
pub struct Upper {
    /// `WORKDIR/work`: objects under construction.
    pub work: Dir,
    /// `WORKDIR/index`: copied-up lower hard links, by origin.
    pub index: Dir,
    /// The marker format written.
    pub format: MarkerFormat,
    /// What the upper filesystem was found to do at mount.
    pub features: Features,
    /// Whether copied-up data is fsynced before it is renamed into place.
    pub fsync: bool,
    /// The xattr holding owners and modes (`xattr_permissions=`): objects on disk keep the
    /// daemon's ids. Set by `Overlay::with_view`.
    pub owner_xattr: Option<&'static str>,
    /// The xattr recording a copied-up object's origin (`trusted.` as root: it can be set on
    /// every file type; `user.` otherwise).
    origin_attr: &'static str,
    /// The xattr marking a directory that may hold copied-up entries (same namespace).
    impure_attr: &'static str,
    /// The xattr holding an index entry's link-count difference (same namespace).
    nlink_attr: &'static str,
    /// Serialises the read-modify-write of link-count differences.
    nlink_lock: Mutex<()>,
    /// A directory could not be marked impure: every upper directory counts as impure.
    impure_unrecorded: AtomicBool,
    /// Origins that could not be recorded on disk (user xattrs on a symlink or device), by
    /// the upper object's `(dev, ino)`: kept for the mount's life.
    unrecorded: DashMap<(u64, u64), (u64, u64)>,
    next_temp: AtomicU64,
    /// The whiteout device in the work dir that whiteouts are hard links of, once made.
    shared_whiteout: Mutex<Option<OsString>>,
}

impl Upper {
    /// Opens the work dir `workdir`: refuses foreign content, creates `work/` and `index/`,
    /// empties `work/` of a crashed run's leftovers, and probes the filesystem. `format`
    /// `None` takes the most native format the filesystem can hold; one it cannot hold is
    /// refused.
    pub fn open(
        workdir: &Path,
        format: Option<MarkerFormat>,
        fsync: bool,
    ) -> Result<Upper, OpenError> {
        let root = Dir::open_root(workdir)
            .map_err(|e| OpenError::WorkDir(format!("cannot open it: {e}")))?;
        Upper::open_dir(root, format, fsync)
    }

    /// As [`Upper::open`], with the work dir opened as `root` (on the same mount as the
    /// upper dir: renames go between them).
    pub fn open_dir(
        root: Dir,
        format: Option<MarkerFormat>,
        fsync: bool,
    ) -> Result<Upper, OpenError> {
        Upper::open_work_dir(root)
            .map_err(OpenError::WorkDir)
            .and_then(|(work, index)| Upper::with_format(work, index, format, fsync))
    }

    /// Checks work dir `root` and returns its `work/` and `index/` dirs, `work/` emptied.
    fn open_work_dir(root: Dir) -> Result<(Dir, Dir), String> {
        let entries = root
            .entries(true)
            .map_err(|e| format!("cannot list it: {e}"))?;
        for e in entries {
            let name = e.name.to_string_lossy();
            if name != "." && name != ".." && !WORK_DIR_NAMES.contains(&name.as_ref()) {
                return Err(format!(
                    "it holds '{name}', which is not ours: give an empty directory"
                ));
            }
        }
        let sub = |name: &str| -> Result<Dir, String> {
            match root.mkdir(OsStr::new(name), 0o700) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(format!("cannot create '{name}' in it: {e}")),
            }
            let dir = root
                .child_dir(OsStr::new(name))
                .map_err(|e| format!("cannot open '{name}' in it: {e}"))?;
            // The kernel overlay leaves these with mode 0.
            dir.chmod(0o700)
                .map_err(|e| format!("cannot use '{name}' in it: {e}"))?;
            Ok(dir)
        };
        let work = sub("work")?;
        let index = sub("index")?;
        remove_contents(&work).map_err(|e| format!("cannot clean its 'work' dir: {e}"))?;
        Ok((work, index))
    }

    /// Probes the filesystem of `work` and settles the format (see [`Upper::open`]).
    fn with_format(
        work: Dir,
        index: Dir,
        format: Option<MarkerFormat>,
        fsync: bool,
    ) -> Result<Upper, OpenError> {
        let next_temp = AtomicU64::new(1);
        let features = Features::probe(&work, || temp_name(&next_temp));
        let format = match format {
            None => features.best_format(),
            Some(f) => match features.check(f) {
                Ok(()) => f,
                Err(why) => {
                    return Err(OpenError::Format(format!(
                        "markers={} cannot be written on the upper filesystem: {why}; \
                         give markers={} or markers=auto",
                        f.option_value(),
                        features.best_format().option_value()
                    )))
                }
            },
        };
        // `trusted.` xattrs need CAP_SYS_ADMIN in the initial user namespace: uid 0 inside a
        // user namespace (rootless podman) gets EPERM for them.
        let root_user = features.trusted_xattr.is_ok();
        Ok(Upper {
            work,
            index,
            format,
            features,
            fsync,
            owner_xattr: None,
            origin_attr: marker::ORIGIN_XATTRS[usize::from(!root_user)],
            impure_attr: marker::IMPURE_XATTRS[usize::from(!root_user)],
            nlink_attr: marker::NLINK_XATTRS[usize::from(!root_user)],
            nlink_lock: Mutex::new(()),
            impure_unrecorded: AtomicBool::new(false),
            unrecorded: DashMap::new(),
            next_temp,
            shared_whiteout: Mutex::new(None),
        })
    }

    /// A fresh name for an object under construction in `work/`.
    pub fn temp_name(&self) -> OsString {
        temp_name(&self.next_temp)
    }

    /// Writes a whiteout for `name` in `dir` (which holds nothing by that name).
    pub fn write_whiteout(&self, dir: &Dir, name: &OsStr) -> Result<(), Errno> {
        match self.format {
            MarkerFormat::Aufs => self.write_aufs_whiteout(dir, name),
            _ => self.link_device_whiteout(dir, name),
        }
    }

    /// Makes `name` in `dir` a whiteout device by linking one shared whiteout of the work dir,
    /// as the kernel overlay does: no inode to allocate per deletion. A new shared one is made
    /// when the link count is full; where linking fails, a device of its own.
    fn link_device_whiteout(&self, dir: &Dir, name: &OsStr) -> Result<(), Errno> {
        let mut shared = self.shared_whiteout.lock();
        loop {
            let source = match &*shared {
                Some(source) => source.clone(),
                None => {
                    let source = self.temp_name();
                    self.work.mknod(&source, libc::S_IFCHR, 0)?;
                    *shared = Some(source.clone());
                    source
                }
            };
            match self.work.link(&source, dir, name) {
                Ok(()) => return Ok(()),
                Err(Errno::EMLINK) => {
                    let _ = self.work.unlink(&source);
                    *shared = None;
                }
                Err(Errno::EEXIST) => return Err(Errno::EEXIST),
                Err(e) => {
                    log::debug!("cannot link the shared whiteout ({e}): making one");
                    return dir.mknod(name, libc::S_IFCHR, 0);
                }
            }
        }
    }

    /// Writes `.wh.NAME` in `dir`; one already there (left by a crash) is fine.
    pub fn write_aufs_whiteout(&self, dir: &Dir, name: &OsStr) -> Result<(), Errno> {
        let wh = aufs_whiteout_name(name);
        match dir.create_file(&wh, libc::O_WRONLY, 0o600) {
            Ok(_) => Ok(()),
            Err(Errno::EEXIST) if layer::is_regular(dir.stat_child(&wh))? => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Removes whatever whiteout of `name` `dir` holds, in any format.
    pub fn remove_whiteout(&self, dir: &Dir, name: &OsStr) -> Result<(), Errno> {
        match dir.stat_child(name) {
            Ok(st) if marker::is_device_whiteout(&st) => dir.unlink(name)?,
            Ok(_) | Err(Errno::ENOENT) => {}
            Err(e) => return Err(e),
        }
        self.remove_aufs_whiteout(dir, name)
    }

    /// Removes `.wh.NAME` from `dir` if it is there.
    pub fn remove_aufs_whiteout(&self, dir: &Dir, name: &OsStr) -> Result<(), Errno> {
        match dir.unlink(&aufs_whiteout_name(name)) {
            Ok(()) | Err(Errno::ENOENT) | Err(Errno::ENAMETOOLONG) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Marks the upper directory `dir` opaque.
    pub fn mark_opaque(&self, dir: &Dir) -> Result<(), Errno> {
        match self.format.opaque_xattr() {
            Some(x) => dir.xattr_set(OsStr::new(x), b"y", 0),
            None => {
                // The marker file is bookkeeping, not a change of the directory's times.
                let st = dir.stat()?;
                let file = OsStr::from_bytes(marker::OPAQUE_FILE);
                match dir.create_file(file, libc::O_WRONLY, 0o600) {
                    Ok(_) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(e),
                }
                super::copyup::restore_times(dir, &st);
                Ok(())
            }
        }
    }

    /// Records on the upper object `name` in `dir` (or on `dir` itself) that it came from the
    /// lower object `origin` (`(dev, ino)`), so it keeps that inode number. Where the xattr
    /// cannot be set (user xattrs on a symlink, rootless) the record lives in memory: the
    /// number then holds for this mount only.
    pub fn set_origin(&self, dir: &Dir, name: Option<&OsStr>, origin: (u64, u64)) {
        let value = encode_origin(origin.0, origin.1);
        let attr = OsStr::new(self.origin_attr);
        let r = match name {
            Some(n) => dir.child_xattr_set(n, attr, &value, 0),
            None => dir.xattr_set(attr, &value, 0),
        };
        if let Err(e) = r {
            log::debug!("origin of a copied-up object kept in memory: {e}");
            let st = match name {
                Some(n) => dir.stat_child(n),
                None => dir.stat(),
            };
            if let Ok(st) = st {
                self.unrecorded.insert((st.dev, st.ino), origin);
            }
        }
    }

    /// Marks upper directory `dir` as holding (or about to hold) an entry with an origin, so
    /// its listings give that entry its origin's number. Called before the entry arrives.
    pub fn mark_impure(&self, dir: &Dir) {
        if let Err(e) = dir.xattr_set(OsStr::new(self.impure_attr), b"y", 0) {
            if !self.impure_unrecorded.swap(true, Ordering::Relaxed) {
                log::warn!(
                    "cannot mark upper directories impure ({e}): every listing reads origins"
                );
            }
        }
    }

    /// Whether upper directory `dir` may hold entries with an origin.
    pub fn is_impure(&self, dir: &Dir) -> bool {
        self.impure_unrecorded.load(Ordering::Relaxed)
            || dir.xattr_get(OsStr::new(self.impure_attr)).is_ok()
    }

    /// The origin of the upper object `name` in `dir` (or of `dir`), whose own number is
    /// `own` (`(dev, ino)`), if it is a copy.
    pub fn origin(&self, dir: &Dir, name: Option<&OsStr>, own: (u64, u64)) -> Option<(u64, u64)> {
        if let Some(o) = self.unrecorded.get(&own) {
            return Some(*o);
        }
        let attr = OsStr::new(self.origin_attr);
        let value = match name {
            Some(n) => dir.child_xattr_get(n, attr),
            None => dir.xattr_get(attr),
        };
        decode_origin(&value.ok()?)
    }
}

impl Upper {
    /// The link-count difference recorded on the child `name` of `dir` (an index entry, or
    /// an upper alias of one: they share the inode), if any.
    pub fn nlink_diff(&self, dir: &Dir, name: &OsStr) -> Option<i64> {
        let value = dir
            .child_xattr_get(name, OsStr::new(self.nlink_attr))
            .ok()?;
        std::str::from_utf8(&value).ok()?.parse().ok()
    }

    /// Records `diff` on the child `name` of `dir`. Where it cannot be kept, links counts
    /// of the group show the upper's own.
    pub fn set_nlink_diff(&self, dir: &Dir, name: &OsStr, diff: i64) {
        let value = diff.to_string();
        let attr = OsStr::new(self.nlink_attr);
        if let Err(e) = dir.child_xattr_set(name, attr, value.as_bytes(), 0) {
            log::debug!("link count of a hard-link group not recorded: {e}");
        }
    }

    /// Adds `delta` to the link-count difference of index entry `key`: the merged group
    /// gained or lost a name that the entry's own count does not see (a lower alias
    /// whited out, or an alias linked from the index into the upper).
    pub fn add_nlink_diff(&self, key: &OsStr, delta: i64) {
        let _serial = self.nlink_lock.lock();
        if let Some(diff) = self.nlink_diff(&self.index, key) {
            self.set_nlink_diff(&self.index, key, diff + delta);
        }
    }

    /// The merged link count of a non-directory whose real status is `st`, found as the
    /// child `name` of `dir`: `via_index` when reached through its index entry. A recorded
    /// difference applies; an index entry without one (older mounts) counts its aliases.
    pub fn merged_nlink(&self, dir: &Dir, name: &OsStr, st: &Stat, via_index: bool) -> u64 {
        if st.nlink <= 1 && !via_index {
            return st.nlink;
        }
        match self.nlink_diff(dir, name) {
            Some(diff) => (st.nlink as i64).saturating_add(diff).max(1) as u64,
            None if via_index => st.nlink.saturating_sub(1).max(1),
            None => st.nlink,
        }
    }
}

/// The next name from `counter` for an object under construction in `work/`.
fn temp_name(counter: &AtomicU64) -> OsString {
    let n = counter.fetch_add(1, Ordering::Relaxed);
    OsString::from(format!("#{:x}.{n}", std::process::id()))
}

/// The index entry name of a lower hard-link group.
pub fn index_key(st: &Stat) -> OsString {
    index_key_of((st.dev, st.ino))
}

/// The index entry name of the lower hard-link group whose object is `(dev, ino)`.
pub fn index_key_of((dev, ino): (u64, u64)) -> OsString {
    OsString::from_vec(format!("{dev:x}-{ino:x}").into_bytes())
}

fn encode_origin(dev: u64, ino: u64) -> Vec<u8> {
    let mut v = dev.to_le_bytes().to_vec();
    v.extend_from_slice(&ino.to_le_bytes());
    v
}

fn decode_origin(value: &[u8]) -> Option<(u64, u64)> {
    if value.len() != 16 {
        return None;
    }
    let dev = u64::from_le_bytes(value[..8].try_into().ok()?);
    let ino = u64::from_le_bytes(value[8..].try_into().ok()?);
    Some((dev, ino))
}

/// Removes the child `name` of `dir` and everything under it.
pub fn remove_tree(dir: &Dir, name: &OsStr) -> Result<(), Errno> {
    match dir.unlink(name) {
        Ok(()) | Err(Errno::ENOENT) => return Ok(()),
        Err(Errno::EISDIR) => {}
        Err(e) => return Err(e),
    }
    let child = dir.child_dir(name)?;
    remove_contents(&child)?;
    match dir.rmdir(name) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Removes everything inside `dir`.
pub fn remove_contents(dir: &Dir) -> Result<(), Errno> {
    for e in dir.entries(true)? {
        if e.name == "." || e.name == ".." {
            continue;
        }
        remove_tree(dir, &e.name)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_round_trip_and_reject_garbage() {
        assert_eq!(decode_origin(&encode_origin(7, 99)), Some((7, 99)));
        assert_eq!(decode_origin(b"short"), None);
    }

    #[test]
    fn work_dirs_with_foreign_files_are_refused() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("precious"), "x").unwrap();
        let e = Upper::open(t.path(), Some(MarkerFormat::Aufs), false).unwrap_err();
        assert!(
            matches!(&e, OpenError::WorkDir(m) if m.contains("precious")),
            "{e:?}"
        );
    }

    #[test]
    fn leftovers_in_work_are_removed_at_open() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("work/#1.2/deep")).unwrap();
        std::fs::write(t.path().join("work/#1.3"), "partial").unwrap();
        Upper::open(t.path(), Some(MarkerFormat::Aufs), false).unwrap();
        assert_eq!(std::fs::read_dir(t.path().join("work")).unwrap().count(), 0);
        assert!(t.path().join("index").is_dir());
    }
}
