//! overlayfuse: a union filesystem in userspace with the semantics of the Linux kernel's
//! overlayfs.
//!
//! Data flows one way (DESIGN.md §5): [`cli`] reads argv, [`config`] validates it (pure),
//! [`preflight`] checks the directories, [`fs`] is the overlay core over layer root
//! descriptors, [`fuse`] adapts it to the kernel, [`daemon`] runs the mount. [`runtime`] is
//! `overlayfuse run`, which sees only the merged directory. Every `unsafe` and raw system
//! call lives in [`sys`].

#![deny(missing_docs)]

pub mod claim;
pub mod cli;
pub mod commit;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod diff;
pub mod error;
pub mod features;
pub mod fs;
pub mod fuse;
pub mod image;
pub mod logger;
pub mod manual;
pub mod oci;
pub mod preflight;
pub mod runtime;
pub mod sys;
