//! Calls on open files that std does not offer: status as [`Stat`], xattrs, fallocate, and the
//! data-copy primitives copy-up uses (reflink, copy_file_range, hole finding).

use std::fs::File;
use std::os::fd::AsRawFd;

use super::stat::Stat;
use super::{check, Errno};

/// Xattr `name` of the open file `f`.
pub fn xattr_get(f: &File, name: &std::ffi::OsStr) -> Result<Vec<u8>, Errno> {
    use std::os::fd::AsFd;
    super::xattr::get(super::xattr::Target::Fd(f.as_fd()), name)
}

/// Sets xattr `name` of the open file `f` to `value`.
pub fn xattr_set(f: &File, name: &std::ffi::OsStr, value: &[u8]) -> Result<(), Errno> {
    use std::os::fd::AsFd;
    super::xattr::set(super::xattr::Target::Fd(f.as_fd()), name, value, 0)
}

/// Status of the open file `f`.
pub fn fstat(f: &File) -> Result<Stat, Errno> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `st` is writable memory of the right size; the fd is live.
    check(unsafe { libc::fstat(f.as_raw_fd(), st.as_mut_ptr()) }.into())?;
    // SAFETY: fstat succeeded, so it filled `st`.
    Ok(Stat::from_libc(unsafe { &st.assume_init() }))
}

/// fallocate(2) on `f`.
pub fn fallocate(f: &File, mode: i32, offset: u64, len: u64) -> Result<(), Errno> {
    let off = i64::try_from(offset).map_err(|_| Errno::EFBIG)?;
    let len = i64::try_from(len).map_err(|_| Errno::EFBIG)?;
    // SAFETY: plain integer arguments on a live fd.
    check(unsafe { libc::fallocate(f.as_raw_fd(), mode, off, len) }.into()).map(drop)
}

/// Makes `dst` share all of `src`'s data blocks (FICLONE); `EOPNOTSUPP`/`EXDEV`/`EINVAL`
/// where the filesystem cannot.
pub fn clone_file(dst: &File, src: &File) -> Result<(), Errno> {
    // SAFETY: FICLONE takes the source fd as its integer argument; both fds are live.
    let ret = unsafe { libc::ioctl(dst.as_raw_fd(), libc::FICLONE, src.as_raw_fd()) };
    check(ret.into()).map(drop)
}

/// Copies up to `len` bytes from `src` at `src_offset` to `dst` at `dst_offset` inside the
/// kernel; returns the bytes copied (0 at end of file).
pub fn copy_range(
    src: &File,
    src_offset: u64,
    dst: &File,
    dst_offset: u64,
    len: usize,
) -> Result<usize, Errno> {
    let mut off_in = i64::try_from(src_offset).map_err(|_| Errno::EFBIG)?;
    let mut off_out = i64::try_from(dst_offset).map_err(|_| Errno::EFBIG)?;
    // SAFETY: both offsets point at live i64s the kernel updates; both fds are live.
    let ret = unsafe {
        libc::copy_file_range(
            src.as_raw_fd(),
            &mut off_in,
            dst.as_raw_fd(),
            &mut off_out,
            len,
            0,
        )
    };
    Ok(check(ret as libc::c_long)? as usize)
}

/// Where the next data at or after `offset` starts (`SEEK_DATA`); `None` past the last data.
pub fn next_data(f: &File, offset: u64) -> Result<Option<u64>, Errno> {
    seek(f, offset, libc::SEEK_DATA)
}

/// Where the next hole at or after `offset` starts (`SEEK_HOLE`; the end of file counts).
pub fn next_hole(f: &File, offset: u64) -> Result<Option<u64>, Errno> {
    seek(f, offset, libc::SEEK_HOLE)
}

fn seek(f: &File, offset: u64, whence: i32) -> Result<Option<u64>, Errno> {
    let off = i64::try_from(offset).map_err(|_| Errno::EFBIG)?;
    // SAFETY: plain integer arguments on a live fd (lseek moves only this descriptor's
    // offset, which nothing else uses: reads and writes here are positional).
    let ret = unsafe { libc::lseek(f.as_raw_fd(), off, whence) };
    match check(ret) {
        Ok(pos) => Ok(Some(pos as u64)),
        Err(Errno::ENXIO) => Ok(None),
        Err(e) => Err(e),
    }
}
