#!/usr/bin/env python3
"""Side-by-side benchmark: the kernel overlay, overlayfuse, fuse-overlayfs and extra programs.

Builds identical lower layers once from a seed, then runs every selected workload round by
round, interleaved: for each round, for each workload, each contender in turn (the contender
order rotates by one every round). Every timed run gets a fresh mount (so a fresh daemon);
writable workloads also get a fresh, empty upper and work dir per run. The lowers are shared
and never written: a checksum of their (path, size, mtime) lists is compared before and after
the run, and the run fails loudly if they changed.

Needs root (kernel overlay mounts, drop_caches) and Python 3 only. Usage:
    sudo tools/bench.py [--rounds 5] [--only copy-up,delete] [--quick] [--ours PATH]
                        [--extra NAME=PATH ...] [--workdir DIR] [--out FILE.md]
                        [--svg FILE.svg] [--json FILE.json] [--writable]
                        [--lower-passthrough] [--no-uring] [size flags]

Contenders: "kernel" (mount -t overlay), "overlayfuse" (--ours, default
target/release/overlayfuse, with uring=off: requests read from /dev/fuse; copy it elsewhere
first if the tree may be rebuilt during the run), "overlayfuse-uring" (the same binary with
uring=on: FUSE over io_uring; /sys/module/fuse/parameters/enable_uring is set to 1 for the run
and put back after; --no-uring leaves it out), "overlayfuse-lowerpt" with --lower-passthrough
(uring=off,lower_passthrough: lower files of writable mounts read through passthrough),
"fuse-overlayfs" (if on PATH) and each --extra NAME=PATH (fuse-overlayfs command line:
PROG -o lowerdir=A:B[,upperdir=U,workdir=W] MNT, daemonizing once the mount is live).

Workloads (--only takes these group names or exact row names; sizes are the defaults):
  meta-stat     lstat every entry of a 2-lower tree of 50,000 files in 1,000 dirs; cold, warm
  readdir-big   list one merged dir of 20,000 entries, a third in each lower and a third in the
                upper (writable mount, upper pre-populated before mounting); cold
  seq-read      read a 1 GiB lower file with 1 MiB reads; cold, warm
  seq-write     write a new 1 GiB file with 1 MiB writes, then fsync (timed)
  rand-read     20,000 random 4 KiB preads per job over the 1 GiB file, 1 and 2 jobs; cold
  copy-up       open(O_APPEND) + 1-byte write + close of a 512 MiB lower file, with the copy-up
                fsynced (default) and not (kernel and overlayfuse: volatile; others: fsync=0)
  small-files   untar 10,000 files of 1-8 KiB into the mount, then sync (timed)
  delete        rm -rf a lower tree of 10,000 files (whiteouts)
  mixed         cp -a 2,000 files from a lower dir to a new dir, find -newer, grep -r
  memory        daemon peak RSS (VmHWM) after meta-stat, and after lstat of every entry of a
                separate 1,000,000-file tree (--million-files); "-" for the kernel
  scale         lstat of every entry (by name), and listing of every dir, of 2,000 files in 20
                dirs spread over 1, 16 and 128 lowers (each file in a random layer, every dir
                in every layer); cold; writable mounts with an empty upper, because the
                kernel refuses a read-only mount of a single lower
Cold runs do `sync; echo 3 > /proc/sys/vm/drop_caches` before the timed part; warm runs run
the workload once untimed right before the timed run. Writable workloads are cold.

Output: one table, per contender "median (min..max)" in seconds (memory rows: MiB), and per
non-kernel contender "speed vs kernel" = kernel median time / contender median time (1.00 is
kernel speed, higher is better; the same convention for every time row; no ratio for memory).
Then, for the overlayfuse contenders (run in the foreground, their log kept), the median count
of FUSE requests from mount to unmount and per file the workload goes through.
"""

import argparse
import dataclasses
import hashlib
import html
import io
import json
import os
import platform
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from typing import Callable, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OURS = os.path.normpath(os.path.join(HERE, "..", "target", "release", "overlayfuse"))
MIB = 1 << 20

# Sizes: (flag, default, --quick default, help)
SIZES = [
    ("files", 50000, 2000, "meta-stat tree: files"),
    ("dirs", 1000, 40, "meta-stat tree: dirs"),
    ("big-dir", 20000, 1500, "readdir-big: entries of the merged dir"),
    ("file-mib", 1024, 32, "seq-read/seq-write/rand-read file size, MiB"),
    ("rand-reads", 20000, 500, "rand-read: 4 KiB reads per job"),
    ("copy-mib", 512, 16, "copy-up: lower file size, MiB"),
    ("small-files", 10000, 300, "small-files: files in the tarball"),
    ("delete-files", 10000, 300, "delete: files in the lower tree"),
    ("mixed-files", 2000, 100, "mixed: files copied"),
    ("million-files", 1000000, 20000, "memory: files of the big tree"),
    ("million-dirs", 1000, 100, "memory: dirs of the big tree"),
    ("scale-files", 2000, 200, "scale: files"),
    ("scale-dirs", 20, 4, "scale: dirs"),
]

