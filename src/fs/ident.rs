//! Inode numbers of the merged view: `st_ino`, `d_ino` and the FUSE node id are one number.
//!
//! An object's number comes from its origin's real `(st_dev, st_ino)`. When every layer sits
//! on one filesystem the real inode number is used as is, as the kernel overlay does. With
//! several filesystems, xino-style packing puts a small filesystem index in the top
//! [`FS_BITS`] bits. A real number that does not fit, that collides with the FUSE root id, or
//! that comes from a filesystem no layer root is on, gets a synthetic number from a reserved
//! range, remembered for the mount's life so it stays stable.

use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;

/// The FUSE root node id.
pub const ROOT_ID: u64 = 1;
/// High bits that hold the filesystem index.
pub const FS_BITS: u32 = 8;
const INO_BITS: u32 = 64 - FS_BITS;
/// The filesystem index whose range holds synthetic numbers.
const SYNTHETIC_FS: u64 = (1 << FS_BITS) - 1;

/// Maps real `(dev, ino)` pairs to merged inode numbers.
#[derive(Debug)]
pub struct Inos {
    devs: Vec<u64>,
    synthetic: DashMap<(u64, u64), u64>,
    next_synthetic: AtomicU64,
    /// Every number fits in 32 bits (`ino32_t`).
    ino32: bool,
}

/// With `ino32_t`, real numbers up to this one are kept; synthetic ones count up from it.
const INO32_SYNTHETIC: u64 = 0xF000_0000;

impl Inos {
    /// A mapper for layers on the filesystems `devs`; the first is index 0 (the top layer's,
    /// the upper's once there is one). Filesystems past the 255th get synthetic numbers.
    pub fn new(layer_devs: impl IntoIterator<Item = u64>) -> Inos {
        let mut devs: Vec<u64> = Vec::new();
        for dev in layer_devs {
            if !devs.contains(&dev) {
                devs.push(dev);
            }
        }
        devs.truncate(SYNTHETIC_FS as usize);
        Inos {
            devs,
            synthetic: DashMap::new(),
            next_synthetic: AtomicU64::new(1),
            ino32: false,
        }
    }

    /// Makes every number fit in 32 bits: real numbers of the first filesystem below
    /// 0xF0000000 are kept, every other object gets a synthetic number above it. Past
    /// 2^28 synthetic numbers they wrap and may repeat (a 32-bit space has no more room).
    pub fn limit_to_32_bits(&mut self) {
        self.ino32 = true;
    }

    /// The merged number of the real object `(dev, ino)`.
    pub fn id(&self, dev: u64, ino: u64) -> u64 {
        if let Some(id) = self.kept(dev, ino) {
            return id;
        }
        *self.synthetic.entry((dev, ino)).or_insert_with(|| {
            let n = self.next_synthetic.fetch_add(1, Ordering::Relaxed);
            if self.ino32 {
                INO32_SYNTHETIC + n % (u64::from(u32::MAX) - INO32_SYNTHETIC)
            } else {
                (SYNTHETIC_FS << INO_BITS) | n
            }
        })
    }

    /// The number made from the real one, where it fits: packed with the filesystem index,
    /// or with `ino32_t` as it is (first filesystem, below [`INO32_SYNTHETIC`]).
    fn kept(&self, dev: u64, ino: u64) -> Option<u64> {
        let fs = self.devs.iter().position(|d| *d == dev)? as u64;
        let id = if self.ino32 {
            (fs == 0 && ino < INO32_SYNTHETIC).then_some(ino)?
        } else {
            (ino >> INO_BITS == 0).then_some((fs << INO_BITS) | ino)?
        };
        (id != ROOT_ID && id != 0).then_some(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ino32_keeps_small_numbers_of_the_first_filesystem_only() {
        let mut inos = Inos::new([7, 9]);
        inos.limit_to_32_bits();
        assert_eq!(inos.id(7, 1234), 1234);
        let other = inos.id(9, 1234);
        let big = inos.id(7, 1 << 40);
        for id in [other, big] {
            assert!(
                (INO32_SYNTHETIC..=u64::from(u32::MAX)).contains(&id),
                "{id:x}"
            );
        }
        assert_ne!(other, big);
        assert_eq!(inos.id(9, 1234), other);
    }

    #[test]
    fn one_filesystem_keeps_real_numbers() {
        let inos = Inos::new([7, 7, 7]);
        assert_eq!(inos.id(7, 1234), 1234);
    }

    #[test]
    fn several_filesystems_pack_an_index_in_the_high_bits() {
        let inos = Inos::new([7, 9]);
        assert_eq!(inos.id(7, 5), 5);
        assert_eq!(inos.id(9, 5), (1 << INO_BITS) | 5);
        assert_ne!(inos.id(7, 5), inos.id(9, 5));
    }

    #[test]
    fn root_id_and_overflowing_numbers_get_stable_synthetic_ids() {
        let inos = Inos::new([7]);
        let a = inos.id(7, ROOT_ID);
        assert_ne!(a, ROOT_ID);
        assert_eq!(a, inos.id(7, ROOT_ID));
        let big = inos.id(7, u64::MAX - 3);
        assert_ne!(big, a);
        assert_eq!(big >> INO_BITS, SYNTHETIC_FS);
        let foreign = inos.id(42, 5);
        assert_eq!(foreign >> INO_BITS, SYNTHETIC_FS);
        assert_eq!(foreign, inos.id(42, 5));
    }
}
