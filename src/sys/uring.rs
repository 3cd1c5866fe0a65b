//! One queue of FUSE over io_uring (Linux 6.14): an io_uring whose entries are
//! `IORING_OP_URING_CMD` commands on the `/dev/fuse` descriptor. Each entry owns a header
//! area (`struct fuse_uring_req_header`: in/out header, op header, entry info) and a payload
//! buffer, registered with the kernel by `REGISTER`; the kernel fills them with a request and
//! completes the command; `COMMIT_AND_FETCH` sends the answer from the same buffers and
//! re-arms the entry for the next request.
//!
//! The buffers are boxed and never move or shrink while the ring lives, and the ring is
//! dropped (cancelling every command) before them: that is what makes the submissions sound.

use std::fs::File;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::Arc;

use io_uring::{cqueue, opcode, squeue, types, IoUring};

use super::Errno;

/// `FUSE_IO_URING_CMD_REGISTER`.
const CMD_REGISTER: u32 = 1;
/// `FUSE_IO_URING_CMD_COMMIT_AND_FETCH`.
const CMD_COMMIT_AND_FETCH: u32 = 2;
/// `struct fuse_uring_req_header`: 128 bytes in/out header, 128 op header, 32 entry info.
pub const HEADER_AREA: usize = 288;
/// Where the op header starts in the header area.
pub const OP_IN: usize = 128;
/// Where `struct fuse_uring_ent_in_out` starts: flags, commit_id, payload_sz.
const ENT_IN_OUT: usize = 256;
/// Offset of an SQE's `len` field: the count of iovecs a `REGISTER` carries.
const SQE_LEN: usize = 24;

/// The buffers of one ring entry.
struct Slot {
    header: Box<[u8; HEADER_AREA]>,
    payload: Box<[u8]>,
    iov: Box<[libc::iovec; 2]>,
    /// A read into the payload in flight: the file it reads (kept open until it completes),
    /// and the request it answers.
    reading: Option<(Arc<File>, Delivered)>,
}

/// `user_data` bit of a read into an entry's payload (the low bits hold the entry).
const READ: u64 = 1 << 62;

/// One request delivered on a queue: where its buffers are, and its commit id.
#[derive(Debug, Clone, Copy)]
pub struct Delivered {
    /// The entry holding it.
    pub slot: usize,
    /// The id to commit its answer under (the request's `unique`).
    pub commit_id: u64,
    /// Bytes of payload the kernel wrote.
    pub payload_len: usize,
}

/// What a wait on the queue gave.
#[derive(Debug)]
pub enum Event {
    /// A request is in an entry's buffers.
    Request(Delivered),
    /// A read started by [`FuseQueue::read_into`] completed: bytes read, or an errno.
    Read(Delivered, Result<usize, Errno>),
    /// The connection ended (unmounted or aborted): the queue is done.
    Ended,
}

/// One FUSE queue: its io_uring and its entries.
pub struct FuseQueue {
    // Declared first: dropped (and its commands cancelled) before the buffers below.
    ring: IoUring<squeue::Entry128, cqueue::Entry>,
    slots: Vec<Slot>,
    /// Completions seen while registering, not yet handed out.
    early: Vec<cqueue::Entry>,
    device: i32,
    qid: u16,
}

impl std::fmt::Debug for FuseQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FuseQueue")
            .field("qid", &self.qid)
            .field("depth", &self.slots.len())
            .finish()
    }
}

fn command(device: i32, op: u32, qid: u16, commit_id: u64) -> opcode::UringCmd80 {
    // struct fuse_uring_cmd_req: flags, commit_id, qid, padding.
    let mut cmd = [0u8; 80];
    cmd[8..16].copy_from_slice(&commit_id.to_ne_bytes());
    cmd[16..18].copy_from_slice(&qid.to_ne_bytes());
    opcode::UringCmd80::new(types::Fd(device), op).cmd(cmd)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_ne_bytes(v)
}