RING_SWITCH = "/sys/module/fuse/parameters/enable_uring"
MOUNTED = set()  # mount points currently mounted by us, for the cleanup
DAEMONS = {}  # pid -> Popen of the foreground daemons we started
COUNTS = re.compile(r"unmounted after (\d+) requests \((\d+) through io_uring, "
                    r"(\d+) through /dev/fuse\)")


@dataclasses.dataclass
class Contender:
    name: str
    kind: str  # "kernel" or "fuse"
    prog: str = ""
    nofsync: str = "volatile"  # mount option turning off the copy-up fsync
    log: str = ""
    opts: str = ""  # extra mount options (overlayfuse's transport, lower_passthrough)
    counts: bool = False  # run in the foreground and read the request counts it logs


@dataclasses.dataclass
class Workload:
    name: str  # row name
    group: str  # --only name
    fn: Callable  # fn(mnt) -> value compared across contenders
    layers: str = "main"  # key of the layer set
    needs: tuple = ()  # parts of the layer sets to build
    cold: bool = True
    warm: bool = False
    writable: bool = False
    nofsync: bool = False
    prepare: Optional[Callable] = None  # prepare(upper) before mounting
    files: int = 0  # objects the workload goes through (for requests per file)
    check: Optional[Callable] = None  # check(mnt) after the timed part -> value
    mem: bool = False  # measures the daemon's VmHWM (MiB) instead of time


def sh(cmd, ok=(0,), **kw):
    """Run a command, stdout captured; raise RuntimeError with its stderr on a bad exit."""
    r = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, **kw)
    if r.returncode not in ok:
        raise RuntimeError(f"{' '.join(cmd[:3])}... exit {r.returncode}: {r.stderr.strip()[-300:]}")
    return r.stdout


def drop_caches():
    """Flush dirty data and drop the page, dentry and inode caches."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3")


def mkfile(path, data=b""):
    """Create (or truncate) a file holding `data`, with as few syscalls as possible."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        if data:
            os.write(fd, data)
    finally:
        os.close(fd)


def big_file(path, mib, rng):
    """Write a file of `mib` MiB of pseudo-random data (one random MiB repeated)."""
    chunk = rng.randbytes(MIB)
    with open(path, "wb") as f:
        for _ in range(mib):
            f.write(chunk)


def spread_tree(layers, sub, nfiles, ndirs, rng, maxsize=0, content=None):
    """`nfiles` files in `ndirs` dirs under LAYER/sub, each file in a random layer, every dir
    in every layer. Returns the relative paths of the dirs and files (dirs first)."""
    ndirs = max(1, min(ndirs, nfiles))
    dirs = [os.path.join(sub, f"d{d:04d}") for d in range(ndirs)]
    for layer in layers:
        for d in dirs:
            os.makedirs(os.path.join(layer, d), exist_ok=True)
    files = []
    for i in range(nfiles):
        rel = os.path.join(dirs[i % ndirs], f"f{i:07d}")
        data = content(i) if content else b"x" * rng.randint(0, maxsize)
        mkfile(os.path.join(rng.choice(layers), rel), data)
        files.append(rel)
    return dirs + files


