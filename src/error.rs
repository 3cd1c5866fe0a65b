//! The error type of the command line, configuration and daemon set-up: a kind that decides
//! the exit status, and a one-line message naming the problem and the fix.

use std::fmt;

/// What went wrong, which decides the exit status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The command line or its options are malformed (exit 2).
    Usage,
    /// The command line is well-formed but names unusable directories (exit 2).
    Invalid,
    /// The request was valid but the system refused it (exit 1).
    Runtime,
    /// `overlayfuse run` could not set up the container (exit 125, as podman and docker).
    Setup,
}

/// An error with its kind and message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    /// The kind.
    pub kind: ErrorKind,
    /// One line: the problem and the fix.
    pub message: String,
}

impl Error {
    /// A malformed command line.
    pub fn usage(message: impl Into<String>) -> Error {
        Error {
            kind: ErrorKind::Usage,
            message: message.into(),
        }
    }

    /// Unusable input.
    pub fn invalid(message: impl Into<String>) -> Error {
        Error {
            kind: ErrorKind::Invalid,
            message: message.into(),
        }
    }

    /// A refusal by the system.
    pub fn runtime(message: impl Into<String>) -> Error {
        Error {
            kind: ErrorKind::Runtime,
            message: message.into(),
        }
    }

    /// A container that could not be set up.
    pub fn setup(message: impl Into<String>) -> Error {
        Error {
            kind: ErrorKind::Setup,
            message: message.into(),
        }
    }

    /// A set-up error whose message another process of the run has printed already: it has
    /// an empty message, and callers print nothing for it.
    pub fn reported() -> Error {
        Error::setup("")
    }

    /// The same message as a set-up error of `overlayfuse run`.
    pub fn into_setup(self) -> Error {
        Error::setup(self.message)
    }

    /// The process exit status for this error.
    pub fn exit_code(&self) -> i32 {
        match self.kind {
            ErrorKind::Usage | ErrorKind::Invalid => 2,
            ErrorKind::Runtime => 1,
            ErrorKind::Setup => SETUP_EXIT,
        }
    }
}

/// Exit status of `overlayfuse run` when the container could not be set up.
pub const SETUP_EXIT: i32 = 125;

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Keep it to one line whatever the source said.
        f.write_str(&self.message.replace('\n', " "))
    }
}

impl std::error::Error for Error {}
