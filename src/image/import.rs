//! `overlayfuse image import`: an OCI archive or layout into the store. Every blob is checked
//! against its digest and size before it is parsed or unpacked; each layer is unpacked once
//! ([`super::unpack`]) into `tmp/`, checked against the diff id the config lists, and only
//! then moved into `layers/`; the image is recorded last.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::Path;

use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest, MediaType};

use super::progress::{Counted, Progress};
use super::source::{check_blob, Source};
use super::store::{Blob, ImageRecord, LayerRecord, Store};
use super::unpack::{unpack, Unpacked};
use crate::error::Error;
use crate::oci::digest::{sha256_hex, HashingReader};
use crate::sys::Dir;

/// The annotation naming an image in an index.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// How a layer blob is compressed, by its media type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Packing {
    /// Plain tar.
    Tar,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
}

fn packing(media_type: &MediaType) -> Option<Packing> {
    match media_type {
        MediaType::ImageLayer | MediaType::ImageLayerNonDistributable => Some(Packing::Tar),
        MediaType::ImageLayerGzip | MediaType::ImageLayerNonDistributableGzip => {
            Some(Packing::Gzip)
        }
        MediaType::ImageLayerZstd | MediaType::ImageLayerNonDistributableZstd => {
            Some(Packing::Zstd)
        }
        MediaType::Other(t) => match t.as_str() {
            "application/vnd.docker.image.rootfs.diff.tar" => Some(Packing::Tar),
            "application/vnd.docker.image.rootfs.diff.tar.gzip" => Some(Packing::Gzip),
            "application/vnd.docker.image.rootfs.diff.tar.zstd" => Some(Packing::Zstd),
            _ => None,
        },
        _ => None,
    }
}

/// Whether `name` can name an image: 1 to 255 printable characters, no space, not an
/// option.
pub fn check_name(name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('-')
        && name.chars().all(|c| !c.is_control() && !c.is_whitespace());
    if ok {
        Ok(())
    } else {
        Err(Error::usage(format!(
            "'{}' cannot name an image: use 1 to 255 printable characters without spaces \
             (e.g. localhost/app:1)",
            name.escape_debug()
        )))
    }
}

/// A blob a descriptor names, with its digest checked for use as a file name.
fn blob_of(d: &Descriptor) -> Result<Blob, Error> {
    let digest = d.digest().to_string();
    if sha256_hex(&digest).is_none() {
        return Err(Error::invalid(format!(
            "blob {digest}: only sha256 digests are supported"
        )));
    }
    Ok(Blob {
        digest,
        size: d.size(),
        media_type: d.media_type().to_string(),
    })
}

fn ref_name(d: &Descriptor) -> Option<&str> {
    d.annotations().as_ref()?.get(REF_NAME).map(String::as_str)
}