impl FuseQueue {
    /// Sets up queue `qid` on `device` with `depth` entries of `payload` bytes each. The
    /// descriptor must outlive the queue.
    pub fn new(
        device: BorrowedFd<'_>,
        qid: u16,
        depth: usize,
        payload: usize,
    ) -> Result<FuseQueue, Errno> {
        let ring = IoUring::<squeue::Entry128, cqueue::Entry>::builder()
            .setup_single_issuer()
            .build((2 * depth as u32).next_power_of_two())
            .map_err(super::io_errno)?;
        let slots = (0..depth)
            .map(|_| {
                let mut header = Box::new([0u8; HEADER_AREA]);
                let mut payload = vec![0u8; payload].into_boxed_slice();
                let iov = Box::new([
                    libc::iovec {
                        iov_base: header.as_mut_ptr().cast(),
                        iov_len: HEADER_AREA,
                    },
                    libc::iovec {
                        iov_base: payload.as_mut_ptr().cast(),
                        iov_len: payload.len(),
                    },
                ]);
                Slot {
                    header,
                    payload,
                    iov,
                    reading: None,
                }
            })
            .collect();
        Ok(FuseQueue {
            ring,
            slots,
            early: Vec::new(),
            device: device.as_raw_fd(),
            qid,
        })
    }

    /// Registers every entry with the kernel. Errors the kernel reports at once (a payload
    /// buffer too small, the ring turned off) come back here.
    pub fn register(&mut self) -> Result<(), Errno> {
        for i in 0..self.slots.len() {
            let iov = self.slots[i].iov.as_ptr() as u64;
            let entry = command(self.device, CMD_REGISTER, self.qid, 0)
                .addr(Some(iov))
                .build()
                .user_data(i as u64);
            // The crate has no setter for the SQE's `len`; REGISTER needs it to be 2.
            // SAFETY: Entry128 is `repr(C)` over the kernel's 128-byte SQE (plain integers),
            // so it and [u8; 128] have one layout; `len` is the u32 at byte 24.
            let mut raw: [u8; 128] = unsafe { std::mem::transmute(entry) };
            raw[SQE_LEN..SQE_LEN + 4].copy_from_slice(&2u32.to_ne_bytes());
            // SAFETY: as above, the bytes go back into the type they came from.
            let entry: squeue::Entry128 = unsafe { std::mem::transmute(raw) };
            self.push(&entry)?;
        }
        self.ring.submit().map_err(super::io_errno)?;
        // A refused REGISTER completes at once; accepted ones complete with requests.
        let done: Vec<cqueue::Entry> = self.ring.completion().collect();
        for cqe in done {
            if cqe.result() < 0 {
                return Err(Errno::from_raw(-cqe.result()));
            }
            self.early.push(cqe);
        }
        Ok(())
    }

    fn push(&mut self, entry: &squeue::Entry128) -> Result<(), Errno> {
        // SAFETY: the entry points at this queue's boxed iovecs and buffers, which live as
        // long as the ring and do not move, and (a read) at a file its slot keeps open until
        // the read completes; the kernel uses them only while the entry is pending, and the
        // ring is dropped before them.
        unsafe { self.ring.submission().push(entry) }.map_err(|_| Errno::EBUSY)
    }

