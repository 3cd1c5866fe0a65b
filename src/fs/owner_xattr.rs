//! Owner and mode kept in an xattr instead of the inode (`xattr_permissions=`, as in
//! fuse-overlayfs): for a daemon that cannot give files away (rootless without subordinate
//! ids, or storage written with containers-storage's `force_mask`). The object on disk stays
//! owned by the daemon with a mode that keeps it usable; the xattr holds what is shown.
//!
//! Value: `UID:GID:MODE` with MODE in octal (readers ignore type bits and a fourth field, as
//! containers-storage writes `UID:GID:MODE:TYPE`).

use crate::sys::Stat;

/// Written with `xattr_permissions=1`.
pub const PRIVILEGED: &str = "security.fuseoverlayfs.override_stat";
/// Written by containers-storage with `force_mask`; read only.
pub const CONTAINERS: &str = "user.containers.override_stat";
/// Written with `xattr_permissions=2`.
pub const USER: &str = "user.fuseoverlayfs.override_stat";
/// Every name, in the order a layer's value is looked for after the mount's own
/// (fuse-overlayfs 1.14's order).
pub const NAMES: [&str; 3] = [PRIVILEGED, CONTAINERS, USER];

/// True for the name of an owner xattr (hidden from clients while the option is on).
pub fn is_owner_xattr(name: &[u8]) -> bool {
    NAMES.iter().any(|n| n.as_bytes() == name)
}

/// An object's owner and permission bits as an owner xattr records them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    /// Owner, as stored (before any `uidmapping=`).
    pub uid: u32,
    /// Group, as stored.
    pub gid: u32,
    /// Permission bits (`0o7777`).
    pub perm: u32,
}

impl Owner {
    /// What `st` says.
    pub fn of(st: &Stat) -> Owner {
        Owner {
            uid: st.uid,
            gid: st.gid,
            perm: st.mode & 0o7777,
        }
    }

    /// Parses an xattr value; `None` for a malformed one.
    pub fn parse(value: &[u8]) -> Option<Owner> {
        let text = std::str::from_utf8(value).ok()?;
        let text = text.trim_end_matches(['\0', '\n']);
        let mut fields = text.split(':');
        let uid = fields.next()?.parse().ok()?;
        let gid = fields.next()?.parse().ok()?;
        let mode = u32::from_str_radix(fields.next()?, 8).ok()?;
        Some(Owner {
            uid,
            gid,
            perm: mode & 0o7777,
        })
    }

    /// The xattr value.
    pub fn encode(&self) -> Vec<u8> {
        format!("{}:{}:{:04o}", self.uid, self.gid, self.perm).into_bytes()
    }

    /// `st` with this owner and these permission bits (its type kept).
    pub fn apply(&self, st: &mut Stat) {
        st.uid = self.uid;
        st.gid = self.gid;
        st.mode = (st.mode & libc::S_IFMT) | self.perm;
    }
}

/// The mode an object gets on disk: the daemon keeps read and write (and search for a
/// directory) whatever is shown, and no setuid or setgid bit reaches the disk for a file
/// the daemon owns.
pub fn on_disk_mode(mode: u32) -> u32 {
    let owner = if mode & libc::S_IFMT == libc::S_IFDIR {
        0o700
    } else {
        0o600
    };
    (mode & libc::S_IFMT) | (mode & 0o1777) | owner
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values() {
        let o = Owner::parse(b"1000:100:0644").unwrap();
        assert_eq!(
            o,
            Owner {
                uid: 1000,
                gid: 100,
                perm: 0o644
            }
        );
        assert_eq!(o.encode(), b"1000:100:0644");
        // fuse-overlayfs 1.10 writes type bits; containers-storage a fourth field.
        assert_eq!(Owner::parse(b"0:0:100755").unwrap().perm, 0o755);
        assert_eq!(Owner::parse(b"5:6:4755:file").unwrap().perm, 0o4755);
        for bad in [&b"-1:0:644"[..], b"1:2", b"a:b:c", b"1:2:9", b""] {
            assert_eq!(
                Owner::parse(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(on_disk_mode(libc::S_IFREG | 0o4000), libc::S_IFREG | 0o600);
        assert_eq!(on_disk_mode(libc::S_IFDIR | 0o1777), libc::S_IFDIR | 0o1777);
        assert_eq!(on_disk_mode(libc::S_IFDIR), libc::S_IFDIR | 0o700);
        assert!(is_owner_xattr(USER.as_bytes()) && !is_owner_xattr(b"user.x"));
    }
}
