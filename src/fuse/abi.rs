//! The FUSE wire protocol as the kernel's `include/uapi/linux/fuse.h` defines it (protocol
//! 7.45): operation codes, flags, and the layouts of the structures this daemon reads and
//! writes, as byte offsets. Fields are read and written one by one in native byte order, so
//! no structure is ever reinterpreted from raw memory.

/// The protocol's major version.
pub const MAJOR: u32 = 7;
/// The newest minor version this daemon speaks.
pub const MINOR: u32 = 45;
/// The oldest minor version it accepts (passthrough, the newest feature it relies on when
/// offered, came with 7.40; everything else it needs is far older).
pub const MIN_MINOR: u32 = 31;

/// Operation codes (`enum fuse_opcode`).
pub mod op {
    #![allow(missing_docs)] // named as in the kernel's header
    pub const LOOKUP: u32 = 1;
    pub const FORGET: u32 = 2;
    pub const GETATTR: u32 = 3;
    pub const SETATTR: u32 = 4;
    pub const READLINK: u32 = 5;
    pub const SYMLINK: u32 = 6;
    pub const MKNOD: u32 = 8;
    pub const MKDIR: u32 = 9;
    pub const UNLINK: u32 = 10;
    pub const RMDIR: u32 = 11;
    pub const RENAME: u32 = 12;
    pub const LINK: u32 = 13;
    pub const OPEN: u32 = 14;
    pub const READ: u32 = 15;
    pub const WRITE: u32 = 16;
    pub const STATFS: u32 = 17;
    pub const RELEASE: u32 = 18;
    pub const FSYNC: u32 = 20;
    pub const SETXATTR: u32 = 21;
    pub const GETXATTR: u32 = 22;
    pub const LISTXATTR: u32 = 23;
    pub const REMOVEXATTR: u32 = 24;
    pub const FLUSH: u32 = 25;
    pub const INIT: u32 = 26;
    pub const OPENDIR: u32 = 27;
    pub const READDIR: u32 = 28;
    pub const RELEASEDIR: u32 = 29;
    pub const FSYNCDIR: u32 = 30;
    pub const ACCESS: u32 = 34;
    pub const CREATE: u32 = 35;
    pub const INTERRUPT: u32 = 36;
    pub const DESTROY: u32 = 38;
    pub const BATCH_FORGET: u32 = 42;
    pub const FALLOCATE: u32 = 43;
    pub const READDIRPLUS: u32 = 44;
    pub const RENAME2: u32 = 45;
    pub const LSEEK: u32 = 46;
    pub const COPY_FILE_RANGE: u32 = 47;
}

/// `FUSE_INIT` flags (the high 32 bits travel in `flags2`).
pub mod init {
    #![allow(missing_docs)] // named as in the kernel's header
    pub const ASYNC_READ: u64 = 1 << 0;
    pub const BIG_WRITES: u64 = 1 << 5;
    pub const DONT_MASK: u64 = 1 << 6;
    pub const DO_READDIRPLUS: u64 = 1 << 13;
    pub const READDIRPLUS_AUTO: u64 = 1 << 14;
    pub const PARALLEL_DIROPS: u64 = 1 << 18;
    pub const POSIX_ACL: u64 = 1 << 20;
    pub const MAX_PAGES: u64 = 1 << 22;
    pub const INIT_EXT: u64 = 1 << 30;
    pub const PASSTHROUGH: u64 = 1 << 37;
    pub const NO_EXPORT_SUPPORT: u64 = 1 << 38;
    pub const OVER_IO_URING: u64 = 1 << 41;
}

/// `FOPEN_*` flags of an open or create answer.
pub mod fopen {
    #![allow(missing_docs)] // named as in the kernel's header
    pub const KEEP_CACHE: u32 = 1 << 1;
    pub const CACHE_DIR: u32 = 1 << 3;
    pub const NOFLUSH: u32 = 1 << 5;
    pub const PASSTHROUGH: u32 = 1 << 7;
}

/// `FATTR_*`: which fields of a SETATTR request are set.
pub mod fattr {
    #![allow(missing_docs)] // named as in the kernel's header
    pub const MODE: u32 = 1 << 0;
    pub const UID: u32 = 1 << 1;
    pub const GID: u32 = 1 << 2;
    pub const SIZE: u32 = 1 << 3;
    pub const ATIME: u32 = 1 << 4;
    pub const MTIME: u32 = 1 << 5;
    pub const FH: u32 = 1 << 6;
    pub const ATIME_NOW: u32 = 1 << 7;
    pub const MTIME_NOW: u32 = 1 << 8;
}

/// `FUSE_GETATTR_FH`: the GETATTR request names an open file.
pub const GETATTR_FH: u32 = 1;

/// `struct fuse_in_header`.
pub const IN_HEADER: usize = 40;
/// `struct fuse_out_header`.
pub const OUT_HEADER: usize = 16;
/// `struct fuse_attr`.
pub const ATTR: usize = 88;
/// `struct fuse_entry_out`: node id, generation, two timeouts, two nanosecond parts, attr.
pub const ENTRY_OUT: usize = 40 + ATTR;
/// `struct fuse_init_out` (and `fuse_init_in`) since 7.36.
pub const INIT_OUT: usize = 64;

