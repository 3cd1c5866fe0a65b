//! Encoding the answer to one FUSE request. The adapter fills a [`Reply`]; a transport sends
//! it, behind an out header it writes itself (`/dev/fuse` takes header and body in one
//! write, the ring takes them in two buffers).

use std::time::{Duration, SystemTime};

use super::abi::{self, PutFields};
use crate::fs::Attr;
use crate::sys::{Errno, FileKind, FsStat, SetTime};

/// The answer to one request, reused from request to request by a transport's thread.
#[derive(Debug, Default)]
pub struct Reply {
    /// The error answered (0: success).
    error: i32,
    /// The answer's structures.
    body: Vec<u8>,
    /// Bytes after the body (a READ's data), kept apart so they are not copied again.
    data: Vec<u8>,
    /// Set for requests that get no answer.
    silent: bool,
}

fn mode(kind: FileKind, perm: u16) -> u32 {
    let format = match kind {
        FileKind::Regular => libc::S_IFREG,
        FileKind::Directory => libc::S_IFDIR,
        FileKind::Symlink => libc::S_IFLNK,
        FileKind::Fifo => libc::S_IFIFO,
        FileKind::Socket => libc::S_IFSOCK,
        FileKind::CharDevice => libc::S_IFCHR,
        FileKind::BlockDevice => libc::S_IFBLK,
    };
    format | u32::from(perm)
}

fn wire_time(t: SystemTime) -> (u64, u32) {
    match SetTime::from(t) {
        SetTime::At(secs, nsecs) => (secs as u64, nsecs as u32),
        SetTime::Now | SetTime::Omit => (0, 0),
    }
}

/// `struct fuse_attr`; the inode number as given (a listing's `.` and `..` differ).
fn put_attr(b: &mut Vec<u8>, ino: u64, a: &Attr) {
    let (at, atn) = wire_time(a.atime);
    let (mt, mtn) = wire_time(a.mtime);
    let (ct, ctn) = wire_time(a.ctime);
    for v in [ino, a.size, a.blocks, at, mt, ct] {
        b.put_u64(v);
    }
    for v in [
        atn,
        mtn,
        ctn,
        mode(a.kind, a.perm),
        a.nlink,
        a.uid,
        a.gid,
        a.rdev,
        a.blksize,
        0,
    ] {
        b.put_u32(v);
    }
}

/// `struct fuse_entry_out`.
fn put_entry(
    b: &mut Vec<u8>,
    entry_ttl: Duration,
    attr_ttl: Duration,
    ino: u64,
    attr: Option<(&Attr, u64)>,
) {
    b.put_u64(ino);
    b.put_u64(attr.map_or(0, |(_, generation)| generation));
    b.put_u64(entry_ttl.as_secs());
    b.put_u64(attr_ttl.as_secs());
    b.put_u32(entry_ttl.subsec_nanos());
    b.put_u32(attr_ttl.subsec_nanos());
    match attr {
        Some((a, _)) => put_attr(b, ino, a),
        None => b.put_zeros(abi::ATTR),
    }
}

/// Appends a `struct fuse_dirent` (name padded to 8 bytes).
fn put_dirent(b: &mut Vec<u8>, ino: u64, next: u64, kind: FileKind, name: &[u8]) {
    b.put_u64(ino);
    b.put_u64(next);
    b.put_u32(name.len() as u32);
    b.put_u32(mode(kind, 0) >> 12);
    b.extend_from_slice(name);
    b.put_zeros(dirent_padding(name.len()));
}

fn dirent_padding(name_len: usize) -> usize {
    (8 - name_len % 8) % 8
}

impl Reply {
    /// Clears the answer for the next request.
    pub fn reset(&mut self) {
        self.error = 0;
        self.body.clear();
        self.data.clear();
        self.silent = false;
    }

    /// Answers with an error.
    pub fn error(&mut self, e: Errno) {
        self.body.clear();
        self.data.clear();
        self.error = -(e as i32);
    }

    /// Answers nothing at all (FORGET).
    pub fn silence(&mut self) {
        self.silent = true;
    }

    /// True when no answer is to be sent.
    pub fn is_silent(&self) -> bool {
        self.silent
    }

    /// The answer's error (0 or a negative errno), its body and the data after it.
    pub fn parts(&self) -> (i32, &[u8], &[u8]) {
        (self.error, &self.body, &self.data)
    }

    /// Length of the answer after its out header.
    pub fn len(&self) -> usize {
        self.body.len() + self.data.len()
    }

    /// True for an empty answer.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `struct fuse_attr_out`.
    pub fn attr(&mut self, ttl: Duration, a: &Attr) {
        self.body.put_u64(ttl.as_secs());
        self.body.put_u32(ttl.subsec_nanos());
        self.body.put_u32(0);
        put_attr(&mut self.body, a.ino, a);
    }

    /// An entry: the name is linked to `a`, kept for `entry_ttl`, its attributes for `attr_ttl`.
    pub fn entry(&mut self, entry_ttl: Duration, attr_ttl: Duration, a: &Attr, generation: u64) {
        put_entry(
            &mut self.body,
            entry_ttl,
            attr_ttl,
            a.ino,
            Some((a, generation)),
        );
    }

    /// A negative entry: node id 0 tells the kernel to cache "no such name" for `ttl`.
    pub fn negative_entry(&mut self, ttl: Duration) {
        put_entry(&mut self.body, ttl, Duration::ZERO, 0, None);
    }

