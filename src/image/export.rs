//! `overlayfuse image export`: an image of the store written as an OCI archive (what
//! `podman save --format oci-archive` writes and `podman load` reads): `oci-layout`,
//! `index.json` naming the image, and its blobs as they were imported, so every digest is
//! the one it came with. The archive is built beside its destination and renamed into place.

use std::fs::File;
use std::io::{self, BufWriter};
use std::path::Path;

use super::import::REF_NAME;
use super::progress::{Counted, Progress};
use super::store::{ImageRecord, Store};
use crate::error::Error;
use crate::oci::partial_path;
use crate::oci::tar::{Header, Kind, Writer};

/// A header for `path` of kind `kind`, owned by root, mode 0755 (directories) or 0644,
/// time 0.
pub(super) fn entry(path: &str, kind: Kind) -> Header {
    let mode = if kind == Kind::Dir { 0o755 } else { 0o644 };
    Header {
        path: path.as_bytes().to_vec(),
        kind,
        mode,
        uid: 0,
        gid: 0,
        mtime: 0,
        mtime_nsec: 0,
        xattrs: Vec::new(),
    }
}

/// The `index.json` of an archive of `image`.
pub fn index_json(image: &ImageRecord) -> Vec<u8> {
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": image.manifest.media_type,
            "digest": image.manifest.digest,
            "size": image.manifest.size,
            "annotations": { REF_NAME: image.name },
        }],
    });
    serde_json::to_vec(&index).expect("a JSON value encodes")
}

/// Writes `image` of `store` to `out` as an OCI archive.
pub fn export(
    store: &Store,
    image: &ImageRecord,
    out: &Path,
    progress: &mut Progress,
) -> Result<(), Error> {
    let tmp = partial_path(out);
    let written = (|| -> io::Result<()> {
        // A new file only: a name planted there (a symlink) is never followed.
        let file = File::options().write(true).create_new(true).open(&tmp)?;
        let mut tar = Writer::new(BufWriter::new(file));
        let small = |tar: &mut Writer<_>, path: &str, bytes: &[u8]| {
            tar.append(
                &entry(path, Kind::File(bytes.len() as u64)),
                Some(&mut &bytes[..]),
            )
        };
        small(&mut tar, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        small(&mut tar, "index.json", &index_json(image))?;
        tar.append(&entry("blobs", Kind::Dir), None)?;
        tar.append(&entry("blobs/sha256", Kind::Dir), None)?;
        let mut blobs = vec![&image.manifest, &image.config];
        blobs.extend(image.layers.iter().map(|l| &l.blob));
        let mut seen = std::collections::HashSet::new();
        for blob in blobs {
            if !seen.insert(&blob.digest) {
                continue; // two layers of one content: one blob
            }
            let f = File::open(store.blob_path(&blob.digest))?;
            let size = f.metadata()?.len();
            if size != blob.size {
                return Err(io::Error::other(format!(
                    "blob {} of the store is {size} bytes, the image says {}: the store is damaged",
                    blob.digest, blob.size
                )));
            }
            progress.start(format!("blob {}", &blob.digest[..19]), size);
            let mut r = Counted::new(io::BufReader::new(f), progress);
            let path = format!("blobs/sha256/{}", &blob.digest[7..]);
            tar.append(&entry(&path, Kind::File(size)), Some(&mut r))?;
            progress.finish();
        }
        let file = tar.finish()?.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::runtime(format!(
            "cannot write '{}': {e}",
            out.display()
        )));
    }
    std::fs::rename(&tmp, out).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::runtime(format!("cannot put '{}' in place: {e}", out.display()))
    })
}
