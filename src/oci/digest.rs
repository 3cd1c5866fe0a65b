//! Content digests, as the OCI image format names blobs: `sha256:` and 64 hex digits.

use std::io::{self, Write};

use sha2::{Digest, Sha256};

/// A writer that passes everything on to `W` and hashes it on the way.
pub struct Hashing<W: Write> {
    inner: W,
    hash: Sha256,
}

impl<W: Write> Hashing<W> {
    /// Hashes what is written to `inner`.
    pub fn new(inner: W) -> Hashing<W> {
        Hashing {
            inner,
            hash: Sha256::new(),
        }
    }

    /// The digest of everything written (`sha256:...`), and the writer back.
    pub fn finish(self) -> (String, W) {
        (format_digest(&self.hash.finalize()), self.inner)
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn format_digest(bytes: &[u8]) -> String {
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_digest_of_nothing_is_the_known_one() {
        let (d, _) = Hashing::new(Vec::new()).finish();
        assert_eq!(
            d,
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let mut h = Hashing::new(Vec::new());
        h.write_all(b"abc").unwrap();
        let (d, out) = h.finish();
        assert_eq!(out, b"abc");
        assert!(d.starts_with("sha256:ba7816bf"));
    }
}