    /// Submits the answers queued so far and waits for the next request.
    pub fn wait(&mut self) -> Result<Event, Errno> {
        let cqe = loop {
            if let Some(cqe) = self.early.pop() {
                break cqe;
            }
            if let Some(cqe) = self.ring.completion().next() {
                break cqe;
            }
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) => return Err(super::io_errno(e)),
            }
        };
        if cqe.user_data() & READ != 0 {
            let slot = (cqe.user_data() & !READ) as usize;
            let Some((_, d)) = self.slots[slot].reading.take() else {
                return Err(Errno::EIO);
            };
            let r = cqe.result();
            return Ok(Event::Read(
                d,
                if r < 0 {
                    Err(Errno::from_raw(-r))
                } else {
                    Ok(r as usize)
                },
            ));
        }
        match cqe.result() {
            0 => {}
            r if [
                libc::ENOTCONN,
                libc::ECANCELED,
                libc::ENODEV,
                libc::ECONNABORTED,
            ]
            .contains(&-r) =>
            {
                return Ok(Event::Ended)
            }
            r => return Err(Errno::from_raw(-r)),
        }
        let slot = cqe.user_data() as usize;
        let header = &self.slots[slot].header;
        let payload_len = u64_at(&header[..], ENT_IN_OUT + 16) as u32 as usize;
        Ok(Event::Request(Delivered {
            slot,
            commit_id: u64_at(&header[..], ENT_IN_OUT + 8),
            payload_len: payload_len.min(self.slots[slot].payload.len()),
        }))
    }

    /// The header area and the payload of a delivered request.
    pub fn request(&self, d: &Delivered) -> (&[u8], &[u8]) {
        let s = &self.slots[d.slot];
        (&s.header[..], &s.payload[..d.payload_len])
    }

    /// The size of each entry's payload buffer: the longest answer it can carry.
    pub fn payload_size(&self) -> usize {
        self.slots.first().map_or(0, |s| s.payload.len())
    }

    /// Starts reading `len` bytes of `file` at `offset` into the payload of the entry of `d`
    /// (a READ request), to be answered in place when [`Event::Read`] reports it done.
    pub fn read_into(
        &mut self,
        d: &Delivered,
        file: Arc<File>,
        offset: u64,
        len: usize,
    ) -> Result<(), Errno> {
        let s = &mut self.slots[d.slot];
        let len = len.min(s.payload.len());
        let entry = opcode::Read::new(
            types::Fd(file.as_raw_fd()),
            s.payload.as_mut_ptr(),
            len as u32,
        )
        .offset(offset)
        .build()
        .user_data(READ | d.slot as u64);
        s.reading = Some((file, *d));
        self.push(&squeue::Entry128::from(entry))?;
        self.ring.submit().map_err(super::io_errno)?;
        Ok(())
    }

    /// Reads synchronously into the payload of `d`'s entry, after `done` bytes a ring read
    /// already put there (a short read before the end of the file is finished this way).
    pub fn read_rest(
        &mut self,
        d: &Delivered,
        file: &File,
        offset: u64,
        done: usize,
        len: usize,
    ) -> Result<usize, Errno> {
        use std::os::unix::fs::FileExt;
        let s = &mut self.slots[d.slot];
        let len = len.min(s.payload.len());
        let mut done = done;
        while done < len {
            match file.read_at(&mut s.payload[done..len], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(super::io_errno(e)),
            }
        }
        Ok(done)
    }

    /// Queues the answer to a READ whose `len` bytes of data are already in the entry's
    /// payload, behind `out_header`.
    pub fn answer_in_place(
        &mut self,
        d: &Delivered,
        out_header: &[u8],
        len: usize,
    ) -> Result<(), Errno> {
        let s = &mut self.slots[d.slot];
        s.header[..out_header.len()].copy_from_slice(out_header);
        s.header[ENT_IN_OUT + 16..ENT_IN_OUT + 20].copy_from_slice(&(len as u32).to_ne_bytes());
        self.commit(d)
    }

    fn commit(&mut self, d: &Delivered) -> Result<(), Errno> {
        let entry = command(self.device, CMD_COMMIT_AND_FETCH, self.qid, d.commit_id)
            .build()
            .user_data(d.slot as u64);
        if self.push(&entry).is_err() {
            // The submission queue is deeper than the entries, so it cannot be full; submit
            // and retry all the same.
            self.ring.submit().map_err(super::io_errno)?;
            self.push(&entry)?;
        }
        Ok(())
    }

    /// Queues the answer to a delivered request: `out_header` into the header area, `parts`
    /// one after the other into the payload, then `COMMIT_AND_FETCH`, which also re-arms the
    /// entry. It is submitted at the next [`FuseQueue::wait`].
    pub fn answer(
        &mut self,
        d: &Delivered,
        out_header: &[u8],
        parts: &[&[u8]],
    ) -> Result<(), Errno> {
        let s = &mut self.slots[d.slot];
        let total: usize = parts.iter().map(|p| p.len()).sum();
        if total > s.payload.len() {
            return Err(Errno::EOVERFLOW);
        }
        s.header[..out_header.len()].copy_from_slice(out_header);
        let mut at = 0;
        for p in parts {
            s.payload[at..at + p.len()].copy_from_slice(p);
            at += p.len();
        }
        s.header[ENT_IN_OUT + 16..ENT_IN_OUT + 20].copy_from_slice(&(total as u32).to_ne_bytes());
        self.commit(d)
    }
}
