//! OCI image pieces: layer tarballs written from an upper layer ([`layer`]), with the tar
//! writer they need ([`tar`]), the compressions the image format names and the digests it
//! names blobs by ([`digest`]).

pub mod digest;
pub mod layer;
pub mod tar;

use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Where a file for `out` is built before it is renamed over `out`: beside it, on the same
/// filesystem, under a hidden name of this process.
pub fn partial_path(out: &Path) -> PathBuf {
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = out.file_name().unwrap_or_default().to_string_lossy();
    dir.join(format!(".{name}.partial-{}", std::process::id()))
}

/// How a layer file is compressed, by its name: `.tar.gz`/`.tgz` gzip, `.tar.zst` zstd,
/// `.tar` none; `None` for another name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// Plain tar (`application/vnd.oci.image.layer.v1.tar`).
    None,
    /// gzip (`+gzip`).
    Gzip,
    /// zstd (`+zstd`).
    Zstd,
}

impl Compression {
    /// The compression a file named `path` asks for.
    pub fn of(path: &Path) -> Option<Compression> {
        let name = path.file_name()?.to_str()?;
        if name.ends_with(".tar.gz") || name.ends_with(".tgz") {
            Some(Compression::Gzip)
        } else if name.ends_with(".tar.zst") {
            Some(Compression::Zstd)
        } else if name.ends_with(".tar") {
            Some(Compression::None)
        } else {
            None
        }
    }

    /// Runs `write` on a writer that compresses into `out`, then ends the stream. The
    /// output depends only on what is written (gzip's header carries no time or name).
    pub fn wrap<W: Write, T, E: From<io::Error>>(
        self,
        out: W,
        write: impl FnOnce(&mut dyn Write) -> Result<T, E>,
    ) -> Result<(T, W), E> {
        match self {
            Compression::None => {
                let mut out = out;
                let t = write(&mut out)?;
                Ok((t, out))
            }
            Compression::Gzip => {
                let mut enc = flate2::GzBuilder::new()
                    .mtime(0)
                    .write(out, flate2::Compression::default());
                let t = write(&mut enc)?;
                Ok((t, enc.finish()?))
            }
            Compression::Zstd => {
                let mut enc = zstd::stream::write::Encoder::new(out, 3)?;
                let t = write(&mut enc)?;
                Ok((t, enc.finish()?))
            }
        }
    }
}
