//! A layer tarball unpacked into a directory, as hostile input: every entry is resolved
//! beneath the layer's root descriptor, one component at a time, never through a symlink;
//! absolute paths, `..`, hard links to anything but an earlier entry of the same layer,
//! overlay xattrs and duplicate names are refused, each with an error naming the entry.
//! Deletions (`.wh.NAME`) and opaque directories (`.wh..wh..opq`) are written in the
//! store's marker format.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;

use crate::fs::marker;
use crate::fs::upper::MarkerFormat;
use crate::sys::{self, Dir, Errno, SetTime};

/// Why a layer could not be unpacked.
#[derive(Debug)]
pub enum UnpackError {
    /// An entry the layer must not hold, or that cannot be written: its path (escaped to
    /// one line) and what is wrong.
    Entry(String, String),
    /// The archive itself cannot be read (truncated, a bad header, bad compression).
    Archive(io::Error),
}

impl std::fmt::Display for UnpackError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UnpackError::Entry(path, why) => write!(f, "entry '{path}': {why}"),
            UnpackError::Archive(e) => write!(f, "the tar stream is broken: {e}"),
        }
    }
}

/// What an unpacked layer holds.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Unpacked {
    /// Entries written (markers included).
    pub entries: u64,
    /// Bytes of file data written.
    pub bytes: u64,
    /// Owners that could not be kept (not root): the objects keep the importer's.
    pub owners_dropped: u64,
    /// Xattrs the filesystem refused (`security.selinux` where there is no SELinux, ...).
    pub xattrs_dropped: u64,
}

/// What an earlier entry put at a path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Seen {
    /// A directory entry.
    Dir,
    /// A directory made because an entry below it came first.
    ImplicitDir,
    /// A non-directory a hard link may point at.
    File,
    /// A whiteout: the name is deleted in this layer.
    Whiteout,
}

/// Owner, mode, time and xattrs of an entry, applied once it is written (for directories:
/// at the end, deepest first, so a read-only directory can still be filled).
#[derive(Clone, Debug, Default)]
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: (i64, i64),
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Unpacks the tar stream `tar` into the empty directory `root`, writing markers in
/// `format`; `free` is how many bytes it may write at most (the filesystem's free space).
pub fn unpack(
    tar: impl Read,
    root: &Dir,
    format: MarkerFormat,
    free: u64,
) -> Result<Unpacked, UnpackError> {
    let mut u = Unpacker {
        root,
        format,
        free,
        seen: HashMap::new(),
        dirs: Vec::new(),
        done: Unpacked::default(),
        may_chown: sys::process::euid() == 0,
    };
    let mut archive = tar::Archive::new(tar);
    for entry in archive.entries().map_err(UnpackError::Archive)? {
        let entry = entry.map_err(UnpackError::Archive)?;
        u.entry(entry)?;
    }
    u.finish_dirs()?;
    Ok(u.done)
}

struct Unpacker<'a> {
    root: &'a Dir,
    format: MarkerFormat,
    free: u64,
    seen: HashMap<Vec<u8>, Seen>,
    dirs: Vec<(Vec<u8>, Meta)>,
    done: Unpacked,
    may_chown: bool,
}

/// The entry's path as one printable line.
pub(super) fn shown(path: &[u8]) -> String {
    String::from_utf8_lossy(path).escape_debug().to_string()
}

/// `path` as components: `.` and empty ones dropped; `None` for an absolute path or one
/// with `..`, which no layer entry may have.
pub(super) fn components(path: &[u8]) -> Result<Vec<&[u8]>, &'static str> {
    if path.first() == Some(&b'/') {
        return Err("an absolute path: layer entries are relative to the layer's root");
    }
    let mut out = Vec::new();
    for c in path.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err("a '..' in its path would leave the layer"),
            c => out.push(c),
        }
    }
    Ok(out)
}

fn join(comps: &[&[u8]]) -> Vec<u8> {
    comps.join(&b'/')
}

