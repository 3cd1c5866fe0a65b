//! The whiteout and opaque codec: which names, devices and xattrs are overlay markers.
//!
//! Three whiteout formats are read (DESIGN.md §3): a character device 0/0 (the kernel's), a
//! regular file `.wh.NAME` (AUFS / OCI layers), and a zero-size regular file carrying an
//! `overlay.whiteout` xattr inside a directory whose `overlay.opaque` is `x` (the kernel's
//! "xwhiteout"). Opaque directories are marked by an `overlay.opaque=y` xattr in any of the
//! namespaces below, or by a regular file `.wh..wh..opq` inside them.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use crate::sys::{FileKind, Stat};

/// Prefix of an AUFS whiteout file.
pub const WHITEOUT_PREFIX: &[u8] = b".wh.";
/// Name of the AUFS opaque-directory marker file.
pub const OPAQUE_FILE: &[u8] = b".wh..wh..opq";
/// Prefix of AUFS bookkeeping names (`.wh..wh.plnk`, `.wh..wh..opq`, ...).
const AUFS_META_PREFIX: &[u8] = b".wh..wh.";

/// Xattrs that mark a directory opaque (value `y`) or as holding xwhiteouts (value `x`).
pub const OPAQUE_XATTRS: [&str; 3] = [
    "trusted.overlay.opaque",
    "user.overlay.opaque",
    "user.fuseoverlayfs.opaque",
];
/// Xattrs that make a zero-size regular file a whiteout (in an `x`-marked directory).
pub const WHITEOUT_XATTRS: [&str; 2] = ["trusted.overlay.whiteout", "user.overlay.whiteout"];

/// Xattrs recording the lower object a copied-up object came from (ours: as root, else).
pub const ORIGIN_XATTRS: [&str; 2] = ["trusted.overlayfuse.origin", "user.overlayfuse.origin"];

/// Xattrs on a hard-link index entry: the merged link count of its lower hard-link group
/// minus the entry's own link count (the kernel's `overlay.nlink` `U+N`), decimal.
pub const NLINK_XATTRS: [&str; 2] = ["trusted.overlayfuse.nlink", "user.overlayfuse.nlink"];

/// Xattrs marking an upper directory that may hold entries with an origin (as the kernel's
/// `overlay.impure`): a listing reads origins only in such directories.
pub const IMPURE_XATTRS: [&str; 2] = ["trusted.overlayfuse.impure", "user.overlayfuse.impure"];

/// Xattr namespaces owned by overlay filesystems: never listed, read or set through the mount.
const PRIVATE_XATTR_PREFIXES: [&[u8]; 5] = [
    b"trusted.overlay.",
    b"user.overlay.",
    b"user.fuseoverlayfs.",
    b"user.overlayfuse.",
    b"trusted.overlayfuse.",
];

/// What a directory entry's name says about it, before its type is known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameRole<'a> {
    /// An ordinary name.
    Plain,
    /// `.wh.TARGET`: a whiteout of `TARGET` if the entry is a regular file.
    Whiteout(&'a OsStr),
    /// `.wh..wh..opq` or other AUFS bookkeeping: hidden if the entry is a regular file.
    AufsMeta,
}

impl NameRole<'_> {
    /// True for the opaque marker file name.
    pub fn is_opaque_file(name: &OsStr) -> bool {
        name.as_bytes() == OPAQUE_FILE
    }
}

/// Classifies a name. `.wh.`, `.wh..` and `.wh...` would white out the empty name, `.` or
/// `..`: they are never honoured and stay ordinary names.
pub fn name_role(name: &OsStr) -> NameRole<'_> {
    let bytes = name.as_bytes();
    if bytes.starts_with(AUFS_META_PREFIX) {
        return NameRole::AufsMeta;
    }
    match bytes.strip_prefix(WHITEOUT_PREFIX) {
        Some(target) if !target.is_empty() && target != b"." && target != b".." => {
            NameRole::Whiteout(OsStr::from_bytes(target))
        }
        _ => NameRole::Plain,
    }
}

