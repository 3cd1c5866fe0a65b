//! [`Attr`]: what the merged view reports for an object, independent of any FUSE crate.

use std::time::SystemTime;

use crate::sys::{FileKind, Stat};

/// Attributes of a merged object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attr {
    /// Merged inode number (= node id).
    pub ino: u64,
    /// Type.
    pub kind: FileKind,
    /// Permission bits, with setuid, setgid and sticky.
    pub perm: u16,
    /// Link count.
    pub nlink: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size in bytes.
    pub size: u64,
    /// 512-byte blocks allocated.
    pub blocks: u64,
    /// Preferred I/O size.
    pub blksize: u32,
    /// Device number of a device node.
    pub rdev: u32,
    /// Last access.
    pub atime: SystemTime,
    /// Last modification.
    pub mtime: SystemTime,
    /// Last status change.
    pub ctime: SystemTime,
}

impl Attr {
    /// The attributes of the real object `st` shown as merged object `ino`. With `one_link`
    /// it reports one link: a directory merged from several layers does, as in the kernel
    /// overlay (counting its subdirectories across layers would make every `stat` cost a
    /// listing), and every directory does with `static_nlink`.
    pub fn new(ino: u64, kind: FileKind, st: &Stat, one_link: bool) -> Attr {
        Attr {
            ino,
            kind,
            perm: (st.mode & 0o7777) as u16,
            nlink: if one_link {
                1
            } else {
                st.nlink.min(u32::MAX.into()) as u32
            },
            uid: st.uid,
            gid: st.gid,
            size: st.size,
            blocks: st.blocks,
            blksize: st.blksize.min(u32::MAX.into()) as u32,
            rdev: encode_rdev(st.rdev),
            atime: st.atime,
            mtime: st.mtime,
            ctime: st.ctime,
        }
    }
}

/// The 32-bit "new" device encoding FUSE carries (major 12 bits, minor 20 bits).
fn encode_rdev(rdev: u64) -> u32 {
    // glibc's dev_t layout: major in bits 8..20 and 32..44, minor in bits 0..8 and 20..32.
    let major = (((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff)) as u32;
    let minor = ((rdev & 0xff) | ((rdev >> 12) & !0xff)) as u32;
    ((major & 0xfff) << 8) | (minor & 0xff) | ((minor & !0xff) << 12)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_numbers_use_the_kernel_encoding() {
        // makedev(1, 3) and makedev(8, 0x12345) in glibc's layout.
        assert_eq!(encode_rdev(0x103), 0x103);
        let dev = (8 << 8) | 0x45 | (0x123 << 20);
        assert_eq!(encode_rdev(dev), (8 << 8) | 0x45 | (0x12300 << 12));
    }
}
