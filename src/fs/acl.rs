//! POSIX ACLs in their xattr form (`system.posix_acl_access`, `system.posix_acl_default`):
//! what a new object inherits from its directory's default ACL, as the kernel's
//! `posix_acl_create` decides it, and the ids in them mapped between stored and shown.

use super::idmap::IdMap;
use crate::sys::Errno;

/// The xattr holding an object's access ACL.
pub const ACCESS: &str = "system.posix_acl_access";
/// The xattr holding a directory's default ACL (what new objects in it inherit).
pub const DEFAULT: &str = "system.posix_acl_default";

/// The only version of the xattr form.
const VERSION: u32 = 2;
const HEADER_BYTES: usize = 4;
const ENTRY_BYTES: usize = 8;

const USER_OBJ: u16 = 0x01;
const USER: u16 = 0x02;
const GROUP_OBJ: u16 = 0x04;
const GROUP: u16 = 0x08;
const MASK: u16 = 0x10;
const OTHER: u16 = 0x20;

/// One entry: its tag, its `rwx` bits and, for named users and groups, the id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    tag: u16,
    perm: u16,
    id: u32,
}

/// A parsed ACL, entries in stored order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Acl {
    entries: Vec<Entry>,
}

/// True for the name of either ACL xattr.
pub fn is_acl_xattr(name: &[u8]) -> bool {
    name == ACCESS.as_bytes() || name == DEFAULT.as_bytes()
}

impl Acl {
    /// Parses the xattr form; `EINVAL` for anything else (as the kernel answers).
    pub fn parse(bytes: &[u8]) -> Result<Acl, Errno> {
        let (head, body) = bytes
            .split_first_chunk::<HEADER_BYTES>()
            .ok_or(Errno::EINVAL)?;
        if u32::from_le_bytes(*head) != VERSION || body.len() % ENTRY_BYTES != 0 {
            return Err(Errno::EINVAL);
        }
        let entries = body
            .chunks_exact(ENTRY_BYTES)
            .map(|e| Entry {
                tag: u16::from_le_bytes([e[0], e[1]]),
                perm: u16::from_le_bytes([e[2], e[3]]),
                id: u32::from_le_bytes([e[4], e[5], e[6], e[7]]),
            })
            .collect();
        Ok(Acl { entries })
    }

    /// The xattr form.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_BYTES + ENTRY_BYTES * self.entries.len());
        out.extend_from_slice(&VERSION.to_le_bytes());
        for e in &self.entries {
            out.extend_from_slice(&e.tag.to_le_bytes());
            out.extend_from_slice(&e.perm.to_le_bytes());
            out.extend_from_slice(&e.id.to_le_bytes());
        }
        out
    }

    /// What an object created with permission bits `perm` in a directory with this default
    /// ACL gets: its access ACL (`None` where the permission bits say it all) and its
    /// permission bits, masked by the ACL. The umask plays no part. `EIO` for an ACL the
    /// kernel could not have stored (no owning group entry, an unknown tag).
    pub fn inherit(&self, perm: u32) -> Result<(Option<Acl>, u32), Errno> {
        let mut acl = self.clone();
        let mut mode = perm & 0o777;
        let mut extended = false;
        let (mut mask, mut group_obj) = (None, None);
        for (i, e) in acl.entries.iter_mut().enumerate() {
            match e.tag {
                USER_OBJ => {
                    e.perm &= (mode >> 6) as u16 | !0o7;
                    mode &= (u32::from(e.perm) << 6) | !0o700;
                }
                USER | GROUP => extended = true,
                GROUP_OBJ => group_obj = Some(i),
                OTHER => {
                    e.perm &= mode as u16 | !0o7;
                    mode &= u32::from(e.perm) | !0o7;
                }
                MASK => {
                    mask = Some(i);
                    extended = true;
                }
                _ => return Err(Errno::EIO),
            }
        }
        let g = mask.or(group_obj).ok_or(Errno::EIO)?;
        let e = &mut acl.entries[g];
        e.perm &= (mode >> 3) as u16 | !0o7;
        mode &= (u32::from(e.perm) << 3) | !0o70;
        let perm = (perm & !0o777) | (mode & 0o777);
        Ok((extended.then_some(acl), perm))
    }

    /// The permission bits (`0o777`) an object with this access ACL shows: the owner's, the
    /// mask's (the owning group's where there is no mask) and the others' entries.
    pub fn perm_bits(&self) -> u32 {
        let has_mask = self.entries.iter().any(|e| e.tag == MASK);
        self.entries.iter().fold(0, |bits, e| {
            let perm = u32::from(e.perm & 0o7);
            match e.tag {
                USER_OBJ => bits | perm << 6,
                MASK => bits | perm << 3,
                GROUP_OBJ if !has_mask => bits | perm << 3,
                OTHER => bits | perm,
                _ => bits,
            }
        })
    }

    /// The ACL with the ids of named users mapped by `uid` and of named groups by `gid`;
    /// the first failure is returned.
    pub fn map_ids(
        &self,
        mut uid: impl FnMut(u32) -> Result<u32, Errno>,
        mut gid: impl FnMut(u32) -> Result<u32, Errno>,
    ) -> Result<Acl, Errno> {
        let mut acl = self.clone();
        for e in &mut acl.entries {
            match e.tag {
                USER => e.id = uid(e.id)?,
                GROUP => e.id = gid(e.id)?,
                _ => {}
            }
        }
        Ok(acl)
    }
}