/// The Go name of this machine's architecture, as image platforms give it.
fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// Imports the image at `path` into `store`, as `name` (else the name the archive gives).
pub fn import(
    store: &Store,
    path: &Path,
    name: Option<&str>,
    progress: &mut Progress,
) -> Result<ImageRecord, Error> {
    if let Some(n) = name {
        check_name(n)?;
    }
    let source = Source::open(path, store)?;
    let index: ImageIndex = serde_json::from_slice(&source.index(path)?).map_err(|e| {
        Error::invalid(format!(
            "'{}': its index.json is not an OCI index: {e}",
            path.display()
        ))
    })?;
    let chosen = choose(index.manifests(), name, path)?;
    let name = match name.or_else(|| ref_name(chosen)) {
        Some(n) => n.to_string(),
        None => {
            return Err(Error::usage(format!(
                "'{}' gives its image no name: name it with --name NAME",
                path.display()
            )))
        }
    };
    check_name(&name)?;
    let mut manifest_blob = blob_of(chosen)?;
    let mut manifest_bytes = source.small_blob(&manifest_blob.digest, manifest_blob.size)?;
    if *chosen.media_type() == MediaType::ImageIndex {
        // A multi-platform image: the manifest for this machine.
        let inner: ImageIndex = parse(&manifest_bytes, &manifest_blob.digest, "index")?;
        let arch = host_arch();
        let d = inner
            .manifests()
            .iter()
            .find(|d| {
                d.platform().as_ref().is_some_and(|p| {
                    p.os().to_string() == "linux" && p.architecture().to_string() == arch
                })
            })
            .ok_or_else(|| {
                Error::invalid(format!(
                    "'{}' has no image for linux/{arch}",
                    path.display()
                ))
            })?;
        manifest_blob = blob_of(d)?;
        manifest_bytes = source.small_blob(&manifest_blob.digest, manifest_blob.size)?;
    }
    let manifest: ImageManifest = parse(&manifest_bytes, &manifest_blob.digest, "manifest")?;
    let config_blob = blob_of(manifest.config())?;
    let config_bytes = source.small_blob(&config_blob.digest, config_blob.size)?;
    let config: ImageConfiguration = parse(&config_bytes, &config_blob.digest, "config")?;
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != manifest.layers().len() {
        return Err(Error::invalid(format!(
            "the config lists {} layers, the manifest {}: the image is damaged",
            diff_ids.len(),
            manifest.layers().len()
        )));
    }
    let mut layers = Vec::new();
    let count = manifest.layers().len();
    for (i, (d, diff_id)) in manifest.layers().iter().zip(diff_ids).enumerate() {
        let blob = blob_of(d)?;
        if sha256_hex(diff_id).is_none() {
            return Err(Error::invalid(format!(
                "diff id '{diff_id}' of layer {}: only sha256 digests are supported",
                i + 1
            )));
        }
        let packing = packing(d.media_type()).ok_or_else(|| {
            Error::invalid(format!(
                "layer {} has media type '{}', which is not a layer tarball",
                i + 1,
                d.media_type()
            ))
        })?;
        store_blob(store, &source, &blob)?;
        if !store.layer_dir(diff_id).is_dir() {
            let label = format!("layer {}/{count} {}", i + 1, &blob.digest[..19]);
            let done = unpack_layer(store, &blob, packing, diff_id, &label, progress)
                .map_err(|e| Error::invalid(format!("layer {} ({}): {e}", i + 1, blob.digest)))?;
            log_unpacked(i + 1, &done);
        }
        layers.push(LayerRecord {
            blob,
            diff_id: diff_id.clone(),
        });
    }
    store.put_blob(&manifest_blob.digest, &manifest_bytes)?;
    store.put_blob(&config_blob.digest, &config_bytes)?;
    Ok(ImageRecord {
        name,
        manifest: manifest_blob,
        config: config_blob,
        layers,
    })
}

fn log_unpacked(n: usize, done: &Unpacked) {
    log::info!(
        "layer {n}: {} entries, {} bytes of data",
        done.entries,
        done.bytes
    );
    if done.owners_dropped > 0 {
        log::warn!(
            "layer {n}: {} objects keep the importing user as owner: their owners' ids are \
             not this user's to give (root, or a user with ranges for them in /etc/subuid and \
             /etc/subgid, keeps them)",
            done.owners_dropped
        );
    }
    if done.xattrs_dropped > 0 {
        log::warn!(
            "layer {n}: {} xattrs were refused by the store's filesystem and left out",
            done.xattrs_dropped
        );
    }
}

fn parse<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    digest: &str,
    what: &str,
) -> Result<T, Error> {
    serde_json::from_slice(bytes)
        .map_err(|e| Error::invalid(format!("blob {digest} is not an OCI {what}: {e}")))
}

/// The descriptor to import: the only one, else the one whose name annotation is `name`.
fn choose<'a>(
    manifests: &'a [Descriptor],
    name: Option<&str>,
    path: &Path,
) -> Result<&'a Descriptor, Error> {
    match manifests {
        [] => Err(Error::invalid(format!(
            "'{}' holds no image",
            path.display()
        ))),
        [only] => Ok(only),
        many => {
            if let Some(d) = name.and_then(|n| many.iter().find(|d| ref_name(d) == Some(n))) {
                return Ok(d);
            }
            let names: Vec<&str> = many.iter().filter_map(ref_name).collect();
            Err(Error::usage(format!(
                "'{}' holds {} images ({}): pick one with --name and its name",
                path.display(),
                many.len(),
                names.join(", ")
            )))
        }
    }
}

