//! Where an image comes from: an OCI image layout (a directory: `oci-layout`, `index.json`,
//! `blobs/sha256/HEX`), or an OCI archive (the same as a tar file), whose blobs are first
//! copied into the store's `tmp/`, each checked against its name as it is copied. Nothing
//! else of an archive is written, and every blob is read beneath the layout's root without
//! following a symlink.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use super::store::Store;
use super::unpack::shown;
use crate::error::Error;
use crate::oci::digest::{sha256_hex, Hashing, HashingReader};
use crate::sys::Dir;

/// JSON documents (the layout's, manifests, configs) larger than this are refused.
pub const MAX_JSON: u64 = 8 << 20;

/// An image layout to import from.
#[derive(Debug)]
pub struct Source {
    dir: PathBuf,
    root: Dir,
    /// The layout was unpacked from an archive into the store's `tmp/`: its blobs are
    /// checked already and may be moved into the store.
    pub owned: bool,
}

impl Source {
    /// Opens `path`, a layout directory or an archive (unpacked into `store`'s `tmp/`).
    pub fn open(path: &Path, store: &Store) -> Result<Source, Error> {
        let meta = std::fs::metadata(path).map_err(|e| {
            Error::invalid(format!(
                "cannot read '{}': {e}: give an OCI archive or layout",
                path.display()
            ))
        })?;
        let (dir, owned) = if meta.is_dir() {
            (path.to_path_buf(), false)
        } else {
            let dir = store.scratch("archive")?;
            if let Err(e) = extract(path, &dir) {
                let _ = super::store::remove_tree(&dir);
                return Err(e);
            }
            (dir, true)
        };
        let root = Dir::open_root(&dir)
            .map_err(|e| Error::invalid(format!("cannot open '{}': {e}", dir.display())))?;
        let source = Source { dir, root, owned };
        let layout = source.read_file(OsStr::new("oci-layout"), path)?;
        let version = serde_json::from_slice::<serde_json::Value>(&layout)
            .ok()
            .and_then(|v| v.get("imageLayoutVersion")?.as_str().map(str::to_owned));
        if version.as_deref() != Some("1.0.0") {
            return Err(Error::invalid(format!(
                "'{}': its oci-layout file does not say imageLayoutVersion 1.0.0",
                path.display()
            )));
        }
        Ok(source)
    }

    /// The layout's `index.json`.
    pub fn index(&self, shown_as: &Path) -> Result<Vec<u8>, Error> {
        self.read_file(OsStr::new("index.json"), shown_as)
    }

    fn read_file(&self, name: &OsStr, shown_as: &Path) -> Result<Vec<u8>, Error> {
        let missing = |e| {
            Error::invalid(format!(
                "'{}' is not an OCI image layout or archive: no {} ({e})",
                shown_as.display(),
                name.to_string_lossy()
            ))
        };
        let f = self.root.open_file(name, libc::O_RDONLY).map_err(missing)?;
        read_limited(f, MAX_JSON).map_err(|e| {
            Error::invalid(format!(
                "cannot read {} of '{}': {e}",
                name.to_string_lossy(),
                shown_as.display()
            ))
        })
    }

    /// Opens blob `digest` (a checked `sha256:` digest).
    pub fn blob(&self, digest: &str) -> Result<File, Error> {
        let hex = sha256_hex(digest).expect("digests are checked before use");
        self.root
            .open_beneath(Path::new("blobs/sha256"))
            .and_then(|d| d.open_file(OsStr::new(hex), libc::O_RDONLY))
            .map_err(|e| Error::invalid(format!("blob {digest} is not in the image ({e})")))
    }

    /// Where blob `digest` is, for moving it (an owned source only).
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = sha256_hex(digest).expect("digests are checked before use");
        self.dir.join("blobs/sha256").join(hex)
    }

    /// Blob `digest` of `size` bytes, read whole and checked (a manifest, a config).
    pub fn small_blob(&self, digest: &str, size: u64) -> Result<Vec<u8>, Error> {
        if size > MAX_JSON {
            return Err(Error::invalid(format!(
                "blob {digest} is {size} bytes: too big for a manifest or config"
            )));
        }
        let mut r = HashingReader::new(self.blob(digest)?);
        let mut bytes = Vec::new();
        (&mut r)
            .take(MAX_JSON + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| Error::runtime(format!("cannot read blob {digest}: {e}")))?;
        let (got, n) = r
            .finish()
            .map_err(|e| Error::runtime(format!("cannot read blob {digest}: {e}")))?;
        check_blob(digest, size, &got, n)?;
        Ok(bytes)
    }
}