    /// `struct fuse_open_out` (after an entry for CREATE); `backing_id` 0 for none.
    pub fn open(&mut self, fh: u64, flags: u32, backing_id: u32) {
        let flags = if backing_id != 0 {
            flags | abi::fopen::PASSTHROUGH
        } else {
            flags
        };
        self.body.put_u64(fh);
        self.body.put_u32(flags);
        self.body.put_u32(backing_id);
    }

    /// `struct fuse_write_out` (WRITE, COPY_FILE_RANGE).
    pub fn written(&mut self, n: u32) {
        self.body.put_u32(n);
        self.body.put_u32(0);
    }

    /// `struct fuse_getxattr_out`: the size a value or list needs.
    pub fn xattr_size(&mut self, n: u32) {
        self.body.put_u32(n);
        self.body.put_u32(0);
    }

    /// `struct fuse_lseek_out`.
    pub fn offset(&mut self, at: u64) {
        self.body.put_u64(at);
    }

    /// `struct fuse_statfs_out`.
    pub fn statfs(&mut self, s: &FsStat) {
        for v in [s.blocks, s.bfree, s.bavail, s.files, s.ffree] {
            self.body.put_u64(v);
        }
        for v in [s.bsize, s.namemax, s.frsize, 0] {
            self.body.put_u32(v);
        }
        self.body.put_zeros(24);
    }

    /// Bytes copied into the answer (a link target, an xattr value).
    pub fn bytes(&mut self, b: &[u8]) {
        self.body.extend_from_slice(b);
    }

    /// Data moved into the answer (a READ's bytes).
    pub fn data(&mut self, data: Vec<u8>) {
        self.data = data;
    }

    /// Appends a `struct fuse_dirent` unless it would take the answer past `max` bytes.
    /// Returns true when it did not fit (the listing stops there).
    pub fn dirent(&mut self, max: usize, ino: u64, next: u64, kind: FileKind, name: &[u8]) -> bool {
        let size = 24 + name.len() + dirent_padding(name.len());
        if self.body.len() + size > max {
            return true;
        }
        put_dirent(&mut self.body, ino, next, kind, name);
        false
    }

    /// Appends a `struct fuse_direntplus` (an entry, then the dirent) unless it would take
    /// the answer past `max` bytes. `.` and `..` get node id 0: the kernel links no inode to
    /// them. Returns true when it did not fit.
    #[allow(clippy::too_many_arguments)] // the fields of one record
    pub fn direntplus(
        &mut self,
        max: usize,
        entry_ttl: Duration,
        attr_ttl: Duration,
        next: u64,
        name: &[u8],
        a: &Attr,
        generation: u64,
        ino: u64,
    ) -> bool {
        let size = abi::ENTRY_OUT + 24 + name.len() + dirent_padding(name.len());
        if self.body.len() + size > max {
            return true;
        }
        let linked = if name == b"." || name == b".." {
            None
        } else {
            Some((a, generation))
        };
        match linked {
            Some(_) => put_entry(&mut self.body, entry_ttl, attr_ttl, a.ino, linked),
            None => put_entry(&mut self.body, Duration::ZERO, Duration::ZERO, 0, None),
        }
        put_dirent(&mut self.body, ino, next, a.kind, name);
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr() -> Attr {
        Attr {
            ino: 42,
            kind: FileKind::Regular,
            perm: 0o4755,
            nlink: 1,
            uid: 1,
            gid: 2,
            size: 3,
            blocks: 8,
            blksize: 4096,
            rdev: 0,
            atime: SystemTime::UNIX_EPOCH - Duration::from_millis(1500),
            mtime: SystemTime::UNIX_EPOCH + Duration::new(5, 6),
            ctime: SystemTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn structures_have_the_kernel_sizes() {
        let mut r = Reply::default();
        r.attr(Duration::from_secs(1), &attr());
        assert_eq!(r.len(), 16 + abi::ATTR);
        r.reset();
        r.entry(Duration::from_secs(1), Duration::ZERO, &attr(), 7);
        r.open(3, abi::fopen::KEEP_CACHE, 0);
        assert_eq!(r.len(), abi::ENTRY_OUT + 16);
        r.reset();
        r.statfs(&FsStat {
            blocks: 1,
            bfree: 1,
            bavail: 1,
            files: 1,
            ffree: 1,
            bsize: 1,
            namemax: 255,
            frsize: 1,
        });
        assert_eq!(r.len(), 80);
    }

    #[test]
    fn times_before_the_epoch_count_nanoseconds_up_and_the_mode_carries_the_type() {
        let mut r = Reply::default();
        r.attr(Duration::ZERO, &attr());
        let (_, body, _) = r.parts();
        let at = 16 + 24;
        assert_eq!(i64::from_ne_bytes(body[at..at + 8].try_into().unwrap()), -2);
        let atn = 16 + 48;
        assert_eq!(
            u32::from_ne_bytes(body[atn..atn + 4].try_into().unwrap()),
            500_000_000
        );
        let mode_at = 16 + 60;
        let mode = u32::from_ne_bytes(body[mode_at..mode_at + 4].try_into().unwrap());
        assert_eq!(mode, libc::S_IFREG | 0o4755);
    }

    #[test]
    fn dirents_are_padded_to_eight_bytes_and_stop_when_full() {
        let mut r = Reply::default();
        assert!(!r.dirent(64, 5, 1, FileKind::Directory, b"abc"));
        assert_eq!(r.len(), 32);
        assert!(!r.dirent(64, 6, 2, FileKind::Regular, b"12345678"));
        assert_eq!(r.len(), 64);
        assert!(r.dirent(64, 7, 3, FileKind::Regular, b"x"));
        assert_eq!(r.len(), 64);
        r.error(Errno::ENOENT);
        assert_eq!(r.parts(), (-libc::ENOENT, &[][..], &[][..]));
    }
}
