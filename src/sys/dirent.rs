//! Reading directory entries with `getdents64`.

use std::ffi::OsString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;

use super::{check, Errno};

/// One raw directory entry as the layer's filesystem reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawEntry {
    /// The entry's name.
    pub name: OsString,
    /// `d_ino`.
    pub ino: u64,
    /// `d_type` (`DT_UNKNOWN` where the filesystem does not say).
    pub dtype: u8,
}

/// Bytes asked for per `getdents64` call: a few hundred entries of ordinary names.
const BATCH: usize = 16 * 1024;

/// Offsets inside `struct linux_dirent64`: `d_ino` (u64), `d_off` (i64), `d_reclen` (u16),
/// `d_type` (u8), then the NUL-terminated name.
const RECLEN_AT: usize = 16;
const TYPE_AT: usize = 18;
const NAME_AT: usize = 19;

/// Reads every entry of the directory open for reading as `fd`, consuming it. Calls
/// `getdents64` itself: `readdir(3)` would add an `fstat`, two `fcntl`s and an `lseek` to
/// every listing.
pub(super) fn read_all(fd: OwnedFd) -> Result<Vec<RawEntry>, Errno> {
    let mut buf = vec![0u64; BATCH / 8];
    let mut out = Vec::new();
    loop {
        // SAFETY: `buf` is writable for the byte length we pass, and 8-byte aligned as
        // `struct linux_dirent64` needs; `fd` is a live descriptor.
        let n = check(unsafe {
            libc::syscall(
                libc::SYS_getdents64,
                fd.as_raw_fd(),
                buf.as_mut_ptr(),
                BATCH,
            )
        })? as usize;
        if n == 0 {
            return Ok(out);
        }
        if n > BATCH {
            return Err(Errno::EIO);
        }
        // SAFETY: the first `n` bytes of `buf` are initialised (the kernel wrote them, and
        // `buf` started zeroed) and lie inside it; u8 has no alignment requirement.
        let bytes = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), n) };
        parse(bytes, &mut out)?;
    }
}

/// Appends the records of one `getdents64` result to `out`.
fn parse(mut bytes: &[u8], out: &mut Vec<RawEntry>) -> Result<(), Errno> {
    while !bytes.is_empty() {
        let field = |at: usize, len: usize| bytes.get(at..at + len).ok_or(Errno::EIO);
        let ino = u64::from_ne_bytes(field(0, 8)?.try_into().map_err(|_| Errno::EIO)?);
        let reclen =
            u16::from_ne_bytes(field(RECLEN_AT, 2)?.try_into().map_err(|_| Errno::EIO)?) as usize;
        let dtype = field(TYPE_AT, 1)?[0];
        let record = bytes
            .get(..reclen)
            .filter(|_| reclen > NAME_AT)
            .ok_or(Errno::EIO)?;
        let name = &record[NAME_AT..];
        let len = name.iter().position(|&b| b == 0).ok_or(Errno::EIO)?;
        out.push(RawEntry {
            name: OsString::from_vec(name[..len].to_vec()),
            ino,
            dtype,
        });
        bytes = &bytes[reclen..];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open_dir(path: &std::path::Path) -> OwnedFd {
        OwnedFd::from(std::fs::File::open(path).unwrap())
    }

    #[test]
    fn lists_what_std_lists_across_many_batches() {
        let tmp = tempfile::tempdir().unwrap();
        let mut want = std::collections::BTreeMap::new();
        for i in 0..3000 {
            // Long names of varying length: several getdents64 batches, odd record sizes.
            let name = format!("{i}-{}", "n".repeat(i % 200));
            std::fs::write(tmp.path().join(&name), b"").unwrap();
            want.insert(OsString::from(name), libc::DT_REG);
        }
        std::fs::create_dir(tmp.path().join("sub")).unwrap();
        std::os::unix::fs::symlink("x", tmp.path().join("link")).unwrap();
        want.insert("sub".into(), libc::DT_DIR);
        want.insert("link".into(), libc::DT_LNK);
        want.insert(".".into(), libc::DT_DIR);
        want.insert("..".into(), libc::DT_DIR);
        let got = read_all(open_dir(tmp.path())).unwrap();
        let got_map: std::collections::BTreeMap<_, _> =
            got.iter().map(|e| (e.name.clone(), e.dtype)).collect();
        assert_eq!(got.len(), want.len(), "each entry once");
        assert_eq!(got_map, want);
        for e in got.iter().filter(|e| e.name != "." && e.name != "..") {
            let md = std::fs::symlink_metadata(tmp.path().join(&e.name)).unwrap();
            assert_eq!(
                e.ino,
                std::os::unix::fs::MetadataExt::ino(&md),
                "{:?}",
                e.name
            );
        }
    }

    #[test]
    fn a_truncated_record_is_an_error_not_a_panic() {
        let mut out = Vec::new();
        assert_eq!(parse(&[0u8; 10], &mut out), Err(Errno::EIO));
        let mut rec = vec![0u8; 24];
        rec[RECLEN_AT] = 24;
        rec[NAME_AT] = b'a'; // no NUL before the record ends
        rec[NAME_AT + 1..].fill(b'a');
        assert_eq!(parse(&rec, &mut out), Err(Errno::EIO));
        rec[RECLEN_AT] = 3; // shorter than the header
        assert_eq!(parse(&rec, &mut out), Err(Errno::EIO));
    }
}
