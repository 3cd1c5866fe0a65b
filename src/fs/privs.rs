//! Which setuid and setgid bits a change clears: the rules of the kernel's VFS (6.x), as the
//! kernel overlay applies them through its upper filesystem.
//!
//! The kernel's FUSE module asks a daemon to clear them, but with an older rule of its own: it
//! clears setgid only from group-executable files, where the VFS also clears it when the
//! writer is outside the file's group (a setgid file without group execute, whose bit would
//! otherwise let a stranger's data run with the group's rights). What the module still sends
//! says what happened: a request with no attribute at all (a write, fallocate or
//! copy_file_range by a caller who must lose a bit), a size (a truncate), an owner (a chown)
//! or a mode (a chmod, or its own old-rule clearing). [`cleared_bits`] gives the bits the VFS
//! rule clears for each, so the daemon's answer is the kernel overlay's.

use super::setattr::SetAttr;
use crate::sys::FileKind;

/// What the caller of a request holds that the request does not carry (its supplementary
/// groups and capabilities), asked only where a setuid or setgid bit is at stake.
pub trait Privileges {
    /// True when the caller holds `CAP_FSETID` over an object owned by `uid`:`gid`.
    fn fsetid(&self, uid: u32, gid: u32) -> bool;
    /// True when the caller is in group `gid` or holds `CAP_FSETID` over an object owned by
    /// `uid`:`gid` (the kernel's `in_group_or_capable`).
    fn in_group_or_capable(&self, uid: u32, gid: u32) -> bool;
    /// False where the caller's credentials cannot be read (a process of another pid
    /// namespace, `/proc` with `hidepid`): the other answers are then false.
    fn known(&self) -> bool;
}

/// An object as a change finds it: its type, permission bits and owner.
#[derive(Clone, Copy, Debug)]
pub struct Target {
    /// Its type.
    pub kind: FileKind,
    /// Its permission bits (with setuid, setgid and sticky).
    pub perm: u32,
    /// Its owner.
    pub uid: u32,
    /// Its group.
    pub gid: u32,
}

/// A change of a file's data: a write, truncate, fallocate or copy into it. The kernel's
/// `setattr_should_drop_suidgid`: nothing for a caller holding `CAP_FSETID` or for anything
/// but a regular file; else setuid, and setgid where the file is group-executable or the
/// caller is outside its group.
pub fn cleared_by_data_change(t: &Target, who: &dyn Privileges) -> u32 {
    let bits = t.perm & (libc::S_ISUID | libc::S_ISGID);
    if t.kind != FileKind::Regular || bits == 0 || who.fsetid(t.uid, t.gid) {
        return 0;
    }
    bits & (libc::S_ISUID | setgid_dropped(t, who))
}

/// The bits `set`, asked by `who`, clears on `t` beyond what it names: for a change of owner
/// of anything but a directory, setuid, and setgid as for a data change (decided on the old
/// group); for a change of mode, setgid where the caller is outside the group the object will
/// have (a chmod that the kernel already checked keeps what it asked for); for a request with
/// a size or with nothing, as for a data change.
pub fn cleared_bits(t: &Target, set: &SetAttr, who: &dyn Privileges) -> u32 {
    let bits = t.perm & (libc::S_ISUID | libc::S_ISGID);
    let asked = set
        .mode
        .map_or(bits, |m| m & (libc::S_ISUID | libc::S_ISGID));
    if asked == 0 {
        return 0;
    }
    if set.uid.is_some() || set.gid.is_some() {
        if t.kind == FileKind::Directory {
            return 0;
        }
        return asked & (libc::S_ISUID | setgid_dropped(t, who));
    }
    if set.mode.is_some() {
        // A mode the kernel already checked (a chmod) is kept where the caller cannot be
        // asked about; a data change by such a caller clears, as by an unprivileged one.
        let outside = who.known() && !who.in_group_or_capable(t.uid, t.gid);
        return if asked & libc::S_ISGID != 0 && outside {
            libc::S_ISGID
        } else {
            0
        };
    }
    let data = set.size.is_some() || set.atime.is_none() && set.mtime.is_none();
    if data {
        cleared_by_data_change(t, who)
    } else {
        0
    }
}

/// False where `set` can clear no bit whatever the object ([`cleared_bits`] is 0): a change
/// of times, or a chmod asking for no setgid.
pub fn may_clear(set: &SetAttr) -> bool {
    let owner = set.uid.is_some() || set.gid.is_some();
    let data =
        set.mode.is_none() && (set.size.is_some() || set.atime.is_none() && set.mtime.is_none());
    owner || data || set.mode.is_some_and(|m| m & libc::S_ISGID != 0)
}

