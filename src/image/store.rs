//! The image store (`--store DIR`): each layer unpacked once, named by its diff id; the
//! blobs the images came in, kept for export; and a catalog of named images.
//!
//! ```text
//! DIR/lock                  flock'ed (exclusive) by every command using the store
//! DIR/markers               the marker format the layers are written in: kernel, userxattr, aufs
//! DIR/catalog.json          the images: name, manifest, config, layers (replaced atomically)
//! DIR/blobs/sha256/HEX      manifests, configs and layer blobs as imported
//! DIR/layers/HEX/           a layer unpacked (HEX: its diff id), a lower layer as it is
//! DIR/tmp/                  work in progress, emptied whenever the store is opened
//! DIR/inuse/N               the diff ids a running container uses, flock'ed (shared) by it
//! ```
//!
//! A layer is unpacked in `tmp/`, synced, then renamed into `layers/`: a half-unpacked
//! layer never enters the store, and a crash leaves only `tmp/` to clear.

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::fs::probe::Features;
use crate::fs::upper::MarkerFormat;
use crate::oci::digest::sha256_hex;
use crate::sys::{self, Dir};

/// A blob of an image: where it is named and what it holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Blob {
    /// `sha256:HEX`.
    pub digest: String,
    /// Bytes.
    pub size: u64,
    /// Its media type, as the manifest says.
    pub media_type: String,
}

/// A layer of an image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRecord {
    /// The layer blob (compressed as imported).
    pub blob: Blob,
    /// The digest of the uncompressed tar: names the unpacked layer.
    pub diff_id: String,
}

/// One named image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// The name it was imported under.
    pub name: String,
    /// Its manifest.
    pub manifest: Blob,
    /// Its config (the digest is the image id).
    pub config: Blob,
    /// Its layers, bottom first (as the manifest lists them).
    pub layers: Vec<LayerRecord>,
}

/// Every image of a store, sorted by name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Catalog {
    /// The images.
    pub images: Vec<ImageRecord>,
}

impl Catalog {
    /// The image named `name`.
    pub fn get(&self, name: &str) -> Option<&ImageRecord> {
        self.images.iter().find(|i| i.name == name)
    }

    /// Adds `image`, replacing one of the same name; the one replaced.
    pub fn put(&mut self, image: ImageRecord) -> Option<ImageRecord> {
        let old = self.remove(&image.name);
        let at = self.images.partition_point(|i| i.name < image.name);
        self.images.insert(at, image);
        old
    }

    /// Removes the image named `name`.
    pub fn remove(&mut self, name: &str) -> Option<ImageRecord> {
        let at = self.images.iter().position(|i| i.name == name)?;
        Some(self.images.remove(at))
    }
}

/// An open, locked store.
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    _lock: File,
    /// The marker format its layers are written in.
    pub markers: MarkerFormat,
}

/// The default store: `/var/lib/overlayfuse` as root, else `$XDG_DATA_HOME/overlayfuse`
/// (`~/.local/share/overlayfuse`).
pub fn default_dir() -> PathBuf {
    if sys::process::euid() == 0 {
        return PathBuf::from("/var/lib/overlayfuse");
    }
    let data = std::env::var_os("XDG_DATA_HOME")
        .filter(|v| Path::new(v).is_absolute())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    data.join("overlayfuse")
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::runtime(format!("cannot {what} '{}': {e}", path.display()))
}

