#!/usr/bin/env python3
"""Container start-up with each storage back end, side by side (issue 5, deliverable 3).

Times `podman run --rm IMAGE true` N times (default 20) on three podman stores, interleaved
(A B C A B C ...): podman's kernel overlay driver, overlayfuse as mount_program and
fuse-overlayfs as mount_program. It also times the mount program alone, from exec to a live
mount, on a container's layers, which is its share of each `podman run`.

Run as root: python3 tools/podman_startup.py [--ours target/release/overlayfuse] [-n 20]
Needs podman, runc, busybox-static and fuse-overlayfs (Debian packages).
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

CONF = """[containers]
default_ulimits = []
[engine]
cgroup_manager = "cgroupfs"
runtime = "runc"
events_logger = "file"
"""


def podman(store, program, *args):
    cmd = ["podman", "--root", f"{store}/root", "--runroot", f"{store}/run",
           "--storage-driver", "overlay"]
    if program:
        cmd += ["--storage-opt", f"overlay.mount_program={program}"]
    env = dict(os.environ, CONTAINERS_CONF=f"{store}/containers.conf")
    return subprocess.run(cmd + list(args), env=env, check=True, capture_output=True,
                          text=True).stdout.strip()


def busybox_tar(work):
    root = os.path.join(work, "rootfs")
    os.makedirs(os.path.join(root, "bin"))
    os.makedirs(os.path.join(root, "etc"))
    shutil.copy("/bin/busybox", os.path.join(root, "bin/busybox"))
    for app in ["sh", "true", "ls", "cat"]:
        os.symlink("busybox", os.path.join(root, "bin", app))
    tar = os.path.join(work, "busybox.tar")
    subprocess.run(["tar", "-C", root, "-cf", tar, "."], check=True)
    return tar


def mount_time(store, program, rounds):
    """Exec-to-live time of `program` on the layers of a created container, in seconds.
    The mount options podman passes are captured by a wrapper used for one `podman mount`."""
    log = os.path.join(store, "args.log")
    wrapper = os.path.join(store, "capture.sh")
    with open(wrapper, "w") as f:
        f.write(f'#!/bin/sh\nprintf "%s\\n" "$2" > {log}\nexec {program} "$@"\n')
    os.chmod(wrapper, 0o755)
    ctr = podman(store, program, "create", "--network", "none", "busybox:1", "true")
    merged = podman(store, wrapper, "mount", ctr)
    podman(store, program, "unmount", ctr)
    opts = open(log).read().strip()
    os.makedirs(merged, exist_ok=True)  # podman removes it on unmount
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        subprocess.run([program, "-o", opts, merged], check=True, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - t)
        subprocess.run(["umount", merged], check=True)
    podman(store, program, "rm", ctr)
    return times


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ours", default="target/release/overlayfuse")
    ap.add_argument("-n", type=int, default=20)
    a = ap.parse_args()
    ours = os.path.abspath(a.ours)
    work = tempfile.mkdtemp(prefix="ofs-st", dir="/var/tmp")
    try:
        shutil.copy(ours, os.path.join(work, "overlayfuse"))
        contenders = [("kernel overlay driver", None),
                      ("overlayfuse", os.path.join(work, "overlayfuse")),
                      ("fuse-overlayfs 1.10", shutil.which("fuse-overlayfs"))]
        tar = busybox_tar(work)
        stores = {}
        for i, (name, program) in enumerate(contenders):
            store = os.path.join(work, str(i))
            os.makedirs(store)
            with open(f"{store}/containers.conf", "w") as f:
                f.write(CONF)
            podman(store, program, "import", "-q", tar, "busybox:1")
            podman(store, program, "run", "--rm", "--network", "none", "busybox:1", "true")
            stores[name] = store
        runs = {name: [] for name, _ in contenders}
        for r in range(a.n):
            order = contenders[r % 3:] + contenders[:r % 3]
            for name, program in order:
                t = time.perf_counter()
                podman(stores[name], program, "run", "--rm", "--network", "none",
                       "busybox:1", "true")
                runs[name].append(time.perf_counter() - t)
        kernel = statistics.median(runs["kernel overlay driver"])
        print(f"`podman run --rm busybox true`, {a.n} interleaved runs each, seconds\n")
        print("| storage | median | min..max | vs kernel driver |")
        print("|---|---|---|---|")
        for name, _ in contenders:
            v = runs[name]
            print(f"| {name} | {statistics.median(v):.3f} | {min(v):.3f}..{max(v):.3f} "
                  f"| {statistics.median(v) / kernel:.2f}x |")
        print(f"\nThe mount program alone, exec to live mount on a container's layers "
              f"({a.n} runs), milliseconds\n")
        print("| mount program | median | min..max | share of its podman run |")
        print("|---|---|---|---|")
        for name, program in contenders[1:]:
            v = mount_time(stores[name], program, a.n)
            share = statistics.median(v) / statistics.median(runs[name])
            print(f"| {name} | {statistics.median(v) * 1e3:.1f} | {min(v) * 1e3:.1f}.."
                  f"{max(v) * 1e3:.1f} | {share:.1%} |")
    finally:
        for store in [os.path.join(work, str(i)) for i in range(3)]:
            if os.path.isdir(store):
                subprocess.run(["podman", "--root", f"{store}/root", "--runroot",
                                f"{store}/run", "system", "reset", "-f"],
                               capture_output=True,
                               env=dict(os.environ, CONTAINERS_CONF=f"{store}/containers.conf"))
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