/// Seconds and nanoseconds of a PAX time (`1700000000.25`, `-1.5`).
pub(super) fn pax_time(v: &str) -> Option<(i64, i64)> {
    let (neg, v) = match v.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, v),
    };
    let (secs, frac) = v.split_once('.').unwrap_or((v, ""));
    let secs: i64 = secs.parse().ok()?;
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let digits: String = frac.chars().chain(std::iter::repeat('0')).take(9).collect();
    let nanos: i64 = digits.parse().ok()?;
    Some(match (neg, nanos) {
        (false, n) => (secs, n),
        (true, 0) => (-secs, 0),
        (true, n) => (-secs - 1, 1_000_000_000 - n),
    })
}

impl Unpacker<'_> {
    fn entry<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<(), UnpackError> {
        let raw_path = entry.path_bytes().into_owned();
        let fail = |why: String| UnpackError::Entry(shown(&raw_path), why);
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() {
            return Ok(());
        }
        let comps = components(&raw_path).map_err(|why| fail(why.into()))?;
        let meta = self.meta(&mut entry).map_err(&fail)?;
        let Some((name, parents)) = comps.split_last() else {
            // The layer's root (`./`): its attributes, applied at the end.
            if !kind.is_dir() {
                return Err(fail("the layer's root must be a directory".into()));
            }
            self.dirs.push((Vec::new(), meta));
            return Ok(());
        };
        let name = *name;
        let parent = self.parent(parents).map_err(&fail)?;
        let path = join(&comps);
        // Markers: a deletion, an opaque directory, AUFS bookkeeping.
        if name == marker::OPAQUE_FILE {
            self.opaque(&parent, parents).map_err(&fail)?;
            return Ok(());
        }
        if let marker::NameRole::Whiteout(target) = marker::name_role(OsStr::from_bytes(name)) {
            if !kind.is_file() {
                return Err(fail("a whiteout must be a regular file".into()));
            }
            let target = target.as_bytes();
            let mut target_path = join(parents);
            if !target_path.is_empty() {
                target_path.push(b'/');
            }
            target_path.extend_from_slice(target);
            self.claim(&target_path, Seen::Whiteout).map_err(&fail)?;
            self.whiteout(&parent, name, target).map_err(&fail)?;
            self.done.entries += 1;
            return Ok(());
        }
        if name.starts_with(b".wh..wh.") {
            // AUFS's own bookkeeping (`.wh..wh.plnk`, ...): not part of the image.
            return Ok(());
        }
        if name.starts_with(marker::WHITEOUT_PREFIX) {
            // `.wh.`, `.wh..`, `.wh...`: a whiteout of no name, of `.` or of `..`.
            return Err(fail("a whiteout of a name no entry can have".into()));
        }
        let os = OsStr::from_bytes(name);
        let errno = |what: &str, e: Errno| fail(format!("cannot {what}: {e}"));
        use tar::EntryType as T;
        match kind {
            T::Directory => {
                match self.seen.get(&path) {
                    Some(Seen::ImplicitDir) => {}
                    Some(_) => return Err(fail("a second entry of this name in the layer".into())),
                    None => match parent.mkdir(os, 0o700) {
                        Ok(()) => {}
                        Err(e) => return Err(errno("make the directory", e)),
                    },
                }
                self.seen.insert(path.clone(), Seen::Dir);
                self.dirs.push((path, meta));
                self.done.entries += 1;
                return Ok(());
            }
            T::Regular | T::Continuous | T::GNUSparse => {
                self.claim(&path, Seen::File).map_err(&fail)?;
                let size = entry.size();
                if size > self.free {
                    return Err(fail(format!(
                        "{size} bytes, more than the {} bytes free in the store",
                        self.free
                    )));
                }
                let mut file = parent
                    .create_file(os, libc::O_WRONLY, 0o600)
                    .map_err(|e| errno("create the file", e))?;
                let written = io::copy(&mut entry, &mut file).map_err(|e| match e.kind() {
                    io::ErrorKind::UnexpectedEof => fail("the archive ends inside its data".into()),
                    _ => fail(format!("cannot write its data: {e}")),
                })?;
                if written != size {
                    return Err(fail("the archive ends inside its data".into()));
                }
                self.free = self.free.saturating_sub(written);
                self.done.bytes += written;
                self.apply_to_file(&file, &meta).map_err(&fail)?;
            }
            T::Link => {
                self.claim(&path, Seen::File).map_err(&fail)?;
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| fail("a hard link without a target".into()))?
                    .into_owned();
                let tcomps = components(&target).map_err(|why| {
                    fail(format!(
                        "its hard link target '{}' is {why}",
                        shown(&target)
                    ))
                })?;
                let Some((tname, tparents)) = tcomps.split_last() else {
                    return Err(fail("a hard link to the layer's root".into()));
                };
                if self.seen.get(&join(&tcomps)) != Some(&Seen::File) {
                    return Err(fail(format!(
                        "a hard link to '{}', which is not a file earlier in this layer",
                        shown(&target)
                    )));
                }
                let tdir = self.existing(tparents).map_err(&fail)?;
                tdir.link(OsStr::from_bytes(tname), &parent, os)
                    .map_err(|e| errno("make the hard link", e))?;
                // A hard link shares the target's inode: its header's attributes are not
                // applied (they are the target's).
            }
            T::Symlink => {
                self.claim(&path, Seen::File).map_err(&fail)?;
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| fail("a symlink without a target".into()))?
                    .into_owned();
                parent
                    .symlink(os, &target)
                    .map_err(|e| errno("make the symlink", e))?;
                self.apply_to_child(&parent, os, &meta, false)
                    .map_err(&fail)?;
            }
            T::Char | T::Block | T::Fifo => {
                self.claim(&path, Seen::File).map_err(&fail)?;
                let (ty, rdev) = match kind {
                    T::Fifo => (libc::S_IFIFO, 0),
                    _ => {
                        let header = entry.header();
                        let major = header.device_major().ok().flatten().unwrap_or(0);
                        let minor = header.device_minor().ok().flatten().unwrap_or(0);
                        let ty = if kind == T::Char {
                            libc::S_IFCHR
                        } else {
                            libc::S_IFBLK
                        };
                        (ty, libc::makedev(major, minor))
                    }
                };
                match parent.mknod(os, ty | 0o600, rdev) {
                    Ok(()) => {}
                    Err(Errno::EPERM) if ty != libc::S_IFIFO => {
                        return Err(fail(
                            "a device node, which only root can make: import as root".into(),
                        ))
                    }
                    Err(e) => return Err(errno("make the node", e)),
                }
                self.apply_to_child(&parent, os, &meta, true)
                    .map_err(&fail)?;
            }
            other => {
                return Err(fail(format!(
                    "an entry of tar type '{}', which a layer cannot hold",
                    other.as_byte() as char
                )))
            }
        }
        self.done.entries += 1;
        Ok(())
    }

    /// The attributes of `entry`, PAX records included.
    fn meta<R: Read>(&self, entry: &mut tar::Entry<'_, R>) -> Result<Meta, String> {
        let h = entry.header();
        let bad = |what: &str, e: io::Error| format!("its {what} cannot be read: {e}");
        let mut meta = Meta {
            mode: h.mode().map_err(|e| bad("mode", e))? & 0o7777,
            uid: u32::try_from(h.uid().map_err(|e| bad("owner", e))?)
                .map_err(|_| "its owner is past 2^32".to_string())?,
            gid: u32::try_from(h.gid().map_err(|e| bad("group", e))?)
                .map_err(|_| "its group is past 2^32".to_string())?,
            mtime: (h.mtime().map_err(|e| bad("time", e))? as i64, 0),
            xattrs: Vec::new(),
        };
        let Some(pax) = entry.pax_extensions().map_err(|e| bad("PAX records", e))? else {
            return Ok(meta);
        };
        for ext in pax {
            let ext = ext.map_err(|e| bad("PAX records", e))?;
            let key = ext.key_bytes();
            if key == b"mtime" {
                let v = ext.value().unwrap_or("");
                meta.mtime =
                    pax_time(v).ok_or_else(|| format!("its PAX mtime '{v}' is not a time"))?;
            } else if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                if marker::is_private_xattr(name) {
                    return Err(format!(
                        "it carries the overlay xattr '{}', which only the overlay's own \
                         markers may set",
                        shown(name)
                    ));
                }
                meta.xattrs
                    .push((name.to_vec(), ext.value_bytes().to_vec()));
            }
        }
        Ok(meta)
    }

    /// Notes that `path` is taken by an entry of kind `what`; a second entry of the same
    /// name is refused (a tar would let the later one win, which tools read differently).
    fn claim(&mut self, path: &[u8], what: Seen) -> Result<(), String> {
        match self.seen.insert(path.to_vec(), what) {
            None => Ok(()),
            Some(Seen::Whiteout) | Some(_) if what == Seen::Whiteout => Err(format!(
                "it deletes '{}', which this layer also holds (or deletes twice)",
                shown(path)
            )),
            Some(Seen::Whiteout) => Err("this layer also deletes this name (.wh.)".into()),
            Some(_) => Err("a second entry of this name in the layer".into()),
        }
    }

    /// The directory `comps` beneath the root, made (mode 0755, as tar does) where an
    /// entry comes before its directory's own entry.
    fn parent(&mut self, comps: &[&[u8]]) -> Result<Dir, String> {
        let mut dir = self
            .root
            .open_beneath(std::path::Path::new(""))
            .map_err(|e| format!("cannot open the layer's root: {e}"))?;
        for (i, c) in comps.iter().enumerate() {
            let os = OsStr::from_bytes(c);
            let here = join(&comps[..=i]);
            match self.seen.get(&here) {
                Some(Seen::Dir) | Some(Seen::ImplicitDir) => {}
                Some(Seen::Whiteout) => {
                    return Err(format!(
                        "its parent '{}' is deleted in this layer",
                        shown(&here)
                    ))
                }
                Some(Seen::File) => {
                    return Err(format!(
                        "its parent '{}' is not a directory (a symlink or a file): nothing \
                         is written through it",
                        shown(&here)
                    ))
                }
                None => {
                    dir.mkdir(os, 0o755)
                        .map_err(|e| format!("cannot make its parent '{}': {e}", shown(&here)))?;
                    self.seen.insert(here.clone(), Seen::ImplicitDir);
                    // No owner of its own in the archive: the importer's (root's, as root).
                    let meta = Meta {
                        mode: 0o755,
                        uid: sys::process::euid(),
                        gid: sys::process::egid(),
                        ..Meta::default()
                    };
                    self.dirs.push((here.clone(), meta));
                }
            }
            dir = dir
                .child_dir(os)
                .map_err(|e| format!("cannot open its parent '{}': {e}", shown(&here)))?;
        }
        Ok(dir)
    }

    /// The directory `comps`, which must already be in the layer.
    fn existing(&self, comps: &[&[u8]]) -> Result<Dir, String> {
        let rel = std::path::PathBuf::from(OsStr::from_bytes(&join(comps)));
        self.root
            .open_beneath(&rel)
            .map_err(|e| format!("cannot open '{}': {e}", rel.display()))
    }

    fn opaque(&mut self, dir: &Dir, comps: &[&[u8]]) -> Result<(), String> {
        let here = join(comps);
        if here.is_empty() {
            return Err("the layer's root cannot be opaque".into());
        }
        let marker_name = OsStr::from_bytes(marker::OPAQUE_FILE);
        let res = match self.format.opaque_xattr() {
            Some(attr) => dir.xattr_set(OsStr::new(attr), b"y", 0),
            None => dir
                .create_file(marker_name, libc::O_WRONLY, 0o644)
                .map(drop),
        };
        res.map_err(|e| format!("cannot mark '{}' opaque: {e}", shown(&here)))?;
        self.done.entries += 1;
        Ok(())
    }

    fn whiteout(&mut self, dir: &Dir, name: &[u8], target: &[u8]) -> Result<(), String> {
        let res = match self.format {
            MarkerFormat::Aufs => dir
                .create_file(OsStr::from_bytes(name), libc::O_WRONLY, 0o644)
                .map(drop),
            _ => dir.mknod(OsStr::from_bytes(target), libc::S_IFCHR, 0),
        };
        res.map_err(|e| format!("cannot write the whiteout: {e}"))
    }

    fn apply_to_file(&mut self, file: &File, meta: &Meta) -> Result<(), String> {
        use std::os::unix::fs::PermissionsExt;
        self.set_owner(meta, |u, g| {
            std::os::unix::fs::fchown(file, Some(u), Some(g))
                .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
        })?;
        file.set_permissions(std::fs::Permissions::from_mode(meta.mode))
            .map_err(|e| format!("cannot set its mode: {e}"))?;
        for (name, value) in &meta.xattrs {
            if let Err(e) = sys::file::xattr_set(file, OsStr::from_bytes(name), value) {
                self.xattr_refused(name, e)?;
            }
        }
        let t = std::fs::FileTimes::new()
            .set_accessed(system_time(meta.mtime))
            .set_modified(system_time(meta.mtime));
        file.set_times(t)
            .map_err(|e| format!("cannot set its times: {e}"))
    }

    fn apply_to_child(
        &mut self,
        dir: &Dir,
        name: &OsStr,
        meta: &Meta,
        chmod: bool,
    ) -> Result<(), String> {
        self.set_owner(meta, |u, g| dir.chown_child(name, Some(u), Some(g)))?;
        if chmod {
            dir.chmod_child(name, meta.mode)
                .map_err(|e| format!("cannot set its mode: {e}"))?;
        }
        for (attr, value) in &meta.xattrs {
            if let Err(e) = dir.child_xattr_set(name, OsStr::from_bytes(attr), value, 0) {
                self.xattr_refused(attr, e)?;
            }
        }
        let t = SetTime::At(meta.mtime.0, meta.mtime.1);
        dir.set_times_child(name, t, t)
            .map_err(|e| format!("cannot set its times: {e}"))
    }

    /// Gives an object the owner `meta` says through `chown`, where this process may give
    /// files away; elsewhere, and for ids its user namespace does not map (`EINVAL`),
    /// counts it as keeping the importer's (when that differs).
    fn set_owner(
        &mut self,
        meta: &Meta,
        chown: impl FnOnce(u32, u32) -> Result<(), Errno>,
    ) -> Result<(), String> {
        if self.may_chown {
            match chown(meta.uid, meta.gid) {
                Ok(()) => return Ok(()),
                Err(Errno::EINVAL) => {}
                Err(e) => return Err(format!("cannot set its owner: {e}")),
            }
        }
        if (meta.uid, meta.gid) != (sys::process::euid(), sys::process::egid()) {
            self.done.owners_dropped += 1;
        }
        Ok(())
    }

    /// An xattr the filesystem refuses: counted where it cannot hold it at all (or not for
    /// this process), an error otherwise.
    fn xattr_refused(&mut self, name: &[u8], e: Errno) -> Result<(), String> {
        match e {
            Errno::EOPNOTSUPP | Errno::EPERM | Errno::EACCES => {
                self.done.xattrs_dropped += 1;
                log::debug!("xattr '{}' not kept: {e}", shown(name));
                Ok(())
            }
            e => Err(format!("cannot set its xattr '{}': {e}", shown(name))),
        }
    }

    /// Owners, modes, xattrs and times of the directories, deepest first: a directory's
    /// time is set after everything in it is written.
    fn finish_dirs(&mut self) -> Result<(), UnpackError> {
        let mut dirs = std::mem::take(&mut self.dirs);
        dirs.sort_by(|a, b| b.0.cmp(&a.0));
        for (path, meta) in dirs {
            let fail = |why: String| UnpackError::Entry(shown(&path), why);
            let rel = std::path::PathBuf::from(OsStr::from_bytes(&path));
            let dir = self
                .root
                .open_beneath(&rel)
                .map_err(|e| fail(format!("cannot open it: {e}")))?;
            self.set_owner(&meta, |u, g| dir.chown(Some(u), Some(g)))
                .map_err(fail)?;
            dir.chmod(meta.mode)
                .map_err(|e| fail(format!("cannot set its mode: {e}")))?;
            for (name, value) in &meta.xattrs {
                if let Err(e) = dir.xattr_set(OsStr::from_bytes(name), value, 0) {
                    self.xattr_refused(name, e).map_err(fail)?;
                }
            }
            let t = SetTime::At(meta.mtime.0, meta.mtime.1);
            dir.set_times(t, t)
                .map_err(|e| fail(format!("cannot set its times: {e}")))?;
        }
        Ok(())
    }
}

fn system_time((secs, nanos): (i64, i64)) -> std::time::SystemTime {
    use std::time::{Duration, UNIX_EPOCH};
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nanos as u32)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) + Duration::from_nanos(nanos as u64)
    }
}