impl Store {
    /// Opens (creating it where missing) and locks the store at `dir`, waiting for another
    /// command that holds it; clears what an interrupted command left in `tmp/`.
    pub fn open(dir: &Path) -> Result<Store, Error> {
        for sub in ["", "blobs/sha256", "layers", "tmp", "inuse"] {
            let p = dir.join(sub);
            fs::create_dir_all(&p).map_err(|e| io_err("create the store directory", &p, e))?;
        }
        let lock_path = dir.join("lock");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| io_err("open", &lock_path, e))?;
        sys::lock::exclusive(&lock)
            .map_err(|e| Error::runtime(format!("cannot lock '{}': {e}", lock_path.display())))?;
        // Absolute, so the layer directories it gives can serve as a mount's lowerdir.
        let root = fs::canonicalize(dir).map_err(|e| io_err("resolve", dir, e))?;
        let tmp = root.join("tmp");
        for entry in fs::read_dir(&tmp).map_err(|e| io_err("read", &tmp, e))? {
            let entry = entry.map_err(|e| io_err("read", &tmp, e))?;
            // What this process cannot remove (a user's, outside the user namespace its
            // image commands use) waits for the next opening that can.
            if let Err(e) = remove_tree(&entry.path()) {
                log::warn!("{}", e.message);
            }
        }
        let markers = Self::marker_format(&root)?;
        Ok(Store {
            root,
            _lock: lock,
            markers,
        })
    }

    /// The format written in `markers`, or, for a new store, the best one its filesystem
    /// holds for this process.
    fn marker_format(root: &Path) -> Result<MarkerFormat, Error> {
        let path = root.join("markers");
        let tmp = root.join("tmp");
        let dir = Dir::open_root(&tmp)
            .map_err(|e| Error::runtime(format!("cannot open '{}': {e}", tmp.display())))?;
        let mut n = 0;
        let features = Features::probe(&dir, || {
            n += 1;
            OsString::from(format!("probe-{}-{n}", std::process::id()))
        });
        match fs::read_to_string(&path) {
            Ok(text) => {
                let format = MarkerFormat::parse(text.trim()).flatten().ok_or_else(|| {
                    Error::invalid(format!(
                        "'{}' names no marker format ('{}'): the store is damaged",
                        path.display(),
                        text.trim()
                    ))
                })?;
                if let Err(why) = features.check(format) {
                    return Err(Error::invalid(format!(
                        "the store '{}' holds layers with {} markers, which this process cannot \
                         write ({why}): use the store as its owner (root), or another --store",
                        root.display(),
                        format.option_value()
                    )));
                }
                Ok(format)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let format = features.best_format();
                write_atomically(&path, format!("{}\n", format.option_value()).as_bytes())?;
                Ok(format)
            }
            Err(e) => Err(io_err("read", &path, e)),
        }
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The catalog (empty for a new store).
    pub fn catalog(&self) -> Result<Catalog, Error> {
        let path = self.root.join("catalog.json");
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| Error::invalid(format!("'{}' is damaged: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Catalog::default()),
            Err(e) => Err(io_err("read", &path, e)),
        }
    }

    /// Replaces the catalog, atomically.
    pub fn save_catalog(&self, catalog: &Catalog) -> Result<(), Error> {
        let bytes = serde_json::to_vec_pretty(catalog)
            .map_err(|e| Error::runtime(format!("cannot encode the catalog: {e}")))?;
        write_atomically(&self.root.join("catalog.json"), &bytes)
    }

    /// Where blob `digest` is kept (`digest` must be a `sha256:` digest).
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = sha256_hex(digest).expect("digests are checked before use");
        self.root.join("blobs/sha256").join(hex)
    }

    /// Where the layer of diff id `diff_id` is unpacked.
    pub fn layer_dir(&self, diff_id: &str) -> PathBuf {
        let hex = sha256_hex(diff_id).expect("digests are checked before use");
        self.root.join("layers").join(hex)
    }

    /// A new, empty directory in `tmp/` for `what`.
    pub fn scratch(&self, what: &str) -> Result<PathBuf, Error> {
        for n in 0u32.. {
            let p = self
                .root
                .join("tmp")
                .join(format!("{what}-{}-{n}", std::process::id()));
            match fs::create_dir(&p) {
                Ok(()) => return Ok(p),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io_err("create", &p, e)),
            }
        }
        unreachable!("u32 names run out")
    }

    /// Moves the unpacked layer at `tmp` into place as the layer of `diff_id`, after
    /// syncing it (a crash never leaves a half-written layer in `layers/`).
    pub fn commit_layer(&self, tmp: &Path, diff_id: &str) -> Result<(), Error> {
        let dir = Dir::open_root(tmp)
            .map_err(|e| Error::runtime(format!("cannot open '{}': {e}", tmp.display())))?;
        dir.syncfs()
            .map_err(|e| Error::runtime(format!("cannot sync '{}': {e}", tmp.display())))?;
        let to = self.layer_dir(diff_id);
        fs::rename(tmp, &to).map_err(|e| io_err("move the layer to", &to, e))?;
        sync_dir(&self.root.join("layers"))
    }

    /// Moves the verified blob file at `tmp` into place as blob `digest`.
    pub fn commit_blob(&self, tmp: &Path, digest: &str) -> Result<(), Error> {
        let to = self.blob_path(digest);
        fs::rename(tmp, &to).map_err(|e| io_err("move the blob to", &to, e))?;
        sync_dir(&self.root.join("blobs/sha256"))
    }

    /// Blob `digest` (a manifest, a config) as JSON.
    pub fn json_blob(&self, digest: &str) -> Result<serde_json::Value, Error> {
        let path = self.blob_path(digest);
        std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| {
                Error::runtime(format!(
                    "cannot read '{}' as JSON: the store is damaged (import the image again)",
                    path.display()
                ))
            })
    }

    /// Writes blob `digest` holding `bytes` (already verified).
    pub fn put_blob(&self, digest: &str, bytes: &[u8]) -> Result<(), Error> {
        write_atomically(&self.blob_path(digest), bytes)
    }

    /// Marks the layers of `image` in use for as long as the returned file is open (by this
    /// process or a child): garbage collection keeps them, even once the image is removed.
    pub fn hold(&self, image: &ImageRecord) -> Result<File, Error> {
        let dir = self.root.join("inuse");
        let ids: String = image
            .layers
            .iter()
            .map(|l| format!("{}\n", l.diff_id))
            .collect();
        for n in 0u32.. {
            let path = dir.join(format!("{}-{n}", std::process::id()));
            let mut f = match File::options().write(true).create_new(true).open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io_err("create", &path, e)),
            };
            sys::lock::shared(&f)
                .map_err(|e| Error::runtime(format!("cannot lock '{}': {e}", path.display())))?;
            f.write_all(ids.as_bytes())
                .map_err(|e| io_err("write", &path, e))?;
            return Ok(f);
        }
        unreachable!("u32 names run out")
    }

    /// The diff ids held by running containers ([`Store::hold`]); the records of ended ones
    /// are removed.
    fn held_layers(&self) -> Result<std::collections::HashSet<String>, Error> {
        let dir = self.root.join("inuse");
        let mut held = std::collections::HashSet::new();
        for entry in fs::read_dir(&dir).map_err(|e| io_err("read", &dir, e))? {
            let path = entry.map_err(|e| io_err("read", &dir, e))?.path();
            let Ok(f) = File::open(&path) else { continue };
            if sys::lock::try_exclusive(&f).unwrap_or(false) {
                // Its holder is gone.
                let _ = fs::remove_file(&path);
                continue;
            }
            let text = fs::read_to_string(&path).unwrap_or_default();
            held.extend(text.lines().map(str::to_owned));
        }
        Ok(held)
    }

    /// Removes the layers and blobs no image of `catalog` and no running container uses;
    /// how many of each.
    pub fn collect_garbage(&self, catalog: &Catalog) -> Result<(usize, usize), Error> {
        use std::collections::HashSet;
        let mut blobs: HashSet<String> = HashSet::new();
        let mut layers: HashSet<String> = self.held_layers()?;
        for image in &catalog.images {
            blobs.insert(image.manifest.digest.clone());
            blobs.insert(image.config.digest.clone());
            for l in &image.layers {
                blobs.insert(l.blob.digest.clone());
                layers.insert(l.diff_id.clone());
            }
        }
        let sweep = |dir: &Path, keep: &HashSet<String>| -> Result<usize, Error> {
            let mut removed = 0;
            for entry in fs::read_dir(dir).map_err(|e| io_err("read", dir, e))? {
                let entry = entry.map_err(|e| io_err("read", dir, e))?;
                let name = entry.file_name();
                let digest = format!("sha256:{}", name.to_string_lossy());
                if !keep.contains(&digest) {
                    remove_tree(&entry.path())?;
                    removed += 1;
                }
            }
            Ok(removed)
        };
        let l = sweep(&self.root.join("layers"), &layers)?;
        let b = sweep(&self.root.join("blobs/sha256"), &blobs)?;
        Ok((l, b))
    }
}