impl Drop for Source {
    fn drop(&mut self) {
        if self.owned {
            // What is left of an unpacked archive (its blobs not taken into the store).
            let _ = super::store::remove_tree(&self.dir);
        }
    }
}

/// `Ok` when a blob read as `got` (`n` bytes) is the one named `digest` of `size` bytes.
pub fn check_blob(digest: &str, size: u64, got: &str, n: u64) -> Result<(), Error> {
    if got != digest {
        return Err(Error::invalid(format!(
            "blob {digest} does not match its digest (its content hashes to {got}): the image is \
             damaged or was tampered with"
        )));
    }
    if n != size {
        return Err(Error::invalid(format!(
            "blob {digest} is {n} bytes where the image says {size}"
        )));
    }
    Ok(())
}

fn read_limited(f: impl Read, max: u64) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    f.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(io::Error::other(format!("more than {max} bytes")));
    }
    Ok(bytes)
}

/// Copies the layout files of the archive `path` into `dir`: `oci-layout`, `index.json`
/// and each `blobs/sha256/HEX`, checked against HEX as it is copied. Other entries are
/// skipped; an entry with an absolute path or `..` makes the archive refused.
fn extract(path: &Path, dir: &Path) -> Result<(), Error> {
    let bad = |why: String| Error::invalid(format!("'{}': {why}", path.display()));
    let file = File::open(path).map_err(|e| bad(format!("cannot open it: {e}")))?;
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).map_err(|e| bad(format!("cannot unpack it: {e}")))?;
    let mut archive = tar::Archive::new(BufReader::new(file));
    let entries = archive
        .entries()
        .map_err(|e| bad(format!("not a tar archive: {e}")))?;
    let mut docker = false;
    for entry in entries {
        let mut entry = entry.map_err(|e| bad(format!("the tar stream is broken: {e}")))?;
        let raw = entry.path_bytes().into_owned();
        let comps = super::unpack::components(&raw)
            .map_err(|why| bad(format!("entry '{}' has {why}", shown(&raw))))?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let into = match comps[..] {
            [b"oci-layout"] | [b"index.json"] => {
                let bytes = read_limited(&mut entry, MAX_JSON)
                    .map_err(|e| bad(format!("cannot read entry '{}': {e}", shown(&raw))))?;
                std::fs::write(
                    dir.join(OsStr::new(std::str::from_utf8(comps[0]).unwrap_or("x"))),
                    bytes,
                )
                .map_err(|e| bad(format!("cannot unpack it: {e}")))?;
                continue;
            }
            [b"manifest.json"] => {
                docker = true;
                continue;
            }
            [b"blobs", b"sha256", hex] => {
                let digest = format!("sha256:{}", String::from_utf8_lossy(hex));
                if sha256_hex(&digest).is_none() {
                    continue;
                }
                let to = blobs.join(OsStr::new(&digest[7..]));
                (digest, to)
            }
            _ => continue,
        };
        let (digest, to) = into;
        let out = File::options()
            .write(true)
            .create_new(true)
            .open(&to)
            .map_err(|e| bad(format!("cannot unpack blob {digest}: {e}")))?;
        let mut w = Hashing::new(io::BufWriter::new(out));
        io::copy(&mut entry, &mut w)
            .map_err(|e| bad(format!("cannot unpack blob {digest}: {e}")))?;
        let (got, buf) = w.finish();
        buf.into_inner()
            .map_err(|e| bad(format!("cannot unpack blob {digest}: {}", e.error())))?;
        if got != digest {
            return Err(bad(format!(
                "blob {digest} does not match its digest (its content hashes to {got}): the \
                 archive is damaged or was tampered with"
            )));
        }
    }
    if docker && !dir.join("index.json").exists() {
        return Err(bad(
            "a docker-archive, not an OCI archive: save it with --format oci-archive".into(),
        ));
    }
    Ok(())
}
