//! [`IdMap`]: how owners stored in the layers are shown through the mount, and how owners
//! given to the mount are stored (fuse-overlayfs's `uidmapping=`, `gidmapping=` and
//! `squash_to_*` options, which podman passes for containers with their own id mapping).
//!
//! A range `DISK:SHOWN:LEN` shows the stored ids `DISK..DISK+LEN` as `SHOWN..SHOWN+LEN`. A
//! stored id outside every range is shown as the kernel's overflow id (65534). A `chown` to an
//! id outside every range is refused with `EOVERFLOW` rather than stored as some other owner;
//! an object made by a process whose id no range covers (podman itself, as host root, makes
//! `/etc/mtab` in a mapped container) is stored as owned by the overflow id, "nobody", as by
//! fuse-overlayfs and as the kernel shows a host-owned file inside a user namespace.
//! Squashing changes only what is shown.

use crate::sys::Errno;

/// One range of a mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdRange {
    /// First id as stored in the layers.
    pub disk: u32,
    /// First id as shown through the mount.
    pub shown: u32,
    /// Number of ids.
    pub len: u32,
}

/// The id shown for ids no range covers (the kernel's default `overflowuid`/`overflowgid`).
pub const OVERFLOW_ID: u32 = 65534;

/// Parses a mapping `DISK:SHOWN:LEN[:DISK:SHOWN:LEN...]` (fuse-overlayfs's syntax: triplets
/// joined by `:`, since `,` separates mount options; podman writes a `:` before each
/// triplet, so empty fields are skipped). Ranges must not overlap on either side.
pub fn parse_ranges(value: &str) -> Result<Vec<IdRange>, String> {
    let fields = value
        .split(':')
        .filter(|f| !f.is_empty())
        .map(|f| f.parse::<u32>().map_err(|_| format!("'{f}' is not an id")))
        .collect::<Result<Vec<u32>, String>>()?;
    if fields.is_empty() || fields.len() % 3 != 0 {
        return Err("give triplets DISK:SHOWN:LEN joined by ':'".into());
    }
    let mut ranges: Vec<IdRange> = Vec::new();
    for t in fields.chunks(3) {
        let r = IdRange {
            disk: t[0],
            shown: t[1],
            len: t[2],
        };
        let end = |start: u32| u64::from(start) + u64::from(r.len);
        if r.len == 0 || end(r.disk) > 1 << 32 || end(r.shown) > 1 << 32 {
            return Err(format!(
                "range {}:{}:{} is empty or runs past 2^32",
                r.disk, r.shown, r.len
            ));
        }
        let overlaps = |a: u32, b: u32, blen: u32| {
            u64::from(a) < u64::from(b) + u64::from(blen) && u64::from(b) < end(a)
        };
        if ranges
            .iter()
            .any(|o| overlaps(r.disk, o.disk, o.len) || overlaps(r.shown, o.shown, o.len))
        {
            return Err(format!(
                "range {}:{}:{} overlaps another",
                r.disk, r.shown, r.len
            ));
        }
        ranges.push(r);
    }
    Ok(ranges)
}

/// The mapping of one kind of id (users or groups).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OneMap {
    /// Ranges; empty: ids are shown and stored as they are.
    pub ranges: Vec<IdRange>,
    /// Show every object as owned by this id (`squash_to_uid=`, `squash_to_root`).
    pub squash: Option<u32>,
}

impl OneMap {
    /// The id shown for stored id `disk`.
    pub fn shown(&self, disk: u32) -> u32 {
        if let Some(id) = self.squash {
            return id;
        }
        if self.ranges.is_empty() {
            return disk;
        }
        self.ranges
            .iter()
            .find(|r| disk >= r.disk && disk - r.disk < r.len)
            .map_or(OVERFLOW_ID, |r| r.shown + (disk - r.disk))
    }

    /// The id stored for id `shown` given to the mount; `EOVERFLOW` where no range covers it.
    pub fn disk(&self, shown: u32) -> Result<u32, Errno> {
        if self.ranges.is_empty() {
            return Ok(shown);
        }
        self.ranges
            .iter()
            .find(|r| shown >= r.shown && shown - r.shown < r.len)
            .map(|r| r.disk + (shown - r.shown))
            .ok_or(Errno::EOVERFLOW)
    }
}

/// User and group mappings of a mount.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdMap {
    /// User ids.
    pub uids: OneMap,
    /// Group ids.
    pub gids: OneMap,
}

impl IdMap {
    /// Whether owners are shown as something other than they are stored.
    pub fn is_identity(&self) -> bool {
        *self == IdMap::default()
    }

    /// Whether an owner change that cannot be stored is ignored (any squash option): the
    /// shown owner would not change anyway, as with fuse-overlayfs.
    pub fn squashes(&self) -> bool {
        self.uids.squash.is_some() || self.gids.squash.is_some()
    }

    /// The stored `(uid, gid)` of an object made by a process with these ids: the overflow
    /// id for one no range covers.
    pub fn creator(&self, uid: u32, gid: u32) -> (u32, u32) {
        (
            self.uids.disk(uid).unwrap_or(OVERFLOW_ID),
            self.gids.disk(gid).unwrap_or(OVERFLOW_ID),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_as_fuse_overlayfs_writes_them() {
        let r = parse_ranges("0:100000:1:1:200000:65535").unwrap();
        assert_eq!(parse_ranges(":0:100000:1:1:200000:65535").unwrap(), r);
        assert_eq!(
            r,
            vec![
                IdRange {
                    disk: 0,
                    shown: 100000,
                    len: 1
                },
                IdRange {
                    disk: 1,
                    shown: 200000,
                    len: 65535
                }
            ]
        );
        for bad in [
            "",
            "0:1",
            "0:1:0",
            "a:1:1",
            "0:1:1:1",
            "0:0:10:5:20:1",
            "4294967295:0:2",
        ] {
            assert!(parse_ranges(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn stored_ids_are_shown_mapped_and_unmapped_ones_as_overflow() {
        let m = OneMap {
            ranges: parse_ranges("0:1000:1:1:100000:10").unwrap(),
            squash: None,
        };
        assert_eq!(m.shown(0), 1000);
        assert_eq!(m.shown(5), 100004);
        assert_eq!(m.shown(11), OVERFLOW_ID);
        assert_eq!(m.disk(1000), Ok(0));
        assert_eq!(m.disk(100009), Ok(10));
        assert_eq!(m.disk(100010), Err(Errno::EOVERFLOW));
        assert_eq!(m.disk(0), Err(Errno::EOVERFLOW));
    }

    #[test]
    fn squash_changes_only_what_is_shown() {
        let m = OneMap {
            ranges: Vec::new(),
            squash: Some(0),
        };
        assert_eq!(m.shown(1234), 0);
        assert_eq!(m.disk(1234), Ok(1234));
        let map = IdMap {
            uids: m,
            gids: OneMap::default(),
        };
        assert!(map.squashes() && !map.is_identity());
        let mapped = IdMap {
            uids: OneMap {
                ranges: parse_ranges("0:100000:10").unwrap(),
                squash: None,
            },
            gids: OneMap::default(),
        };
        assert_eq!(mapped.creator(100003, 5), (3, 5));
        assert_eq!(mapped.creator(0, 5), (OVERFLOW_ID, 5));
        assert!(IdMap::default().is_identity());
    }
}
