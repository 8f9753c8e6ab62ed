"""QMP round trip of blockdev-change-medium on an idle VM, ours against
QEMU, side by side and alternating, with qemu.qmp; and each VMM's memory
with the socket open.

Both VMMs start stopped (ours `--paused`, QEMU `-S`: no guest code runs,
so the VM is idle), with an IDE CD-ROM at the secondary master
(`ide1-cd0` in both) holding a 1 MiB image, and a QMP unix socket. One
client per VMM alternates the medium between two images RUNS times
(default 100), one command on each VMM in turn, each command timed from send to reply (its two
DEVICE_TRAY_MOVED events arrive before the reply). Reported: median and
90th percentile per VMM, the ratio of medians, and VmRSS/VmHWM of each
process after the runs (guest RAM untouched: no guest ran).

QEMU runs with `-accel tcg` (it never executes guest code here, so the
accelerator does not matter), `-M pc` (its ISA IDE needs the PC machine),
and `-nodefaults -display none`.

Usage: python3 bench/qmp.py VMM KERNEL [RUNS]
(bench/run runs it; with BENCH_DIR set, it writes media.md and
media.targets there.)
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


async def connect(name, proc, sock):
    for _ in range(600):
        q = QMPClient(name)
        try:
            await q.connect(sock)
            return q
        except (OSError, ConnectError):
            if proc.poll() is not None:
                break
            await asyncio.sleep(0.05)
    proc.stderr.seek(0)
    raise RuntimeError(f"{name}: no QMP socket: {proc.stderr.read().decode()}")


async def bench(vmms, one, two):
    """Starts every VMM, then alternates: one change on each, RUNS times."""
    procs, clients, times, mem = {}, {}, {}, {}
    try:
        for name, argv, sock in vmms:
            # stderr to a file, not a pipe nobody reads while the VMM runs.
            procs[name] = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                           stderr=tempfile.TemporaryFile())
            clients[name] = await connect(name, procs[name], sock)
            times[name] = []
        for i in range(RUNS):
            for name, q in clients.items():
                t0 = time.perf_counter()
                await q.execute("blockdev-change-medium",
                                {"device": "ide1-cd0", "filename": two if i % 2 == 0 else one})
                times[name].append(time.perf_counter() - t0)
                q.events.clear()
        for name, q in clients.items():
            mem[name] = mem_kib(procs[name].pid)
            await q.disconnect()
        return times, mem
    finally:
        for p in procs.values():
            p.terminate()
            p.wait(30)


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
    times, mem = asyncio.run(bench((("ours", ours, ours_sock), ("qemu", qemu, qemu_sock)), one, two))
    rows = []
    qemu_version = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True,
                                  text=True).stdout.split("\n")[0].replace("QEMU emulator version ", "")
    for name, label in (("ours", "ours"), ("qemu", f"QEMU {qemu_version} `-S -M pc`")):
        ms = sorted(t * 1000 for t in times[name])
        rows.append((label, statistics.median(ms), ms[0], ms[-1], ms[int(len(ms) * 0.9)], mem[name]))
        print(f"{name}: blockdev-change-medium round trip median {statistics.median(ms):.3f} ms, "
              f"p90 {ms[int(len(ms) * 0.9)]:.3f} ms over {len(ms)}; VmRSS {mem[name]['VmRSS'] / 1024:.1f} MiB "
              f"(outside guest RAM {mem[name]['outside'] / 1024:.1f} MiB), VmHWM {mem[name]['VmHWM'] / 1024:.1f} MiB")
    ours_ms, qemu_ms = rows[0][1], rows[1][1]
    print(f"ours/qemu median round trip = {ours_ms / qemu_ms:.2f}")
    md = [
        "## Media swap over QMP",
        "",
        f"Command: `python3 bench/qmp.py {os.path.basename(VMM)} vmlinuz {RUNS}` (with qemu.qmp "
        "0.0.6). Both VMMs stopped before any guest code runs (ours `--paused`, QEMU `-S`; QEMU with "
        "TCG, which runs nothing here), an IDE CD-ROM at the secondary master with a 1 MiB image and a "
        "QMP socket; one client each, alternating, each `blockdev-change-medium` timed from sending "
        "to its reply (the two DEVICE_TRAY_MOVED events come before it), " + str(RUNS) + " times.",
        "",
        "| VMM | median (ms) | min - max (ms) | p90 (ms) | RSS outside guest RAM (MiB) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for label, med, lo, hi, p90, m in rows:
        md.append(f"| {label} | {med:.3f} | {lo:.3f} - {hi:.3f} | {p90:.3f} | {m['outside'] / 1024:.1f} |")
    md += ["", f"ours / QEMU = **{ours_ms / qemu_ms:.2f}**.", ""]
    text = "\n".join(md) + "\n"
    print(text)
    target = f"media swap round trip\t{ours_ms:.3f} ms (QEMU {qemu_ms:.3f} ms)\t< 5 ms\t{'met' if ours_ms < 5 else 'missed'}\n"
    print("target: " + target, end="")
    out = os.environ.get("BENCH_DIR")
    if out:
        with open(os.path.join(out, "media.md"), "w") as f:
            f.write(text)
        with open(os.path.join(out, "media.targets"), "w") as f:
            f.write(target)


if __name__ == "__main__":
    main()
