//! [`Link`]: one-line messages between two processes of a run, over a socket pair made
//! before the fork.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;

use crate::error::Error;

/// One end of a socket pair, read and written a line at a time.
#[derive(Debug)]
pub struct Link {
    reader: BufReader<UnixStream>,
}

/// A request's answer when it is refused: the other side has reported why already.
pub const REFUSED: &str = "refused";

impl Link {
    /// A connected pair of ends.
    pub fn pair() -> Result<(Link, Link), Error> {
        let (a, b) = UnixStream::pair()
            .map_err(|e| Error::setup(format!("cannot make a socket pair: {e}")))?;
        Ok((Link::new(a), Link::new(b)))
    }

    fn new(stream: UnixStream) -> Link {
        Link {
            reader: BufReader::new(stream),
        }
    }

    /// Sends one line.
    pub fn send(&mut self, line: &str) -> Result<(), Error> {
        writeln!(self.reader.get_mut(), "{line}")
            .map_err(|e| Error::setup(format!("the other side of the run went away: {e}")))
    }

    /// The next line, or `None` when the other side closed its end.
    pub fn receive(&mut self) -> Option<String> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(n) if n > 0 => Some(line.trim_end_matches('\n').to_owned()),
            _ => None,
        }
    }

    /// Sends `request` and waits for "ok". Anything else is an error whose message the other
    /// side has printed already, so it is empty here.
    pub fn ask(&mut self, request: &str) -> Result<(), Error> {
        self.send(request)?;
        match self.receive().as_deref() {
            Some("ok") => Ok(()),
            _ => Err(Error::reported()),
        }
    }
}