/// The value of ACL xattr `value` as shown under `ids`: named users and groups stored as
/// one id are shown as another. With `owner_perm` (the shown mode of an object whose mode
/// lives in an owner xattr) the owner's entry takes its owner bits, where the stored ACL
/// has the daemon's. Anything that does not parse is passed on as it is.
pub fn shown_value(ids: &IdMap, value: Vec<u8>, owner_perm: Option<u32>) -> Vec<u8> {
    if ids.is_identity() && owner_perm.is_none() {
        return value;
    }
    let Ok(mut acl) = Acl::parse(&value) else {
        return value;
    };
    if let Some(perm) = owner_perm {
        for e in acl.entries.iter_mut().filter(|e| e.tag == USER_OBJ) {
            e.perm = ((perm >> 6) & 0o7) as u16;
        }
    }
    acl.map_ids(|u| Ok(ids.uids.shown(u)), |g| Ok(ids.gids.shown(g)))
        .map_or(value, |acl| acl.to_bytes())
}

/// The value of ACL xattr `value` given to the mount, as stored under `ids`: `EINVAL` if it
/// does not parse, `EOVERFLOW` for an id no mapping covers (as for a `chown`).
pub fn stored_value(ids: &IdMap, value: &[u8]) -> Result<Vec<u8>, Errno> {
    if ids.is_identity() {
        return Ok(value.to_vec());
    }
    let acl = Acl::parse(value)?.map_ids(|u| ids.uids.disk(u), |g| ids.gids.disk(g))?;
    Ok(acl.to_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::idmap::{IdRange, OneMap};

    fn acl(entries: &[(u16, u16, u32)]) -> Acl {
        Acl {
            entries: entries
                .iter()
                .map(|&(tag, perm, id)| Entry { tag, perm, id })
                .collect(),
        }
    }

    const NONE: u32 = u32::MAX;

    #[test]
    fn the_xattr_form_round_trips_and_bad_forms_are_refused() {
        let a = acl(&[
            (USER_OBJ, 7, NONE),
            (USER, 5, 1000),
            (GROUP_OBJ, 5, NONE),
            (MASK, 7, NONE),
            (OTHER, 0, NONE),
        ]);
        let bytes = a.to_bytes();
        assert_eq!(bytes.len(), 4 + 5 * 8);
        assert_eq!(&bytes[..4], &[2, 0, 0, 0]);
        assert_eq!(Acl::parse(&bytes), Ok(a));
        assert_eq!(Acl::parse(&bytes[..11]), Err(Errno::EINVAL));
        assert_eq!(Acl::parse(&[1, 0, 0, 0]), Err(Errno::EINVAL));
        assert_eq!(Acl::parse(&[]), Err(Errno::EINVAL));
    }

    #[test]
    fn inheriting_masks_the_acl_and_the_mode_as_the_kernel_does() {
        // A default ACL equivalent to 0750 gives no access ACL; the mode is masked by it.
        let plain = acl(&[(USER_OBJ, 7, NONE), (GROUP_OBJ, 5, NONE), (OTHER, 0, NONE)]);
        assert_eq!(plain.inherit(0o666), Ok((None, 0o640)));
        assert_eq!(plain.inherit(0o4777), Ok((None, 0o4750)));
        // A named user makes it extended: the mask, not the owning group, meets the mode.
        let named = acl(&[
            (USER_OBJ, 7, NONE),
            (USER, 7, 1000),
            (GROUP_OBJ, 7, NONE),
            (MASK, 7, NONE),
            (OTHER, 5, NONE),
        ]);
        let want = acl(&[
            (USER_OBJ, 6, NONE),
            (USER, 7, 1000),
            (GROUP_OBJ, 7, NONE),
            (MASK, 6, NONE),
            (OTHER, 4, NONE),
        ]);
        assert_eq!(named.inherit(0o666), Ok((Some(want), 0o664)));
        // Without an owning group entry the kernel would not have stored it.
        let broken = acl(&[(USER_OBJ, 7, NONE), (OTHER, 0, NONE)]);
        assert_eq!(broken.inherit(0o666), Err(Errno::EIO));
    }

    #[test]
    fn the_permission_bits_come_from_owner_mask_and_other() {
        let named = acl(&[
            (USER_OBJ, 6, NONE),
            (USER, 7, 1000),
            (GROUP_OBJ, 4, NONE),
            (MASK, 1, NONE),
            (OTHER, 0, NONE),
        ]);
        assert_eq!(named.perm_bits(), 0o610);
        // Without a mask the owning group gives the group bits.
        let plain = acl(&[(USER_OBJ, 7, NONE), (GROUP_OBJ, 5, NONE), (OTHER, 5, NONE)]);
        assert_eq!(plain.perm_bits(), 0o755);
    }

    #[test]
    fn ids_of_named_entries_are_mapped_both_ways() {
        let range = |disk, shown, len| IdRange { disk, shown, len };
        let ids = IdMap {
            uids: OneMap {
                ranges: vec![range(0, 100000, 65536)],
                squash: None,
            },
            gids: OneMap {
                ranges: vec![range(0, 200000, 65536)],
                squash: None,
            },
        };
        let stored = acl(&[
            (USER_OBJ, 7, NONE),
            (USER, 5, 1000),
            (GROUP_OBJ, 5, NONE),
            (GROUP, 5, 10),
            (MASK, 5, NONE),
            (OTHER, 0, NONE),
        ]);
        let shown = acl(&[
            (USER_OBJ, 7, NONE),
            (USER, 5, 101000),
            (GROUP_OBJ, 5, NONE),
            (GROUP, 5, 200010),
            (MASK, 5, NONE),
            (OTHER, 0, NONE),
        ]);
        assert_eq!(shown_value(&ids, stored.to_bytes(), None), shown.to_bytes());
        assert_eq!(stored_value(&ids, &shown.to_bytes()), Ok(stored.to_bytes()));
        let outside = acl(&[(USER_OBJ, 7, NONE), (USER, 5, 7), (GROUP_OBJ, 5, NONE)]);
        assert_eq!(
            stored_value(&ids, &outside.to_bytes()),
            Err(Errno::EOVERFLOW)
        );
        assert_eq!(stored_value(&ids, b"junk"), Err(Errno::EINVAL));
        assert_eq!(shown_value(&ids, b"junk".to_vec(), None), b"junk");
        let same = IdMap::default();
        assert_eq!(
            shown_value(&same, stored.to_bytes(), None),
            stored.to_bytes()
        );
        // A mode kept in an owner xattr gives the owner's entry its bits.
        let read_only_owner = acl(&[
            (USER_OBJ, 4, NONE),
            (USER, 5, 1000),
            (GROUP_OBJ, 5, NONE),
            (GROUP, 5, 10),
            (MASK, 5, NONE),
            (OTHER, 0, NONE),
        ]);
        assert_eq!(
            shown_value(&same, stored.to_bytes(), Some(0o450)),
            read_only_owner.to_bytes()
        );
    }
}
