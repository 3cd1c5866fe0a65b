//! `overlayfuse commit`: an upper layer written as an OCI layer tarball
//! ([`crate::oci::layer`]), compressed as the file name says, and put in place atomically;
//! its digest and diff id are printed. The bytes written show on stderr when it is a
//! terminal.

use std::fs::File;
use std::io::BufWriter;

use crate::cli::CommitArgs;
use crate::diff::open_layers;
use crate::error::Error;
use crate::image::progress::{CountedWriter, Progress};
use crate::oci::digest::Hashing;
use crate::oci::layer::{write_layer, LayerError};
use crate::oci::{partial_path, Compression};

/// Writes the layer of `args.upper` over `args.lower` to `args.output`.
pub fn run(args: &CommitArgs) -> Result<(), Error> {
    let out = &args.output;
    let compression = Compression::of(out).ok_or_else(|| {
        Error::usage(format!(
            "-o '{}': the name must end in .tar, .tar.gz (or .tgz) or .tar.zst, which says \
             how to compress the layer",
            out.display()
        ))
    })?;
    let (upper, lowers) = open_layers(&args.lower, &args.upper)?;
    let tmp = partial_path(out);
    let mut progress = Progress::for_stderr();
    let written = (|| -> Result<_, LayerError> {
        // A new file only: a name planted there (a symlink) is never followed.
        let created = File::options().write(true).create_new(true).open(&tmp)?;
        progress.start(format!("writing {}", out.display()), 0);
        let counted = CountedWriter::new(BufWriter::new(created), &mut progress);
        let file = Hashing::new(counted);
        let ((written, diff_id), file) = compression.wrap(file, |w| {
            let mut tar = Hashing::new(w);
            let written = write_layer(&upper, &lowers, &mut tar)?;
            Ok::<_, LayerError>((written, tar.finish().0))
        })?;
        let (digest, counted) = file.finish();
        let buf = counted.into_inner();
        let file = buf
            .into_inner()
            .map_err(|e| LayerError::Write(e.into_error()))?;
        file.sync_all()?;
        Ok((written, digest, diff_id))
    })();
    progress.finish();
    let (written, digest, diff_id) = match written {
        Ok(w) => w,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(match e {
                LayerError::Read(path, errno) => Error::runtime(format!(
                    "cannot read '/{path}' of the upper layer '{}': {errno}",
                    args.upper.display()
                )),
                LayerError::Write(e) => {
                    Error::runtime(format!("cannot write '{}': {e}", out.display()))
                }
            });
        }
    };
    std::fs::rename(&tmp, out).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::runtime(format!("cannot put '{}' in place: {e}", out.display()))
    })?;
    if written.sockets > 0 {
        log::warn!(
            "{} socket(s) left out of the layer: a tar archive cannot hold them",
            written.sockets
        );
    }
    log::info!("{}: {} entries", out.display(), written.entries);
    // The blob's digest (of the file as written) and its diff id (of the tar inside).
    println!("digest {digest}\ndiff_id {diff_id}");
    Ok(())
}
