#!/usr/bin/env python3
"""Side-by-side read-path benchmark: overlayfuse, the kernel overlay and fuse-overlayfs.

Builds the same lower layers for every contender from a seed, mounts all of them read-only,
and runs each workload round by round, interleaved (kernel, ours, fuse-overlayfs, kernel,
...), dropping the page, dentry and inode caches before every cold run. Prints one table:
each workload's median (min..max) per contender and its speed relative to the kernel overlay
(kernel time / contender time: 1.00 is kernel speed, higher is faster).

Needs root (kernel overlay mounts, drop_caches). Usage:
    sudo tools/bench.py [--rounds 5] [--files 50000] [--file-mib 1024] [--out FILE]
"""

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
OURS = os.path.join(HERE, "..", "target", "release", "overlayfuse")


def drop_caches():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3")


def build_layers(root, seed, files, big_dir, file_mib):
    """Two lowers: a tree of `files` files in files/50 dirs, a `big` dir of `big_dir` entries
    spread over both, and one big file in the bottom layer."""
    rng = random.Random(seed)
    top, bottom = os.path.join(root, "top"), os.path.join(root, "bottom")
    dirs = max(1, files // 50)
    for i in range(files):
        layer = top if rng.random() < 0.5 else bottom
        d = os.path.join(layer, "tree", f"d{i % dirs:04d}")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"f{i:06d}"), "wb") as f:
            f.write(b"x" * rng.randint(0, 64))
    for layer in (top, bottom):
        os.makedirs(os.path.join(layer, "big"), exist_ok=True)
    for i in range(big_dir):
        layer = top if i % 2 else bottom
        open(os.path.join(layer, "big", f"e{i:06d}"), "wb").close()
    chunk = bytes(rng.getrandbits(8) for _ in range(1 << 20))
    with open(os.path.join(bottom, "blob"), "wb") as f:
        for _ in range(file_mib):
            f.write(chunk)
    return [top, bottom]


def mount_kernel(lowers, mnt):
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                    "ro,lowerdir=" + ":".join(lowers), mnt], check=True)


def mount_ours(lowers, mnt):
    subprocess.run([OURS, "-o", "lowerdir=" + ":".join(lowers), mnt], check=True)


def mount_fuse_overlayfs(lowers, mnt):
    subprocess.run(["fuse-overlayfs", "-o", "lowerdir=" + ":".join(lowers), mnt],
                   check=True, stderr=subprocess.DEVNULL)


def lstat_all(root):
    n = 0
    for dirpath, dirnames, filenames in os.walk(os.path.join(root, "tree")):
        for name in dirnames + filenames:
            os.lstat(os.path.join(dirpath, name))
            n += 1
    return n


def list_big(root):
    return len(os.listdir(os.path.join(root, "big")))


def read_blob(root):
    total = 0
    with open(os.path.join(root, "blob"), "rb", buffering=0) as f:
        while True:
            b = f.read(1 << 20)
            if not b:
                return total
            total += len(b)


# (name, function, cold?)
WORKLOADS = [
    ("meta-stat cold", lstat_all, True),
    ("meta-stat warm", lstat_all, False),
    ("readdir-big cold", list_big, True),
    ("seq-read cold", read_blob, True),
    ("seq-read warm", read_blob, False),
]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--files", type=int, default=50000)
    ap.add_argument("--big-dir", type=int, default=20000)
    ap.add_argument("--file-mib", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", help="also write the table (Markdown) to this file")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench: run as root (kernel overlay mounts and drop_caches need it)")
    if not os.path.exists(OURS):
        sys.exit("bench: build first: cargo build --release")

    contenders = [("kernel", mount_kernel), ("overlayfuse", mount_ours)]
    if shutil.which("fuse-overlayfs"):
        contenders.append(("fuse-overlayfs", mount_fuse_overlayfs))
    work = tempfile.mkdtemp(prefix="ofs-bench-")
    mounts = []
    try:
        print(f"bench: building layers in {work} (seed {args.seed})", file=sys.stderr)
        lowers = build_layers(work, args.seed, args.files, args.big_dir, args.file_mib)
        for name, mount in contenders:
            mnt = os.path.join(work, "mnt-" + name)
            os.mkdir(mnt)
            mount(lowers, mnt)
            mounts.append((name, mnt))
        times = {(w[0], c[0]): [] for w in WORKLOADS for c in mounts}
        for r in range(args.rounds):
            for wname, fn, cold in WORKLOADS:
                for cname, mnt in mounts:
                    if cold:
                        drop_caches()
                    else:
                        # Another contender's cold run just dropped every cache: warm up
                        # this one right before its timed run.
                        fn(mnt)
                    t0 = time.perf_counter()
                    fn(mnt)
                    times[(wname, cname)].append(time.perf_counter() - t0)
            print(f"bench: round {r + 1}/{args.rounds} done", file=sys.stderr)
    finally:
        for _, mnt in mounts:
            subprocess.run(["umount", mnt], check=False)
        shutil.rmtree(work, ignore_errors=True)

    names = [c for c, _ in mounts]
    head = "| workload | " + " | ".join(f"{n} median s (min..max)" for n in names) + " | " + \
        " | ".join(f"{n} speed vs kernel" for n in names[1:]) + " |"
    lines = [head, "|" + "---|" * (1 + 2 * len(names) - 1)]
    for wname, _, _ in WORKLOADS:
        meds = [statistics.median(times[(wname, n)]) for n in names]
        cells = [f"{m:.3f} ({min(times[(wname, n)]):.3f}..{max(times[(wname, n)]):.3f})"
                 for m, n in zip(meds, names)]
        ratios = [f"{meds[0] / m:.2f}" for m in meds[1:]]
        lines.append(f"| {wname} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table + "\n")


if __name__ == "__main__":
    main()