def build(work, a, needs, D):
    """Build the layer sets and inputs the selected workloads need, under WORK/layers.
    Every part draws from its own seeded generator, so it does not depend on the selection.
    Fills D (layer sets, name lists, offsets); returns the roots to checksum."""
    def rng(part):
        return random.Random(f"{a.seed}-{part}")
    L = os.path.join(work, "layers")
    top, bottom = os.path.join(L, "main", "top"), os.path.join(L, "main", "bottom")
    for d in (top, bottom):
        os.makedirs(d)
    D["main"] = [top, bottom]
    if "tree" in needs:
        spread_tree([top, bottom], "tree", a.files, a.dirs, rng("tree"), maxsize=64)
    if "big" in needs:
        for d in (top, bottom):
            os.mkdir(os.path.join(d, "big"))
        D["big-upper"] = []
        for i in range(a.big_dir):
            if i % 3 == 2:
                D["big-upper"].append(f"e{i:06d}")
            else:
                mkfile(os.path.join(top if i % 3 else bottom, "big", f"e{i:06d}"))
    if "blob" in needs:
        big_file(os.path.join(bottom, "blob"), a.file_mib, rng("blob"))
        r, n = rng("offsets"), a.file_mib * MIB // 4096
        D["offsets"] = [[r.randrange(n) * 4096 for _ in range(a.rand_reads)] for _ in range(2)]
    if "copy" in needs:
        big_file(os.path.join(bottom, "copyme"), a.copy_mib, rng("copy"))
    if "del" in needs:
        spread_tree([top, bottom], "del", a.delete_files, a.delete_files // 100, rng("del"), 64)
    if "src" in needs:
        r = rng("src")
        words = [b"alpha", b"beta", b"gamma", b"delta", b"overlay", b"layer", b"merge"]

        def text(i):
            body = b" ".join(r.choice(words) for _ in range(r.randint(150, 1200)))
            return body + (b" needle\n" if i % 7 == 0 else b"\n")
        rels = spread_tree([top, bottom], "src", a.mixed_files, a.mixed_files // 100, r,
                           content=text)
        base = 1_600_000_000
        for i, rel in enumerate(p for p in rels if os.path.basename(p).startswith("f")):
            for layer in (top, bottom):
                if os.path.exists(os.path.join(layer, rel)):
                    os.utime(os.path.join(layer, rel), (base + i, base + i))
        mkfile(os.path.join(top, "ref"))
        os.utime(os.path.join(top, "ref"), (base + a.mixed_files // 2 + 0.5,) * 2)
    if "tar" in needs:
        r = rng("tar")
        D["tarball"] = os.path.join(work, "small.tar")
        with tarfile.open(D["tarball"], "w") as t:
            for i in range(a.small_files):
                data = r.randbytes(r.randint(1024, 8192))
                info = tarfile.TarInfo(f"small/d{i // 100:03d}/f{i:06d}")
                info.size, info.mode, info.mtime = len(data), 0o644, 1_600_000_000
                t.addfile(info, io.BytesIO(data))
    if "million" in needs:
        layers = [os.path.join(L, "million", n) for n in ("top", "bottom")]
        spread_tree(layers, "tree", a.million_files, a.million_dirs, rng("million"))
        D["million"] = layers
    for n in (n for n in a.scale_layers if f"scale-{n}" in needs):
        layers = [os.path.join(L, f"s{n}", str(i)) for i in range(n)]
        D[f"scale-{n}"] = layers
        D[f"scale-{n}-paths"] = spread_tree(layers, "t", a.scale_files, a.scale_dirs,
                                            rng(f"scale{n}"))
    return [L]


def lower_digest(roots):
    """Cheap checksum of the lowers: sha256 of the sorted (path, size, mtime) list."""
    h, rows = hashlib.sha256(), []
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                p = os.path.join(dirpath, name)
                st = os.lstat(p)
                rows.append(f"{p}\0{st.st_size}\0{st.st_mtime_ns}")
    for row in sorted(rows):
        h.update(row.encode() + b"\n")
    return h.hexdigest(), len(rows)


def mounts_under(path):
    """Mount points at or under `path` (from /proc/self/mounts: sees dead FUSE mounts too)."""
    with open("/proc/self/mounts") as f:
        points = [line.split()[1] for line in f]
    return [p for p in points if p == path or p.startswith(path + "/")]


def is_mounted(mnt):
    """Whether `mnt` is a mount point."""
    return mnt in mounts_under(mnt)


def find_daemon(mnt, prog):
    """The pid of the FUSE daemon serving `mnt`: the process with `mnt` in its command line
    (the mounter forks, so not the pid we started), preferring one running `prog`."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                args = f.read().decode(errors="replace").split("\0")
            exe = os.readlink(f"/proc/{pid}/exe")
        except OSError:
            continue
        if mnt in args and int(pid) != os.getpid():
            found.append((exe != os.path.realpath(prog), int(pid)))
    return min(found)[1] if found else None


def vm_hwm_mib(pid):
    """Peak RSS (VmHWM) of a process in MiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for pid {pid}")


def mount(c, lowers, mnt, upper=None, work=None, nofsync=False):
    """Mount `lowers` (first = top) at `mnt`, read-only without `upper`. Returns the daemon
    pid (None for the kernel)."""
    opts = "lowerdir=" + ":".join(lowers)
    cwd = None
    if c.kind == "kernel":
        # Relative lowerdirs keep the option string under the kernel's one-page limit (128
        # layers); they are resolved from the cwd of mount(8).
        cwd = os.path.commonpath(lowers)
        opts = "lowerdir=" + ":".join(os.path.relpath(x, cwd) for x in lowers)
    if c.opts:
        opts += "," + c.opts
    if upper is not None:
        opts += f",upperdir={upper},workdir={work}" + (f",{c.nofsync}" if nofsync else "")
    elif c.kind == "kernel":
        opts = "ro," + opts
    cmd = (["mount", "-t", "overlay", "overlay"] if c.kind == "kernel" else [c.prog])
    cmd += ["-o", opts, mnt]
    if c.counts:
        return mount_foreground(c, cmd, mnt)
    with open(c.log, "ab") as log:
        log.write(f"\n$ {' '.join(cmd)}\n".encode())
        log.flush()
        # The daemon inherits the log file, not a pipe we would wait on.
        rc = subprocess.run(cmd, cwd=cwd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                            timeout=120).returncode
    if rc != 0:
        with open(c.log, "rb") as log:
            msg = log.read()[-300:].decode(errors="replace").strip().replace("\n", " | ")
        raise RuntimeError(f"mount exit {rc}: {msg}")
    for _ in range(100):
        if is_mounted(mnt):
            break
        time.sleep(0.05)
    else:
        raise RuntimeError(f"mount exited 0 but {mnt} is not mounted")
    MOUNTED.add(mnt)
    return None if c.kind == "kernel" else find_daemon(mnt, c.prog)


def mount_foreground(c, cmd, mnt):
    """Start an overlayfuse daemon in the foreground, its log (info) appended to the
    contender's log, and wait for its mount. Returns its pid."""
    cmd = cmd[:1] + ["-f"] + cmd[1:]
    with open(c.log, "ab") as log:
        log.write(f"\n$ {' '.join(cmd)}\n".encode())
        log.flush()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                env=dict(os.environ, OVERLAYFUSE_LOG="info"))
    DAEMONS[proc.pid] = proc
    for _ in range(200):
        if is_mounted(mnt):
            MOUNTED.add(mnt)
            return proc.pid
        if proc.poll() is not None:
            DAEMONS.pop(proc.pid, None)
            raise RuntimeError(f"daemon exited {proc.returncode} before mounting {mnt}")
        time.sleep(0.05)
    raise RuntimeError(f"{mnt} not mounted after 10 s")


def requests_served(c):
    """The request counts of the contender's last finished daemon: (total, io_uring,
    /dev/fuse), from the line it logs at exit."""
    with open(c.log, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 8192))
        found = COUNTS.findall(f.read().decode(errors="replace"))
    if not found:
        raise RuntimeError(f"no request counts in {c.log}")
    return tuple(int(x) for x in found[-1])


def unmount(mnt, pid=None):
    """Unmount, retrying on EBUSY, then lazily; then wait for the daemon (if any) to exit,
    killing it by pid after 10 s."""
    for i in range(10):
        if not is_mounted(mnt):
            break
        if subprocess.run(["umount", mnt], stderr=subprocess.DEVNULL).returncode == 0:
            break
        time.sleep(0.2 * (i + 1))
    else:
        subprocess.run(["umount", "-l", mnt], check=True)
        print(f"bench: warning: {mnt} needed a lazy unmount", file=sys.stderr)
    MOUNTED.discard(mnt)
    if pid:
        for sig in (None, signal.SIGTERM, signal.SIGKILL):
            if sig:
                print(f"bench: warning: daemon {pid} still alive, sending {sig.name}",
                      file=sys.stderr)
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    return
            for _ in range(100):
                if not os.path.exists(f"/proc/{pid}") or proc_state(pid) == "Z":
                    proc = DAEMONS.pop(pid, None)
                    if proc:
                        proc.wait()
                    return
                time.sleep(0.1)


def proc_state(pid):
    """A process's state letter (R, S, D, Z, ...), or "" if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return ""


# ---- workload bodies: fn(mnt) -> a value that must be the same for every contender ----

def lstat_walk(root):
    """lstat every entry under `root` (os.walk: readdir, then lstat each name)."""
    n = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.lstat(os.path.join(dirpath, name))
            n += 1
    return n


def read_seq(path):
    """Read a file with 1 MiB reads; return the byte count."""
    total = 0
    with open(path, "rb", buffering=0) as f:
        while b := f.read(MIB):
            total += len(b)
    return total


def write_seq(path, mib):
    """Write `mib` MiB to a new file with 1 MiB writes, then fsync; return its size."""
    chunk = bytes(range(256)) * (MIB // 256)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        for _ in range(mib):
            os.write(fd, chunk)
        os.fsync(fd)
        return os.fstat(fd).st_size
    finally:
        os.close(fd)


def rand_read(path, offsets_per_job):
    """One thread per job, each with its own descriptor, doing 4 KiB preads at its offsets
    (os.pread releases the GIL); return the bytes read."""
    got = [0] * len(offsets_per_job)

    def job(j):
        fd = os.open(path, os.O_RDONLY)
        try:
            got[j] = sum(len(os.pread(fd, 4096, off)) for off in offsets_per_job[j])
        finally:
            os.close(fd)
    threads = [threading.Thread(target=job, args=(j,)) for j in range(len(offsets_per_job))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(got)


def append_byte(path):
    """The first change of a lower file: open(O_APPEND), write one byte, close."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, b"x")
    finally:
        os.close(fd)


def mixed(mnt, timeout):
    """cp -a a lower dir to a new dir, then find -newer and grep -r over the copy; return
    the counts of names found."""
    sh(["cp", "-a", f"{mnt}/src", f"{mnt}/dst"], timeout=timeout)
    found = sh(["find", f"{mnt}/dst", "-newer", f"{mnt}/ref"], timeout=timeout)
    hits = sh(["grep", "-rl", "needle", f"{mnt}/dst"], ok=(0, 1), timeout=timeout)
    return [found.count("\n"), hits.count("\n")]


def workloads(a, D):
    """All workloads, in table order. Bodies read their inputs from D, filled by build()."""
    T = a.timeout

    def big_up(upper):
        os.mkdir(os.path.join(upper, "big"))
        for n in D["big-upper"]:
            mkfile(os.path.join(upper, "big", n))
    W = [
        Workload("meta-stat cold", "meta-stat", lambda m: lstat_walk(m + "/tree"), needs=("tree",),
                 files=a.files + a.dirs),
        Workload("meta-stat warm", "meta-stat", lambda m: lstat_walk(m + "/tree"), needs=("tree",),
                 cold=False, warm=True),
        Workload("readdir-big cold", "readdir-big", lambda m: len(os.listdir(m + "/big")),
                 needs=("big",), writable=True, prepare=big_up, files=a.big_dir),
        Workload("seq-read cold", "seq-read", lambda m: read_seq(m + "/blob"), needs=("blob",),
                 files=1),
        Workload("seq-read warm", "seq-read", lambda m: read_seq(m + "/blob"), needs=("blob",),
                 cold=False, warm=True),
        Workload("seq-write", "seq-write", lambda m: write_seq(m + "/new", a.file_mib),
                 writable=True),
        Workload("rand-read 4k 1 job", "rand-read",
                 lambda m: rand_read(m + "/blob", D["offsets"][:1]), needs=("blob",)),
        Workload("rand-read 4k 2 jobs", "rand-read",
                 lambda m: rand_read(m + "/blob", D["offsets"][:2]), needs=("blob",)),
        Workload("copy-up fsync", "copy-up", lambda m: append_byte(m + "/copyme"),
                 needs=("copy",), writable=True, check=lambda m: os.stat(m + "/copyme").st_size),
        Workload("copy-up no fsync", "copy-up", lambda m: append_byte(m + "/copyme"),
                 needs=("copy",), writable=True, nofsync=True,
                 check=lambda m: os.stat(m + "/copyme").st_size),
        Workload("small-files", "small-files",
                 lambda m: (sh(["tar", "-xf", D["tarball"], "-C", m], timeout=T),
                            sh(["sync"], timeout=T)),
                 needs=("tar",), writable=True, check=lambda m: lstat_walk(m + "/small"),
                 files=a.small_files),
        Workload("delete", "delete", lambda m: sh(["rm", "-rf", m + "/del"], timeout=T),
                 needs=("del",), writable=True, files=a.delete_files,
                 check=lambda m: [os.path.exists(m + "/del"), sorted(os.listdir(m))]),
        Workload("mixed", "mixed", lambda m: mixed(m, T), needs=("src",), writable=True,
                 files=a.mixed_files),
        Workload("memory meta-stat", "memory", lambda m: lstat_walk(m + "/tree"),
                 needs=("tree",), cold=False, mem=True),
        Workload(f"memory walk {a.million_files} files", "memory",
                 lambda m: lstat_walk(m + "/tree"), layers="million", needs=("million",),
                 cold=False, mem=True),
    ]
    for n in a.scale_layers:
        key = f"scale-{n}"
        W.append(Workload(f"scale-stat {n} layers", "scale",
                          lambda m, k=key: sum(1 for p in D[k + "-paths"]
                                               if os.lstat(os.path.join(m, p))),
                          layers=key, needs=(key,), writable=True))
        W.append(Workload(f"scale-readdir {n} layers", "scale",
                          lambda m, k=key: sum(len(os.listdir(os.path.join(m, p)))
                                               for p in ["t"] + [q for q in D[k + "-paths"]
                                                                 if "/f" not in q]),
                          layers=key, needs=(key,), writable=True))
    return W


def run_once(wl, c, work, D):
    """One timed run of a workload on a contender, on a fresh mount (and a fresh upper for
    writable workloads). Returns (seconds, or MiB for memory rows; value; seconds; requests
    from mount to unmount, for contenders that count them, else None)."""
    mnt = os.path.join(work, "mnt", c.name)
    rundir = os.path.join(work, "run", c.name)
    upper = wdir = None
    if wl.writable:
        shutil.rmtree(rundir, ignore_errors=True)
        upper, wdir = os.path.join(rundir, "upper"), os.path.join(rundir, "work")
        os.makedirs(upper)
        os.makedirs(wdir)
        if wl.prepare:
            wl.prepare(upper)
    pid = mount(c, D[wl.layers], mnt, upper, wdir, wl.nofsync)
    try:
        if wl.mem and not pid:
            raise RuntimeError(f"no daemon process found for {mnt}")
        if wl.warm:
            wl.fn(mnt)  # another contender's cold run may just have dropped the caches
        elif wl.cold:
            drop_caches()
        t0 = time.perf_counter()
        value = wl.fn(mnt)
        result = elapsed = time.perf_counter() - t0
        if wl.check:
            value = wl.check(mnt)
        if wl.mem:
            result = vm_hwm_mib(pid)
    finally:
        unmount(mnt, pid)
        if wl.writable:
            shutil.rmtree(rundir, ignore_errors=True)
    return result, value, elapsed, requests_served(c)[0] if c.counts else None


def version_of(c):
    """A contender's version line(s)."""
    if c.kind == "kernel":
        return f"kernel overlay (Linux {platform.release()})"
    try:
        r = subprocess.run([c.prog, "--version"], stdin=subprocess.DEVNULL, capture_output=True,
                           text=True, timeout=10)
        lines = [x.strip() for x in (r.stdout + r.stderr).splitlines() if x.strip()]
        return "; ".join(x for x in lines if "ignored" not in x) or f"? (exit {r.returncode})"
    except (OSError, subprocess.SubprocessError) as e:
        return f"? ({e})"


def machine(work):
    """Lines describing the machine and the work dir's filesystem."""
    mem = next(int(x.split()[1]) for x in open("/proc/meminfo") if x.startswith("MemTotal"))
    cpu = next((x.split(":", 1)[1].strip() for x in open("/proc/cpuinfo")
                if x.startswith("model name")), "?")
    fs = sh(["stat", "-f", "-c", "%T", work]).strip()
    if shutil.which("findmnt"):
        fs += " (" + sh(["findmnt", "-n", "-o", "FSTYPE,SOURCE", "-T", work]).strip() + ")"
    return [f"Machine: {os.cpu_count()} cpus ({cpu}), {mem / 1024 / 1024:.1f} GiB RAM, "
            f"Linux {platform.release()}, work dir {work} on {fs}"]


def fmt_cell(xs, nerr, mem):
    """'median (min..max)' of a list of numbers, with the error count if any."""
    if not xs:
        return "error" if nerr else "-"
    p = 1 if mem else 3
    s = f"{statistics.median(xs):.{p}f} ({min(xs):.{p}f}..{max(xs):.{p}f})"
    return s + (f" [{nerr} failed]" if nerr else "")


def report(wls, names, times, errors):
    """The Markdown table and the ratios per time row {workload: {contender: ratio}}."""
    head = ("| workload | " + " | ".join(f"{n} median (min..max)" for n in names) + " | "
            + " | ".join(f"{n} speed vs kernel" for n in names[1:]) + " |")
    lines = [head, "|" + "---|" * (2 * len(names))]
    ratios = {}
    for wl in wls:
        meds = {n: statistics.median(times[wl.name][n]) for n in names if times[wl.name][n]}
        nerr = {n: sum(1 for e in errors if e[1] == wl.name and e[2] == n) for n in names}
        cells = [fmt_cell(times[wl.name][n], nerr[n], wl.mem) for n in names]
        label = wl.name + (" (MiB)" if wl.mem else " (s)")
        if wl.mem:
            rs = [""] * (len(names) - 1)
        else:
            ratios[wl.name] = {n: meds["kernel"] / meds[n] if "kernel" in meds and n in meds
                               and meds[n] > 0 else None for n in names[1:]}
            rs = ["n/a" if r is None else f"{r:.2f}" for r in ratios[wl.name].values()]
        lines.append(f"| {label} | " + " | ".join(cells) + " | " + " | ".join(rs) + " |")
    return "\n".join(lines), ratios


def requests_table(wls, names, requests):
    """Median FUSE requests per run (mount to unmount) and per file the workload touches,
    for the contenders that count them; cold, timed-once rows only."""
    head = "| workload | files | " + " | ".join(f"{n} requests (per file)" for n in names)
    lines = [head + " |", "|---|---|" + "---|" * len(names)]
    for w in wls:
        if w.mem or w.warm or not w.files:
            continue
        cells = []
        for n in names:
            xs = requests[w.name][n]
            cells.append(f"{statistics.median(xs):.0f} ({statistics.median(xs) / w.files:.1f})"
                         if xs else "-")
        lines.append(f"| {w.name} | {w.files} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_svg(path, ratios, names):
    """A hand-made horizontal bar chart of the ratios: one group per workload, one bar per
    non-kernel contender, a vertical line at 1.0."""
    others = names[1:]
    colors = ["#4477aa", "#ee6677", "#228833", "#ccbb44", "#66ccee", "#aa3377", "#bbbbbb"]
    vals = [r for rs in ratios.values() for r in rs.values() if r is not None]
    vmax = max(vals + [1.0]) * 1.15
    left, width, bar, gap = 250, 520, 14, 12
    x = lambda v: left + v / vmax * width  # noqa: E731
    out, y = [], 50
    for i, n in enumerate(others):
        out.append(f'<rect x="{left + 150 * i}" y="8" width="12" height="12" '
                   f'fill="{colors[i % len(colors)]}"/><text x="{left + 150 * i + 16}" y="19">'
                   f'{html.escape(n)}</text>')
    for wname, rs in ratios.items():
        top = y
        for i, n in enumerate(others):
            r = rs.get(n)
            if r is None:
                out.append(f'<text x="{left + 4}" y="{y + 11}">n/a</text>')
            else:
                out.append(f'<rect x="{left}" y="{y}" width="{x(r) - left:.1f}" height="{bar}" '
                           f'fill="{colors[i % len(colors)]}"/>'
                           f'<text x="{x(r) + 4:.1f}" y="{y + 11}">{r:.2f}</text>')
            y += bar + 2
        out.append(f'<text x="{left - 8}" y="{(top + y) / 2 + 4:.0f}" text-anchor="end">'
                   f'{html.escape(wname)}</text>')
        y += gap
    step = 0.5 if vmax <= 4 else (1 if vmax <= 10 else 5)
    t = 0.0
    while t <= vmax:
        out.append(f'<line x1="{x(t):.1f}" y1="{y}" x2="{x(t):.1f}" y2="{y + 4}" stroke="#000"/>'
                   f'<text x="{x(t):.1f}" y="{y + 16}" text-anchor="middle">{t:g}</text>')
        t += step
    out.append(f'<line x1="{x(1):.1f}" y1="40" x2="{x(1):.1f}" y2="{y}" stroke="#000" '
               f'stroke-dasharray="4,3"/><line x1="{left}" y1="{y}" x2="{left + width}" '
               f'y2="{y}" stroke="#000"/><text x="{left + width / 2}" y="{y + 34}" '
               f'text-anchor="middle">speed vs kernel (kernel median time / median time; '
               f'1.0 = kernel, higher is better)</text>')
    with open(path, "w") as f:
        f.write(f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 60}" '
                f'height="{y + 46}" font-family="sans-serif" font-size="12">\n'
                f'<rect width="100%" height="100%" fill="#fff"/>\n' + "\n".join(out) + "\n</svg>\n")


def parse_args():
    """Command line; sizes left unset take the full or the --quick defaults."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(__doc__.splitlines()[2:]))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--only", help="comma-separated workload groups or row names")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    ap.add_argument("--writable", action="store_true",
                    help="mount every workload with an upper layer (the read rows too)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--ours", default=DEFAULT_OURS, help="overlayfuse binary")
    ap.add_argument("--extra", action="append", default=[], metavar="NAME=PATH",
                    help="another program with the fuse-overlayfs command line")
    ap.add_argument("--no-fuse-overlayfs", action="store_true")
    ap.add_argument("--lower-passthrough", action="store_true",
                    help="add overlayfuse-lowerpt: -o lower_passthrough (on /dev/fuse)")
    ap.add_argument("--no-uring", action="store_true",
                    help="no overlayfuse-uring contender (the kernel switch is left alone)")
    ap.add_argument("--workdir", default="/var/tmp",
                    help="parent of the scratch dir (created and removed by the run)")
    ap.add_argument("--timeout", type=int, default=1800, help="per command of a workload, s")
    ap.add_argument("--out", help="write the Markdown table to this file")
    ap.add_argument("--svg", help="write a bar chart of the ratios to this file")
    ap.add_argument("--json", help="write the raw results to this file")
    for flag, full, quick, hlp in SIZES:
        ap.add_argument("--" + flag, type=int, help=f"{hlp} (default {full}, quick {quick})")
    ap.add_argument("--scale-layers", default="1,16,128", help="lower counts for scale")
    a = ap.parse_args()
    for flag, full, quick, _ in SIZES:
        attr = flag.replace("-", "_")
        if getattr(a, attr) is None:
            setattr(a, attr, quick if a.quick else full)
    a.scale_layers = [int(x) for x in a.scale_layers.split(",")]
    return a


def main():
    """Build, run the interleaved rounds, verify the lowers, clean up, report."""
    a = parse_args()
    if os.geteuid() != 0:
        sys.exit("bench: run as root (kernel overlay mounts and drop_caches need it)")
    if not os.access(a.ours, os.X_OK):
        sys.exit(f"bench: {a.ours} not found: build it (cargo build --release) or pass --ours")
    # overlayfuse once per transport: /dev/fuse (uring=off) and, unless --no-uring, FUSE over
    # io_uring (uring=on; the kernel's switch is turned on for the run and put back after).
    contenders = [Contender("kernel", "kernel"),
                  Contender("overlayfuse", "fuse", a.ours, opts="uring=off", counts=True)]
    ring_found = None
    if not a.no_uring:
        try:
            with open(RING_SWITCH) as f:
                ring_found = f.read().strip()
        except OSError as e:
            sys.exit(f"bench: {RING_SWITCH}: {e}: no FUSE over io_uring here; use --no-uring")
        contenders.append(Contender("overlayfuse-uring", "fuse", a.ours, opts="uring=on",
                                    counts=True))
    if a.lower_passthrough:
        contenders.append(Contender("overlayfuse-lowerpt", "fuse", a.ours,
                                    opts="uring=off,lower_passthrough", counts=True))
    if shutil.which("fuse-overlayfs") and not a.no_fuse_overlayfs:
        contenders.append(Contender("fuse-overlayfs", "fuse", shutil.which("fuse-overlayfs"),
                                    "fsync=0"))
    for e in a.extra:
        name, _, prog = e.partition("=")
        if not prog or not os.access(prog, os.X_OK) or name in [c.name for c in contenders]:
            sys.exit(f"bench: bad --extra {e!r} (NAME=PATH, executable, unique name)")
        contenders.append(Contender(name, "fuse", os.path.abspath(prog), "fsync=0"))
    D = {}
    wls = workloads(a, D)
    if a.writable:
        for w in wls:
            w.writable = True
    if a.only:
        sel = set(a.only.split(","))
        bad = sel - {w.group for w in wls} - {w.name for w in wls}
        if bad:
            sys.exit(f"bench: unknown workload(s) {sorted(bad)}; groups: "
                     + ", ".join(dict.fromkeys(w.group for w in wls)))
        wls = [w for w in wls if w.group in sel or w.name in sel]
    needs = {n for w in wls for n in w.needs}

    def on_term(*_):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_term)
    work = tempfile.mkdtemp(prefix="ofs-bench-", dir=a.workdir)
    names = [c.name for c in contenders]
    times = {w.name: {n: [] for n in names} for w in wls}
    values = {w.name: {n: [] for n in names} for w in wls}
    requests = {w.name: {n: [] for n in names} for w in wls}
    errors, lowers_ok, started, header = [], True, time.time(), []
    try:
        if ring_found is not None:
            with open(RING_SWITCH, "w") as f:
                f.write("1")
        os.makedirs(os.path.join(work, "logs"))
        for c in contenders:
            c.log = os.path.join(work, "logs", c.name + ".log")
            os.makedirs(os.path.join(work, "mnt", c.name))
        header = machine(work) + [f"Contender {c.name}: {version_of(c)}" +
                                  (f" [{c.prog}]" if c.prog else "") for c in contenders]
        print("\n".join(header), flush=True)
        print(f"bench: building layers in {work} (seed {a.seed})", file=sys.stderr)
        roots = build(work, a, needs, D)
        digest = lower_digest(roots)
        print(f"bench: built in {time.time() - started:.0f} s ({digest[1]} lower entries)",
              file=sys.stderr)
        for r in range(a.rounds):
            order = contenders[r % len(contenders):] + contenders[:r % len(contenders)]
            for wl in wls:
                for c in order:
                    if wl.mem and c.kind == "kernel":
                        continue
                    try:
                        res, val, secs, reqs = run_once(wl, c, work, D)
                    except (OSError, RuntimeError, subprocess.SubprocessError) as e:
                        errors.append((r + 1, wl.name, c.name, f"{type(e).__name__}: {e}"))
                        print(f"bench: round {r + 1} {wl.name} / {c.name}: FAILED: {e}",
                              file=sys.stderr)
                        continue
                    times[wl.name][c.name].append(res)
                    values[wl.name][c.name].append(val)
                    if reqs is not None:
                        requests[wl.name][c.name].append(reqs)
                    print(f"bench: round {r + 1} {wl.name} / {c.name}: " + (
                        f"{res:.1f} MiB (walk {secs:.2f} s)" if wl.mem else f"{res:.3f} s"),
                        file=sys.stderr)
            print(f"bench: round {r + 1}/{a.rounds} done ({time.time() - started:.0f} s)",
                  file=sys.stderr)
        after = lower_digest(roots)
        lowers_ok = after == digest
    except KeyboardInterrupt:
        print("bench: interrupted, cleaning up", file=sys.stderr)
        lowers_ok = None
    finally:
        for mnt in MOUNTED | set(mounts_under(work)):
            try:
                unmount(mnt, find_daemon(mnt, "/") if is_mounted(mnt) else None)
            except (OSError, subprocess.SubprocessError) as e:
                print(f"bench: cannot unmount {mnt}: {e}", file=sys.stderr)
        left = mounts_under(work)
        if left:
            print(f"bench: NOT removing {work}: still mounted: {left}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
        if ring_found is not None:
            with open(RING_SWITCH, "w") as f:
                f.write("1" if ring_found == "Y" else "0")
    if lowers_ok is None:
        sys.exit(130)

    table, ratios = report(wls, names, times, errors)
    table += "\n\n" + requests_table(wls, [c.name for c in contenders if c.counts], requests)
    notes = ["Times in seconds (lower is better), memory rows in MiB (daemon VmHWM; '-' for "
             "the kernel, which has no daemon). 'speed vs kernel' = kernel median time / "
             "contender median time: 1.00 is kernel speed, higher is better (every time row).",
             f"Rounds: {a.rounds}, contender order rotated each round; total "
             f"{time.time() - started:.0f} s."]
    for w in wls:  # every contender must have seen the same thing
        ref = next((v[0] for v in values[w.name].values() if v), None)
        for n in names:
            if any(v != ref for v in values[w.name][n]):
                notes.append(f"MISMATCH: {w.name} / {n}: result {values[w.name][n][0]!r:.120} "
                             f"differs from {ref!r:.120}")
    notes += [f"FAILED: round {e[0]} {e[1]} / {e[2]}: {e[3]}" for e in errors]
    if not lowers_ok:
        notes.append("LOWER LAYERS CHANGED during the run: the results are not valid.")
    text = "\n".join(header) + "\n\n" + table + "\n\n" + "\n".join(f"- {x}" for x in notes)
    print("\n" + table + "\n\n" + "\n".join(notes))
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")
    if a.svg:
        write_svg(a.svg, ratios, names)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"header": header, "args": vars(a), "times": times, "values": values,
                       "requests": requests,
                       "errors": errors, "lowers_unchanged": lowers_ok}, f, indent=1)
    if not lowers_ok:
        sys.exit("bench: FATAL: the lower layers changed during the run (checksum of "
                 "path, size, mtime differs)")


if __name__ == "__main__":
    main()
