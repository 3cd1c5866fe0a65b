//! Integration tests: every test mounts the real daemon (and, where overlayfs defines the
//! behaviour, the kernel overlay on the same layers) and acts on the merged directory with
//! ordinary system calls. A test that cannot mount fails; none is skipped.

mod util;

mod acl;
mod backing;
mod cache;
mod cli;
mod commit;
mod crash;
mod diff;
mod images;
mod options;
mod passthrough;
mod podman;
mod posix;
mod random_ops;
mod rootless;
mod runtime;
mod safety;
mod setid;
mod stress;
mod transport;
mod view;
mod write;