/// The size of the fixed structure that opens the body of a request of `opcode`: what the
/// kernel puts first (`in_args[0]`, the "op header"), before names and data. Zero for
/// requests that carry only names, or nothing.
pub fn fixed_size(opcode: u32) -> usize {
    match opcode {
        op::FORGET | op::INTERRUPT | op::RENAME | op::LINK => 8,
        op::GETATTR | op::MKNOD | op::RENAME2 | op::FSYNC | op::FSYNCDIR | op::CREATE => 16,
        op::MKDIR | op::OPEN | op::OPENDIR | op::GETXATTR | op::LISTXATTR | op::ACCESS => 8,
        op::BATCH_FORGET | op::SETXATTR => 8,
        op::SETATTR => 88,
        op::READ | op::READDIR | op::READDIRPLUS | op::WRITE => 40,
        op::RELEASE | op::RELEASEDIR | op::FLUSH | op::LSEEK => 24,
        op::FALLOCATE => 32,
        op::COPY_FILE_RANGE => 56,
        op::INIT => INIT_OUT,
        _ => 0,
    }
}

/// `struct fuse_in_header`: what every request starts with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InHeader {
    /// Length of the whole request, header included.
    pub len: u32,
    /// The operation.
    pub opcode: u32,
    /// The request's id, echoed in its answer.
    pub unique: u64,
    /// The inode the request is about.
    pub nodeid: u64,
    /// The caller's fsuid.
    pub uid: u32,
    /// The caller's fsgid.
    pub gid: u32,
    /// The caller's thread group id.
    pub pid: u32,
}

impl InHeader {
    /// Reads a header from the first [`IN_HEADER`] bytes of `bytes`.
    pub fn parse(bytes: &[u8]) -> Option<InHeader> {
        let mut r = Fields::new(bytes.get(..IN_HEADER)?);
        Some(InHeader {
            len: r.u32()?,
            opcode: r.u32()?,
            unique: r.u64()?,
            nodeid: r.u64()?,
            uid: r.u32()?,
            gid: r.u32()?,
            pid: r.u32()?,
        })
    }
}

/// Reads native-endian fields one after the other from a byte slice.
#[derive(Debug)]
pub struct Fields<'a> {
    bytes: &'a [u8],
}

impl<'a> Fields<'a> {
    /// Reads from the start of `bytes`.
    pub fn new(bytes: &'a [u8]) -> Fields<'a> {
        Fields { bytes }
    }

    /// The next `n` bytes.
    pub fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.bytes.len() {
            return None;
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Some(head)
    }

    /// The next 32-bit field.
    pub fn u32(&mut self) -> Option<u32> {
        Some(u32::from_ne_bytes(self.take(4)?.try_into().ok()?))
    }

    /// The next 64-bit field.
    pub fn u64(&mut self) -> Option<u64> {
        Some(u64::from_ne_bytes(self.take(8)?.try_into().ok()?))
    }

    /// Skips `n` bytes of padding.
    pub fn skip(&mut self, n: usize) -> Option<()> {
        self.take(n).map(|_| ())
    }

    /// The next NUL-terminated string, without its NUL.
    pub fn name(&mut self) -> Option<&'a [u8]> {
        let end = self.bytes.iter().position(|&b| b == 0)?;
        let name = &self.bytes[..end];
        self.bytes = &self.bytes[end + 1..];
        Some(name)
    }

    /// How many bytes are left.
    pub fn remaining(&self) -> usize {
        self.bytes.len()
    }
}

/// Appends native-endian fields to a byte buffer.
pub trait PutFields {
    /// Appends a 16-bit field.
    fn put_u16(&mut self, v: u16);
    /// Appends a 32-bit field.
    fn put_u32(&mut self, v: u32);
    /// Appends a 64-bit field.
    fn put_u64(&mut self, v: u64);
    /// Appends `n` zero bytes.
    fn put_zeros(&mut self, n: usize);
}

impl PutFields for Vec<u8> {
    fn put_u16(&mut self, v: u16) {
        self.extend_from_slice(&v.to_ne_bytes());
    }

    fn put_u32(&mut self, v: u32) {
        self.extend_from_slice(&v.to_ne_bytes());
    }

    fn put_u64(&mut self, v: u64) {
        self.extend_from_slice(&v.to_ne_bytes());
    }

    fn put_zeros(&mut self, n: usize) {
        self.resize(self.len() + n, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_reads_back_as_written() {
        let mut b = Vec::new();
        for v in [40u32, op::LOOKUP] {
            b.put_u32(v);
        }
        b.put_u64(7);
        b.put_u64(1);
        for v in [1000u32, 100, 42, 0] {
            b.put_u32(v);
        }
        let h = InHeader::parse(&b).unwrap();
        assert_eq!(
            h,
            InHeader {
                len: 40,
                opcode: op::LOOKUP,
                unique: 7,
                nodeid: 1,
                uid: 1000,
                gid: 100,
                pid: 42
            }
        );
        assert_eq!(InHeader::parse(&b[..39]), None);
    }

    #[test]
    fn names_stop_at_their_nul_and_a_missing_nul_is_refused() {
        let mut f = Fields::new(b"old\0new\0");
        assert_eq!(f.name(), Some(&b"old"[..]));
        assert_eq!(f.name(), Some(&b"new"[..]));
        assert_eq!(Fields::new(b"abc").name(), None);
    }
}