/// Writes `bytes` to `path` through a new file beside it, synced and renamed over it.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let tmp = crate::oci::partial_path(path);
    let res = (|| {
        let mut f = File::options().write(true).create_new(true).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = res {
        let _ = fs::remove_file(&tmp);
        return Err(io_err("write", path, e));
    }
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

fn sync_dir(dir: &Path) -> Result<(), Error> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err("sync", dir, e))
}

/// Removes the file or tree at `path`, never following a symlink; directories a non-root
/// process cannot write into (a layer's `0555` ones) are opened up first.
pub fn remove_tree(path: &Path) -> Result<(), Error> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("read", path, e)),
    };
    if !meta.is_dir() {
        return fs::remove_file(path).map_err(|e| io_err("remove", path, e));
    }
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            open_up(path)?;
            fs::remove_dir_all(path).map_err(|e| io_err("remove", path, e))
        }
        Err(e) => Err(io_err("remove", path, e)),
    }
}

/// Gives the owner `rwx` on every directory of the tree at `path` (symlinks not followed).
fn open_up(path: &Path) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt;
    let meta = fs::symlink_metadata(path).map_err(|e| io_err("read", path, e))?;
    if !meta.is_dir() {
        return Ok(());
    }
    let mode = meta.permissions().mode() | 0o700;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|e| io_err("open up", path, e))?;
    for entry in fs::read_dir(path).map_err(|e| io_err("read", path, e))? {
        let entry = entry.map_err(|e| io_err("read", path, e))?;
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            open_up(&entry.path())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str) -> ImageRecord {
        let blob = |d: char| Blob {
            digest: format!("sha256:{}", d.to_string().repeat(64)),
            size: 1,
            media_type: "m".into(),
        };
        ImageRecord {
            name: name.into(),
            manifest: blob('a'),
            config: blob('b'),
            layers: vec![LayerRecord {
                blob: blob('c'),
                diff_id: format!("sha256:{}", "d".repeat(64)),
            }],
        }
    }

    #[test]
    fn the_catalog_keeps_one_image_per_name_sorted() {
        let mut c = Catalog::default();
        assert!(c.put(record("b")).is_none());
        assert!(c.put(record("a")).is_none());
        assert_eq!(c.put(record("b")).map(|r| r.name), Some("b".into()));
        let names: Vec<_> = c.images.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert!(c.remove("a").is_some());
        assert!(c.get("a").is_none());
    }

    #[test]
    fn a_store_is_made_locked_and_swept() {
        let t = tempfile::tempdir().unwrap();
        let s = Store::open(t.path()).unwrap();
        fs::write(s.root().join("tmp/leftover"), b"x").unwrap();
        let mut cat = Catalog::default();
        cat.put(record("x"));
        s.save_catalog(&cat).unwrap();
        assert_eq!(s.catalog().unwrap(), cat);
        let keep = s.layer_dir(&cat.images[0].layers[0].diff_id);
        fs::create_dir(&keep).unwrap();
        fs::create_dir(s.root().join("layers").join("e".repeat(64))).unwrap();
        fs::write(s.root().join("blobs/sha256").join("f".repeat(64)), b"").unwrap();
        assert_eq!(s.collect_garbage(&cat).unwrap(), (1, 1));
        assert!(keep.is_dir());
        drop(s);
        let again = Store::open(t.path()).unwrap();
        assert!(!again.root().join("tmp/leftover").exists());
    }
}