/// True when `st` is a kernel-format whiteout: a character device numbered 0/0.
pub fn is_device_whiteout(st: &Stat) -> bool {
    st.kind() == Some(FileKind::CharDevice) && st.rdev == 0
}

/// True when `st` could be an xwhiteout (its xattr still has to be checked).
pub fn may_be_xwhiteout(st: &Stat) -> bool {
    st.kind() == Some(FileKind::Regular) && st.size == 0
}

/// True for an xattr name the overlay owns.
pub fn is_private_xattr(name: &[u8]) -> bool {
    PRIVATE_XATTR_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// What an `overlay.opaque`-style xattr value means.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DirMarks {
    /// The directory hides everything below it (`y`, or the `.wh..wh..opq` file).
    pub opaque: bool,
    /// The directory may hold xattr whiteouts (`x`).
    pub xwhiteouts: bool,
}

impl DirMarks {
    /// Folds in one opaque xattr value.
    pub fn add_xattr_value(&mut self, value: &[u8]) {
        match value {
            b"y" => self.opaque = true,
            b"x" => self.xwhiteouts = true,
            _ => {}
        }
    }
}

/// Filters a kernel xattr name list (NUL-separated), dropping the overlay's private names.
pub fn visible_xattr_list(list: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(list.len());
    for name in list.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        if !is_private_xattr(name) {
            out.extend_from_slice(name);
            out.push(0);
        }
    }
    out
}

/// True if the NUL-separated list names any of `wanted`.
pub fn list_has_any(list: &[u8], wanted: &[&str]) -> bool {
    list.split(|b| *b == 0)
        .any(|n| wanted.iter().any(|w| w.as_bytes() == n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aufs_whiteout_names_name_their_target() {
        assert_eq!(
            name_role(OsStr::new(".wh.foo")),
            NameRole::Whiteout(OsStr::new("foo"))
        );
        assert_eq!(
            name_role(OsStr::new(".wh..hidden")),
            NameRole::Whiteout(OsStr::new(".hidden"))
        );
        assert_eq!(name_role(OsStr::new("foo")), NameRole::Plain);
        assert_eq!(name_role(OsStr::new("x.wh.foo")), NameRole::Plain);
    }

    #[test]
    fn whiteouts_of_dot_names_are_never_honoured() {
        for name in [".wh.", ".wh..", ".wh..."] {
            assert_eq!(name_role(OsStr::new(name)), NameRole::Plain, "{name}");
        }
    }

    #[test]
    fn aufs_bookkeeping_names_are_meta() {
        assert_eq!(name_role(OsStr::new(".wh..wh..opq")), NameRole::AufsMeta);
        assert_eq!(name_role(OsStr::new(".wh..wh.plnk")), NameRole::AufsMeta);
        assert!(NameRole::is_opaque_file(OsStr::new(".wh..wh..opq")));
    }

    #[test]
    fn private_xattrs_are_filtered_from_lists() {
        let list = b"user.a\0trusted.overlay.opaque\0user.overlay.x\0user.fuseoverlayfs.o\0security.selinux\0";
        assert_eq!(
            visible_xattr_list(list),
            b"user.a\0security.selinux\0".to_vec()
        );
        assert!(list_has_any(list, &OPAQUE_XATTRS));
        assert!(!list_has_any(b"user.a\0", &OPAQUE_XATTRS));
    }

    #[test]
    fn opaque_values_y_and_x_mean_different_things() {
        let mut m = DirMarks::default();
        m.add_xattr_value(b"x");
        assert_eq!(
            m,
            DirMarks {
                opaque: false,
                xwhiteouts: true
            }
        );
        m.add_xattr_value(b"y");
        assert!(m.opaque);
        let mut n = DirMarks::default();
        n.add_xattr_value(b"n");
        assert_eq!(n, DirMarks::default());
    }
}