/// `S_ISGID` where a data change or chown by `who` clears setgid on `t`: a group-executable
/// file, or a caller outside its group (the kernel's `setattr_should_drop_sgid`).
fn setgid_dropped(t: &Target, who: &dyn Privileges) -> u32 {
    if t.perm & libc::S_IXGRP != 0 || !who.in_group_or_capable(t.uid, t.gid) {
        libc::S_ISGID
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A caller with fixed privileges: `fsetid`, and membership of `groups`.
    struct Fixed {
        fsetid: bool,
        groups: &'static [u32],
    }

    impl Privileges for Fixed {
        fn fsetid(&self, _uid: u32, _gid: u32) -> bool {
            self.fsetid
        }
        fn in_group_or_capable(&self, _uid: u32, gid: u32) -> bool {
            self.fsetid || self.groups.contains(&gid)
        }
        fn known(&self) -> bool {
            true
        }
    }

    /// A caller whose credentials cannot be read.
    struct Unknown;

    impl Privileges for Unknown {
        fn fsetid(&self, _uid: u32, _gid: u32) -> bool {
            false
        }
        fn in_group_or_capable(&self, _uid: u32, _gid: u32) -> bool {
            false
        }
        fn known(&self) -> bool {
            false
        }
    }

    #[test]
    fn a_caller_that_cannot_be_asked_keeps_a_chmod_and_loses_on_writes() {
        let chmod = SetAttr {
            mode: Some(0o2755),
            ..SetAttr::default()
        };
        assert_eq!(cleared_bits(&file(0o755), &chmod, &Unknown), 0);
        assert_eq!(
            cleared_bits(&file(0o6666), &SetAttr::default(), &Unknown),
            libc::S_ISUID | libc::S_ISGID
        );
    }

    const STRANGER: Fixed = Fixed {
        fsetid: false,
        groups: &[1000],
    };
    const MEMBER: Fixed = Fixed {
        fsetid: false,
        groups: &[1000, 0],
    };
    const ROOT: Fixed = Fixed {
        fsetid: true,
        groups: &[],
    };

    fn file(perm: u32) -> Target {
        Target {
            kind: FileKind::Regular,
            perm,
            uid: 0,
            gid: 0,
        }
    }

    #[test]
    fn data_changes_clear_as_the_vfs_does() {
        // (mode, who, bits left)
        let cases: [(u32, &Fixed, u32); 9] = [
            (0o2666, &STRANGER, 0o666),
            (0o2666, &MEMBER, 0o2666),
            (0o2666, &ROOT, 0o2666),
            (0o4666, &MEMBER, 0o666),
            (0o6666, &MEMBER, 0o2666),
            (0o6666, &STRANGER, 0o666),
            (0o2676, &MEMBER, 0o676),
            (0o6777, &ROOT, 0o6777),
            (0o0777, &STRANGER, 0o777),
        ];
        for (perm, who, left) in cases {
            let t = file(perm);
            assert_eq!(perm & !cleared_by_data_change(&t, who), left, "{perm:o}");
            let empty = SetAttr::default();
            assert_eq!(perm & !cleared_bits(&t, &empty, who), left, "{perm:o}");
            let truncate = SetAttr {
                size: Some(0),
                ..SetAttr::default()
            };
            assert_eq!(perm & !cleared_bits(&t, &truncate, who), left, "{perm:o}");
        }
        let dir = Target {
            kind: FileKind::Directory,
            ..file(0o2777)
        };
        assert_eq!(cleared_by_data_change(&dir, &STRANGER), 0);
    }

    #[test]
    fn modes_keep_setgid_only_inside_the_group_and_times_clear_nothing() {
        let t = file(0o666);
        let chmod = |m| SetAttr {
            mode: Some(m),
            ..SetAttr::default()
        };
        assert_eq!(cleared_bits(&t, &chmod(0o2666), &STRANGER), libc::S_ISGID);
        assert_eq!(cleared_bits(&t, &chmod(0o2666), &MEMBER), 0);
        assert_eq!(cleared_bits(&t, &chmod(0o4666), &STRANGER), 0);
        let touch = SetAttr {
            mtime: Some(crate::sys::SetTime::Now),
            ..SetAttr::default()
        };
        assert_eq!(cleared_bits(&file(0o6666), &touch, &STRANGER), 0);
    }

    #[test]
    fn chown_clears_setuid_always_and_setgid_as_a_write_would() {
        let chgrp = SetAttr {
            gid: Some(1000),
            ..SetAttr::default()
        };
        assert_eq!(
            cleared_bits(&file(0o6755), &chgrp, &ROOT),
            libc::S_ISUID | libc::S_ISGID
        );
        assert_eq!(cleared_bits(&file(0o6744), &chgrp, &ROOT), libc::S_ISUID);
        assert_eq!(
            cleared_bits(&file(0o2744), &chgrp, &STRANGER),
            libc::S_ISGID
        );
        let dir = Target {
            kind: FileKind::Directory,
            ..file(0o6755)
        };
        assert_eq!(cleared_bits(&dir, &chgrp, &STRANGER), 0);
    }
}
