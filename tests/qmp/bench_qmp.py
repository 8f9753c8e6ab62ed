"""QMP round trip of blockdev-change-medium on an idle VM, ours against
QEMU, side by side, with qemu.qmp; and each VMM's memory with the socket
open.

Both VMMs start stopped (ours `--paused`, QEMU `-S`: no guest code runs,
so the VM is idle), with an IDE CD-ROM at the secondary master
(`ide1-cd0` in both) holding a 1 MiB image, and a QMP unix socket. One
client per VMM alternates the medium between two images RUNS times
(default 100), each command timed from send to reply (its two
DEVICE_TRAY_MOVED events arrive before the reply). Reported: median and
90th percentile per VMM, the ratio of medians, and VmRSS/VmHWM of each
process after the runs (guest RAM untouched: no guest ran).

QEMU runs with `-accel tcg` (it never executes guest code here, so the
accelerator does not matter), `-M pc` (its ISA IDE needs the PC machine),
and `-nodefaults -display none`.

Usage: python3 bench_qmp.py VMM KERNEL [RUNS]
"""

import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time

from qemu.qmp import QMPClient
from qemu.qmp.protocol import ConnectError

VMM, KERNEL = sys.argv[1], sys.argv[2]
RUNS = int(sys.argv[3]) if len(sys.argv) > 3 else 100


GUEST_KIB = 512 * 1024


def mem_kib(pid):
    """VmRSS, VmHWM, and the resident memory outside guest RAM (VmRSS
    minus the resident part of the mappings at least as large as guest
    RAM, which only guest RAM is)."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM"):
                out[k] = int(v.split()[0])
    guest, size = 0, 0
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            if line.startswith("Size:"):
                size = int(line.split()[1])
            elif line.startswith("Rss:") and size >= GUEST_KIB:
                guest += int(line.split()[1])
    out["outside"] = out["VmRSS"] - guest
    return out


async def bench(name, argv, sock, one, two):
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        for _ in range(600):
            q = QMPClient(name)
            try:
                await q.connect(sock)
                break
            except (OSError, ConnectError):
                await asyncio.sleep(0.05)
        else:
            raise RuntimeError(f"{name}: no QMP socket: {proc.stderr.read().decode()}")
        times = []
        for i in range(RUNS):
            t0 = time.perf_counter()
            await q.execute("blockdev-change-medium", {"device": "ide1-cd0", "filename": two if i % 2 == 0 else one})
            times.append(time.perf_counter() - t0)
        q.events.clear()
        mem = mem_kib(proc.pid)
        await q.disconnect()
        return times, mem
    finally:
        proc.terminate()
        proc.wait(30)


def main():
    work = tempfile.mkdtemp(prefix="bench-qmp-")
    one, two = os.path.join(work, "one.iso"), os.path.join(work, "two.iso")
    for p, b in ((one, b"1"), (two, b"2")):
        with open(p, "wb") as f:
            f.write(b * (1 << 20))
    ours_sock, qemu_sock = os.path.join(work, "ours.sock"), os.path.join(work, "qemu.sock")
    ours = [VMM, "--kernel", KERNEL, "--paused", "--serial", "none", "--memory", "512M", "--cdrom", one, "--qmp", ours_sock]
    qemu = ["qemu-system-x86_64", "-S", "-M", "pc", "-accel", "tcg", "-m", "512M", "-nodefaults", "-display", "none",
            "-drive", f"if=ide,index=2,media=cdrom,file={one},format=raw",
            "-qmp", f"unix:{qemu_sock},server=on,wait=off"]
    results = {}
    for name, argv, sock in (("ours", ours, ours_sock), ("qemu", qemu, qemu_sock)):
        results[name] = asyncio.run(bench(name, argv, sock, one, two))
    for name, (times, mem) in results.items():
        ms = sorted(t * 1000 for t in times)
        print(f"{name}: blockdev-change-medium round trip median {statistics.median(ms):.3f} ms, "
              f"p90 {ms[int(len(ms) * 0.9)]:.3f} ms over {len(ms)}; VmRSS {mem['VmRSS'] / 1024:.1f} MiB "
              f"(outside guest RAM {mem['outside'] / 1024:.1f} MiB), VmHWM {mem['VmHWM'] / 1024:.1f} MiB")
    ratio = statistics.median(results["ours"][0]) / statistics.median(results["qemu"][0])
    print(f"ours/qemu median round trip = {ratio:.2f}")


if __name__ == "__main__":
    main()
