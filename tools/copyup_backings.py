#!/usr/bin/env python3
"""Copy-up of a big lower file on every backing filesystem: ext4, xfs (reflink=1) and btrfs
loop images, tmpfs, and a kernel overlay mount (the nested case). For each, a fresh filesystem
is made and `tools/bench.py --only copy-up` runs with its work dir there, so the lower, the
upper and the work dir of every contender live on that filesystem. The kernel overlay cannot
keep an upper on a kernel overlay: on that row its runs fail and its column is empty.

Needs root, mkfs.ext4, mkfs.xfs and mkfs.btrfs. Usage:
    sudo tools/copyup_backings.py [--rounds 3] [--copy-mib 512] [--ours PATH] [--out FILE.md]
"""

import argparse
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))

FILESYSTEMS = ["ext4", "xfs", "btrfs", "tmpfs", "overlay"]
MKFS = {
    "ext4": ["mkfs.ext4", "-q", "-F"],
    "xfs": ["mkfs.xfs", "-q", "-f", "-m", "reflink=1"],
    "btrfs": ["mkfs.btrfs", "-q", "-f"],
}


def run(cmd):
    subprocess.run(cmd, check=True, stdin=subprocess.DEVNULL)


def make(fs, holder, root, image_bytes):
    """Makes and mounts `fs` at `root`, with its image or layers in `holder`."""
    os.makedirs(root)
    if fs in MKFS:
        image = os.path.join(holder, "image")
        with open(image, "wb") as f:
            f.truncate(image_bytes)
        run(MKFS[fs] + [image])
        run(["mount", "-o", "loop", image, root])
    elif fs == "tmpfs":
        run(["mount", "-t", "tmpfs", "-o", f"size={image_bytes}", "tmpfs", root])
    else:
        dirs = [os.path.join(holder, d) for d in ("l", "u", "w")]
        for d in dirs:
            os.makedirs(d)
        run(["mount", "-t", "overlay", "overlay", "-o",
             "lowerdir={},upperdir={},workdir={}".format(*dirs), root])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--copy-mib", type=int, default=512)
    ap.add_argument("--ours", default=os.path.join(HERE, "..", "target", "release", "overlayfuse"))
    ap.add_argument("--out", help="write the combined Markdown tables to this file")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("copyup_backings: run as root")
    tables = []
    image_bytes = (a.copy_mib * 4 + 1024) << 20
    for fs in FILESYSTEMS:
        holder = tempfile.mkdtemp(prefix=f"ofs-copyup-{fs}-", dir="/var/tmp")
        root = os.path.join(holder, "root")
        try:
            make(fs, holder, root, image_bytes)
            out = os.path.join(holder, "table.md")
            # bench.py exits non-zero when a contender failed (the kernel on an overlay).
            subprocess.run([sys.executable, os.path.join(HERE, "bench.py"), "--only", "copy-up",
                            "--rounds", str(a.rounds), "--copy-mib", str(a.copy_mib),
                            "--ours", a.ours, "--workdir", root, "--out", out],
                           stdin=subprocess.DEVNULL)
            with open(out) as f:
                tables.append(f"### Layers on {fs}\n\n{f.read().strip()}\n")
        finally:
            subprocess.run(["umount", "-l", root], stderr=subprocess.DEVNULL)
            subprocess.run(["rm", "-rf", holder])
    text = "\n".join(tables)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
