//! The FUSE-over-io_uring transport: one queue per possible CPU, each served by a thread
//! pinned to that CPU, so a request is answered on the CPU that made it and the answer and
//! the fetch of the next request are one submission. What the ring does not carry (FORGET,
//! INTERRUPT, and every request until all queues are registered) still comes through
//! `/dev/fuse`, served by one classic thread. A READ is read by io_uring itself, straight into
//! its entry's payload, and answered in place when that completes, so reads waiting on the
//! disk overlap and do not hold up the queue.
//!
//! Memory: each queue holds [`QUEUE_DEPTH`] entries of a 288-byte header area and a payload
//! buffer as large as the largest request ([`MAX_WRITE`], 1 MiB), so the ring takes
//! CPUs × depth × 1 MiB of address space; only pages a request or an answer touched become
//! resident.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use super::abi::{self, InHeader, PutFields};
use super::reply::Reply;
use super::request::{Op, Request};
use super::tally::Tally;
use super::{OverlayFs, MAX_WRITE};
use crate::sys::uring::{Delivered, Event, FuseQueue, OP_IN};
use crate::sys::{process, Errno};

/// Entries per queue: reads in flight on the ring leave the others free for the requests
/// behind them (the kernel's readahead sends several READs at once).
pub const QUEUE_DEPTH: usize = 4;

/// The serving threads of a started ring, one per queue.
#[derive(Debug)]
pub struct Ring {
    /// The queue threads; each returns, with the count of requests it served, when the
    /// connection ends.
    pub threads: Vec<JoinHandle<io::Result<Tally>>>,
}

/// Sets up and registers one queue per possible CPU on `device`, each in its own pinned
/// thread, and starts serving `fs` on them. Returns once every queue is registered, or the
/// first error (the threads started so far end with the connection).
pub fn start(fs: &Arc<OverlayFs>, device: &Arc<OwnedFd>) -> Result<Ring, Errno> {
    let cpus = process::possible_cpus();
    let (report, reports) = mpsc::channel::<Result<(), Errno>>();
    let mut threads = Vec::with_capacity(cpus);
    for cpu in 0..cpus {
        let (fs, device, report) = (fs.clone(), device.clone(), report.clone());
        let thread = std::thread::Builder::new()
            .name(format!("uring-{cpu}"))
            .spawn(move || {
                // A CPU that is possible but offline gets no requests; its queue need not
                // run there.
                if let Err(e) = process::pin_to_cpu(cpu) {
                    log::debug!("queue {cpu}: not pinned ({e})");
                }
                let queue =
                    FuseQueue::new(device.as_fd(), cpu as u16, QUEUE_DEPTH, MAX_WRITE as usize)
                        .and_then(|mut q| q.register().map(|()| q));
                match queue {
                    Ok(mut q) => {
                        let _ = report.send(Ok(()));
                        serve_queue(&fs, &mut q)
                    }
                    Err(e) => {
                        let _ = report.send(Err(e));
                        Ok(Tally::default())
                    }
                }
            })
            .map_err(crate::sys::io_errno)?;
        threads.push(thread);
    }
    drop(report);
    for _ in 0..cpus {
        match reports.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(Errno::EIO),
        }
    }
    log::info!(
        "transport: io_uring, {cpus} queues (one per CPU) of {QUEUE_DEPTH} entries with \
         {} KiB buffers, and one /dev/fuse thread",
        MAX_WRITE / 1024
    );
    Ok(Ring { threads })
}

/// A READ being read on the ring into its entry's payload.
struct PendingRead {
    file: Arc<std::fs::File>,
    offset: u64,
    len: usize,
}

/// Answers the READ of `d`'s entry once its ring read completed with `result`.
fn finish_read(
    queue: &mut FuseQueue,
    reads: &mut [Option<PendingRead>],
    d: &Delivered,
    result: Result<usize, Errno>,
    header: &mut Vec<u8>,
) -> io::Result<()> {
    let Some(read) = reads[d.slot].take() else {
        return Err(io::Error::other(
            "a ring read completed for an entry with none",
        ));
    };
    // A read short of what was asked is finished here (FUSE reads are short only at the end
    // of the file); an error is the answer.
    let result = match result {
        Ok(n) if n > 0 && n < read.len => queue.read_rest(d, &read.file, read.offset, n, read.len),
        other => other,
    };
    let (error, len) = match result {
        Ok(n) => (0, n),
        Err(e) => (-(e as i32), 0),
    };
    header.clear();
    header.put_u32((abi::OUT_HEADER + len) as u32);
    header.put_u32(error as u32);
    header.put_u64(d.commit_id);
    queue.answer_in_place(d, header, len)?;
    Ok(())
}

/// Serves the requests of one queue until the connection ends; returns what it served.
fn serve_queue(fs: &OverlayFs, queue: &mut FuseQueue) -> io::Result<Tally> {
    let mut reply = Reply::default();
    let mut header = Vec::with_capacity(abi::OUT_HEADER);
    let mut served = Tally::default();
    let mut reads: Vec<Option<PendingRead>> = (0..QUEUE_DEPTH).map(|_| None).collect();
    loop {
        let d = match queue.wait()? {
            Event::Ended => return Ok(served),
            Event::Read(d, result) => {
                finish_read(queue, &mut reads, &d, result, &mut header)?;
                continue;
            }
            Event::Request(d) => d,
        };
        reply.reset();
        let unique = {
            let (area, payload) = queue.request(&d);
            let Some(h) = InHeader::parse(area) else {
                return Err(io::Error::other("a ring entry without a request header"));
            };
            served.count(h.opcode);
            let fixed = abi::fixed_size(h.opcode).min(area.len() - OP_IN);
            match Request::parse(h, &area[OP_IN..OP_IN + fixed], payload) {
                // A READ reads straight into the entry's payload, on the ring: the queue
                // goes on with other requests while it waits for the disk.
                Ok(Request {
                    op: Op::Read { fh, offset, size },
                    ..
                }) => match fs.core().file_to_read(fh) {
                    Ok(file) => {
                        let pending = PendingRead {
                            file,
                            offset,
                            len: size as usize,
                        };
                        queue.read_into(&d, pending.file.clone(), offset, pending.len)?;
                        reads[d.slot] = Some(pending);
                        continue;
                    }
                    Err(e) => reply.error(e),
                },
                Ok(req) => fs.handle(&req, &mut reply),
                Err(e) => reply.error(e),
            }
            h.unique
        };
        // Every ring request needs an answer to free its entry; the kernel sends the
        // unanswered kinds (FORGET) on /dev/fuse, so this is only a guard.
        if reply.is_silent() || reply.len() > queue.payload_size() {
            reply.reset();
            reply.error(Errno::EIO);
        }
        let (error, body, data) = reply.parts();
        header.clear();
        header.put_u32((abi::OUT_HEADER + reply.len()) as u32);
        header.put_u32(error as u32);
        header.put_u64(unique);
        queue.answer(&d, &header, &[body, data])?;
    }
}