/// Puts layer blob `blob` into the store, checked, unless it is there already.
fn store_blob(store: &Store, source: &Source, blob: &Blob) -> Result<(), Error> {
    let to = store.blob_path(&blob.digest);
    if std::fs::metadata(&to).is_ok_and(|m| m.len() == blob.size) {
        return Ok(());
    }
    if source.owned {
        // Checked against its name when the archive was unpacked.
        let from = source.blob_path(&blob.digest);
        let n = std::fs::metadata(&from)
            .map_err(|e| Error::invalid(format!("blob {} is not in the image ({e})", blob.digest)))?
            .len();
        check_blob(&blob.digest, blob.size, &blob.digest, n)?;
        return store.commit_blob(&from, &blob.digest);
    }
    let dir = store.scratch("blob")?;
    let tmp = dir.join("blob");
    let copy = || -> io::Result<(String, u64)> {
        let mut r = HashingReader::new(BufReader::new(
            source.blob(&blob.digest).map_err(io::Error::other)?,
        ));
        let mut out = File::options().write(true).create_new(true).open(&tmp)?;
        io::copy(&mut r, &mut out)?;
        out.sync_all()?;
        r.finish()
    };
    let copied = copy()
        .map_err(|e| Error::runtime(format!("cannot copy blob {}: {e}", blob.digest)))
        .and_then(|(got, n)| check_blob(&blob.digest, blob.size, &got, n))
        .and_then(|()| store.commit_blob(&tmp, &blob.digest));
    let _ = super::store::remove_tree(&dir);
    copied
}

/// Unpacks the stored blob `blob` into a new layer of the store, checked against `diff_id`.
pub(super) fn unpack_layer(
    store: &Store,
    blob: &Blob,
    packing: Packing,
    diff_id: &str,
    label: &str,
    progress: &mut Progress,
) -> Result<Unpacked, String> {
    let scratch = store.scratch("layer").map_err(|e| e.message)?;
    let result = unpack_into(store, blob, packing, diff_id, &scratch, label, progress);
    // What is left: nothing once the layer is in place, else the half-unpacked layer, which
    // goes now (else at the store's next opening).
    let _ = super::store::remove_tree(&scratch);
    result
}

fn unpack_into(
    store: &Store,
    blob: &Blob,
    packing: Packing,
    diff_id: &str,
    scratch: &Path,
    label: &str,
    progress: &mut Progress,
) -> Result<Unpacked, String> {
    let tmp = scratch.join("root");
    std::fs::create_dir(&tmp).map_err(|e| format!("cannot make '{}': {e}", tmp.display()))?;
    let root = Dir::open_root(&tmp).map_err(|e| format!("cannot open '{}': {e}", tmp.display()))?;
    let free = root
        .statfs()
        .map(|s| s.bavail.saturating_mul(s.bsize.into()))
        .map_err(|e| format!("cannot read the free space of the store: {e}"))?;
    let file = File::open(store.blob_path(&blob.digest))
        .map_err(|e| format!("cannot open the blob: {e}"))?;
    progress.start(label.to_string(), blob.size);
    let result = (|| {
        let counted = Counted::new(BufReader::new(file), progress);
        let tar: Box<dyn Read + '_> = match packing {
            Packing::Tar => Box::new(counted),
            Packing::Gzip => Box::new(flate2::read::MultiGzDecoder::new(counted)),
            Packing::Zstd => Box::new(
                zstd::stream::read::Decoder::new(counted)
                    .map_err(|e| format!("bad zstd stream: {e}"))?,
            ),
        };
        let mut diff = HashingReader::new(tar);
        let done = unpack(&mut diff, &root, store.markers, free).map_err(|e| e.to_string())?;
        let (got, _) = diff
            .finish()
            .map_err(|e| format!("the layer cannot be read to its end: {e}"))?;
        if got != diff_id {
            return Err(format!(
                "its content hashes to {got}, not to the diff id the config lists ({diff_id})"
            ));
        }
        Ok(done)
    })();
    progress.finish();
    let done = result?;
    drop(root);
    store.commit_layer(&tmp, diff_id).map_err(|e| e.message)?;
    Ok(done)
}
