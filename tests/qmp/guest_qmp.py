"""QMP on a running guest, from the host, with qemu.qmp: the test drives the
VMM as a user would while reading the guest's console for its markers.

Run by tests/tests/qmp_guest.rs:  python3 guest_qmp.py SPEC.json
SPEC: {"argv": [...], "env": {...}, "qmp": PATH, "images": DIR,
       "stop_iso": PATH, "done": MARKER, "timeout": S}
`argv` prints the console on stdout (L1's, with the guest's inside, when
nested); `qmp` is the VMM's QMP socket as the host sees it (a bridge to
L1's second UART when nested); `images` is where the VMM sees the images.

Every console line is echoed as "CONSOLE: ..." for the Rust side, which
checks the guest's own exit statuses; this side checks what the host sees
(replies, errors, events) and raises on the first difference. The last
line is QMP-GUEST-PASSED.
"""

import asyncio
import json
import os
import subprocess
import sys
import threading
import time

from qemu.qmp import QMPClient, ExecuteError
from qemu.qmp.protocol import ConnectError

SPEC = json.load(open(sys.argv[1]))
DEADLINE = time.monotonic() + SPEC["timeout"]


def check(cond, what):
    if not cond:
        raise AssertionError(what)


class Console:
    """The console lines, read on a thread; waits are bounded."""

    def __init__(self, argv, env):
        self.proc = subprocess.Popen(argv, env={**os.environ, **env}, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.lines = []
        self.cv = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip("\r\n")
            print("CONSOLE:", line, flush=True)
            with self.cv:
                self.lines.append(line)
                self.cv.notify_all()
        with self.cv:
            self.lines.append(None)
            self.cv.notify_all()

    def count(self, needle):
        with self.cv:
            return sum(1 for l in self.lines if l is not None and needle in l)

    def wait(self, needle, after=0, timeout=300):
        """The first line at index >= after containing needle; its index."""
        end = min(time.monotonic() + timeout, DEADLINE)
        with self.cv:
            i = after
            while True:
                while i < len(self.lines):
                    l = self.lines[i]
                    if l is None:
                        raise AssertionError(f"console ended before {needle!r}")
                    if needle in l:
                        return i, l
                    i += 1
                left = end - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {needle!r} on the console within {timeout} s")
                self.cv.wait(left)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


async def wait_console(con, needle, after=0, timeout=300):
    return await asyncio.get_running_loop().run_in_executor(None, con.wait, needle, after, timeout)


async def connect(path):
    """Connects once the socket exists; the greeting comes when the VMM
    has started (after L1 booted, when nested)."""
    while True:
        check(time.monotonic() < DEADLINE, f"no QMP socket at {path}")
        if os.path.exists(path):
            q = QMPClient("host")
            try:
                await asyncio.wait_for(q.connect(path), 300)
                return q
            except (OSError, asyncio.TimeoutError, ConnectError):
                pass
        await asyncio.sleep(0.1)


async def run(q, cmd, **args):
    """(reply, error text, events) of one command; the events a command
    causes arrive before its reply, so they are all queued by then."""
    q.events.clear()
    try:
        r, err = await asyncio.wait_for(q.execute(cmd, args), 120), None
    except ExecuteError as e:
        r, err = None, e.error.error.desc
    return r, err, q.events.clear()


async def ex(q, cmd, args=None):
    """A command whose reply must come within two minutes (a stalled link
    fails the test with its step instead of hanging it)."""
    return await asyncio.wait_for(q.execute(cmd, args), 120)


async def ok(q, cmd, **args):
    """A command that must succeed; the events it caused."""
    r, err, evs = await run(q, cmd, **args)
    check(err is None, f"{cmd} {args}: {err}")
    return evs


async def block(q, device):
    """`device`'s entry in query-block."""
    return {b["device"]: b for b in await ex(q, "query-block")}[device]


def step(what):
    """Progress on stdout, so that a failure shows how far the host got."""
    print(f"HOST-STEP: {what}", flush=True)


def trays(events):
    return [(e["data"]["device"], e["data"]["tray-open"]) for e in events if e["event"] == "DEVICE_TRAY_MOVED"]


async def status(q):
    return (await ex(q, "query-status"))["status"]


async def scenario(con, q, images):
    cd = "ide1-cd0"
    one, two = f"{images}/cd.iso", f"{images}/cd2.iso"

    # 1. A medium change while the guest runs: it read CD one; it finds
    #    CD two once the host has changed it.
    step("1: A medium change while the guest runs: it read CD o")
    await wait_console(con, "G-WAIT-CHANGE")
    evs = await ok(q, "blockdev-change-medium", device=cd, filename=two, format="raw")
    check(trays(evs) == [(cd, True), (cd, False)], evs)
    await wait_console(con, "TWO=")

    # 2. The guest locks the door: eject without force fails with QEMU's
    #    message and the guest is asked (it sees the eject request); with
    #    force the tray opens and the guest finds no medium.
    step("2: The guest locks the door: eject without force fail")
    await wait_console(con, "G-LOCKED")
    r, err, evs = await run(q, "eject", device=cd)
    check(err == f"Device '{cd}' is locked and force was not specified, wait for tray to open and try again", err)
    check(trays(evs) == [], evs)
    await wait_console(con, "GESN-EVENT=")
    evs = await ok(q, "eject", device=cd, force=True)
    check(trays(evs) == [(cd, True)], evs)
    blk = await block(q, cd)
    check(blk["tray_open"] is True and "inserted" not in blk and blk["locked"] is False, blk)
    await wait_console(con, "G-NOMEDIUM-DONE")

    # 3. stop/cont: the guest's clock-driven ticks stall, then go on.
    step("3: stop/cont: the guest's clock-driven ticks stall, t")
    i, _ = await wait_console(con, "TICK=3")
    r, err, evs = await run(q, "stop")
    check(err is None and [e["event"] for e in evs] == ["STOP"], (err, evs))
    check(await status(q) == "paused", "query-status after stop")
    await asyncio.sleep(1)  # what was in flight on the console drains
    before = con.count("TICK=")
    await asyncio.sleep(3)
    check(con.count("TICK=") == before, "the guest ran while stopped")
    r, err, evs = await run(q, "cont")
    check(err is None and [e["event"] for e in evs] == ["RESUME"], (err, evs))
    check(await status(q) == "running", "query-status after cont")
    await wait_console(con, "TICK=", after=len(con.lines) - 1, timeout=60)

    # 4. block_resize on the virtio disk: the guest sees the new size.
    step("4: block_resize on the virtio disk: the guest sees th")
    await wait_console(con, "G-RESIZE-WAIT")
    evs = await ok(q, "block_resize", device="virtio0", size=32 << 20)
    await wait_console(con, "VDA-SECTORS=")

    # 5. A hundred media changes while the guest reads the CD in a loop.
    step("5: A hundred media changes while the guest reads the")
    evs = await ok(q, "blockdev-change-medium", device=cd, filename=one)
    await wait_console(con, "G-CHANGES-START")
    failed = []
    for n in range(100):
        mark = len(con.lines)
        r, err, evs = await run(q, "blockdev-change-medium", device=cd, filename=two if n % 2 == 0 else one)
        if err is not None:
            failed.append(err)
        elif trays(evs) != [(cd, True), (cd, False)]:
            failed.append(f"events {evs}")
        if n % 5 == 4:
            # Interleave: a good read of the guest after this change.
            await wait_console(con, "READ-OK=", after=mark, timeout=120)
    check(failed == [], f"{len(failed)} changes failed: {failed[:3]}")
    # The last medium reads as zeros: the guest's signal to stop reading.
    evs = await ok(q, "blockdev-change-medium", device=cd, filename=SPEC["stop_iso"])
    await wait_console(con, "CHANGE-READS=")

    # 6. werror=stop on a real ENOSPC: BLOCK_IO_ERROR then STOP, io-error;
    #    L1 frees space; cont retries the held write and the guest goes on.
    #    The queue is not cleared here: the error may have come in before
    #    the console line above (they travel separately); events before it
    #    were taken by the last command.
    step("6: werror=stop on a real ENOSPC: BLOCK_IO_ERROR then")
    ev = await asyncio.wait_for(q.events.get(), 300)
    check(ev["event"] == "BLOCK_IO_ERROR", ev)
    check(ev["data"]["device"] == "virtio1" and ev["data"]["action"] == "stop" and ev["data"]["nospace"] is True, ev)
    ev = await asyncio.wait_for(q.events.get(), 60)
    check(ev["event"] == "STOP", ev)
    check(await status(q) == "io-error", "query-status after the error")
    blk = await block(q, "virtio1")
    check(blk["io-status"] == "nospace", blk)
    await wait_console(con, "L1-SPACE-FREED")
    evs = await ok(q, "cont")
    check("RESUME" in [e["event"] for e in evs], evs)
    blk = await block(q, "virtio1")
    check(blk["io-status"] == "ok", blk)
    await wait_console(con, "GUEST-END=")


async def next_event(q, name, timeout=300):
    """The next event called `name`, skipping others."""
    while True:
        ev = await asyncio.wait_for(q.events.get(), timeout)
        if ev["event"] == name:
            return ev


async def go(q, n, device="virtio2"):
    """The guest waits for the host between steps by watching the size of
    a small signal disk (virtio2 unless said): the host grows it by 1 MiB
    per step."""
    await ok(q, "block_resize", device=device, size=(1 + n) << 20)


async def error_policies(con, q, images):
    """Issue 12: injected faults and the four policies, from the host."""
    # 1. werror=stop with EIO injected on writes, several writes in flight:
    #    the VM stops (BLOCK_IO_ERROR then STOP, io-error, io-status
    #    failed); clear; cont; every write succeeds.
    step("1: werror=stop with EIO injected on writes, several w")
    await wait_console(con, "G-READY-STOP")
    await ok(q, "x-block-error-inject", id="virtio0", operation="write", errno="EIO")
    blk = await block(q, "virtio0")
    check(blk["x-inject"][0]["errno"] == "EIO", blk)
    q.events.clear()
    await go(q, 1)
    ev = await next_event(q, "BLOCK_IO_ERROR")
    check(ev["data"]["device"] == "virtio0" and ev["data"]["action"] == "stop" and ev["data"]["operation"] == "write", ev)
    await next_event(q, "STOP", 60)
    check(await status(q) == "io-error", "io-error")
    blk = await block(q, "virtio0")
    check(blk["io-status"] == "failed", blk)
    await ok(q, "x-block-error-clear", id="virtio0")
    r, err, evs = await run(q, "cont")
    check(err is None and "RESUME" in [e["event"] for e in evs], (err, evs))
    await wait_console(con, "STOP-WRITES-DONE")

    # 2. report and ignore, on writes and on reads (virtio1: werror and
    #    rerror set by the guest's step via the command line: report).
    step("2: report and ignore, on writes and on reads (virtio1")
    for op in ("write", "read"):
        await wait_console(con, f"G-READY-REPORT-{op.upper()}")
        # Until cleared: a retry by the guest kernel fails too.
        await ok(q, "x-block-error-inject", id="virtio1", operation=op, errno="EIO")
        await go(q, 2 if op == "write" else 3)
        ev = await next_event(q, "BLOCK_IO_ERROR")
        check(ev["data"]["device"] == "virtio1" and ev["data"]["action"] == "report" and ev["data"]["operation"] == op, ev)
        await wait_console(con, f"REPORT-{op.upper()}-DONE")
        await ok(q, "x-block-error-clear", id="virtio1")
        check(await status(q) == "running", "report never stops the VM")
    for op in ("write", "read"):
        await wait_console(con, f"G-READY-IGNORE-{op.upper()}")
        await ok(q, "x-block-error-inject", id="virtio3", operation=op, errno="EIO", once=True)
        await go(q, 4 if op == "write" else 5)
        ev = await next_event(q, "BLOCK_IO_ERROR")
        check(ev["data"]["device"] == "virtio3" and ev["data"]["action"] == "ignore", ev)
        await wait_console(con, f"IGNORE-{op.upper()}-DONE")

    # 3. Latency: 2 s on virtio0's reads; virtio1 is not slowed.
    step("3: Latency: 2 s on virtio0's reads; virtio1 is not sl")
    await wait_console(con, "G-READY-SLOW")
    await ok(q, "x-block-latency-inject", id="virtio0", operation="read", ms=2000)
    await go(q, 6)
    await wait_console(con, "SLOW-DONE")
    await ok(q, "x-block-error-clear", id="virtio0")

    # 4. stop/cont every few hundred milliseconds during heavy writes,
    #    fifty times.
    step("4: stop/cont every few hundred milliseconds during he")
    await wait_console(con, "G-READY-FLAP")
    await go(q, 7)
    for i in range(50):
        await asyncio.sleep(0.2)
        await ok(q, "stop")
        check(await status(q) == "paused", f"flap {i}")
        await asyncio.sleep(0.1)
        await ok(q, "cont")
    await go(q, 8)

    # 5. werror=enospc: a real ENOSPC stops the VM (nospace); L1 frees the
    #    space; cont. An EIO on the same drive is reported.
    step("5: werror=enospc: a real ENOSPC stops the VM (nospace")
    await wait_console(con, "G-READY-ENOSPC")
    q.events.clear()
    await go(q, 9)
    ev = await next_event(q, "BLOCK_IO_ERROR")
    check(ev["data"]["device"] == "virtio4" and ev["data"]["action"] == "stop" and ev["data"]["nospace"] is True, ev)
    await next_event(q, "STOP", 60)
    check(await status(q) == "io-error", "enospc: io-error")
    blk = await block(q, "virtio4")
    check(blk["io-status"] == "nospace", blk)
    await wait_console(con, "L1-SPACE-FREED")
    await ok(q, "cont")
    await wait_console(con, "ENOSPC-DONE")
    await wait_console(con, "G-READY-ENOSPC-EIO")
    await ok(q, "x-block-error-inject", id="virtio4", operation="write", errno="EIO")
    await go(q, 10)
    ev = await next_event(q, "BLOCK_IO_ERROR")
    check(ev["data"]["device"] == "virtio4" and ev["data"]["action"] == "report", ev)
    await wait_console(con, "ENOSPC-EIO-DONE")
    r, err, _ = await run(q, "x-block-error-clear", id="virtio4")
    check(err is None and await status(q) == "running", err)

    # 6. rerror=stop on the IDE disk; rerror=report on the CD-ROM.
    step("6: rerror=stop on the IDE disk; rerror=report on the")
    await wait_console(con, "G-READY-IDE")
    await ok(q, "x-block-error-inject", id="ide0-hd0", operation="read", errno="EIO")
    q.events.clear()
    await go(q, 11)
    ev = await next_event(q, "BLOCK_IO_ERROR")
    check(ev["data"]["device"] == "ide0-hd0" and ev["data"]["action"] == "stop" and ev["data"]["operation"] == "read", ev)
    await next_event(q, "STOP", 60)
    check(await status(q) == "io-error", "ide: io-error")
    await ok(q, "x-block-error-clear", id="ide0-hd0")
    await ok(q, "cont")
    await wait_console(con, "IDE-DONE")
    await wait_console(con, "G-READY-CD")
    await ok(q, "x-block-error-inject", id="ide1-cd0", operation="read", errno="EIO")
    await go(q, 12)
    ev = await next_event(q, "BLOCK_IO_ERROR")
    check(ev["data"]["device"] == "ide1-cd0" and ev["data"]["action"] == "report", ev)
    await wait_console(con, "CD-DONE")
    await wait_console(con, "GUEST-END=")


def limits(bps, **more):
    """block_set_io_throttle's arguments for virtio0: `bps` total, the
    other five rates 0."""
    return {"device": "virtio0", "bps": bps, "bps_rd": 0, "bps_wr": 0, "iops": 0, "iops_rd": 0, "iops_wr": 0, **more}


async def throttle(con, q, images):
    """Issue 14: limits set over QMP on an unthrottled drive, on the VM
    started paused and while it runs; the guest times its reads."""
    step("1: before the guest starts: virtio0 to 4 MiB/s")
    check(await status(q) == "prelaunch", "started paused")
    ins = (await block(q, "virtio0"))["inserted"]
    check(ins["bps"] == 0 and "group" not in ins, ins)
    r, err, _ = await run(q, "block_set_io_throttle", **limits(1 << 20, bps_rd=1))
    check(err == "bps/iops/max total values and read/write values cannot be used at the same time", err)
    r, err, _ = await run(q, "block_set_io_throttle", **limits(1 << 20, bps_max=1 << 19))
    check(err == "bps_max/iops_max cannot be lower than bps/iops", err)
    await ok(q, "block_set_io_throttle", **limits(4 << 20))
    ins = (await block(q, "virtio0"))["inserted"]
    check(ins["bps"] == 4 << 20 and ins["group"] == "virtio0", ins)
    await ok(q, "cont")
    await wait_console(con, "SLOW1-CS=")

    step("2: while it runs: limits off")
    await wait_console(con, "G-READY-OFF")
    await ok(q, "block_set_io_throttle", **limits(0))
    ins = (await block(q, "virtio0"))["inserted"]
    check(ins["bps"] == 0 and "group" not in ins, ins)
    await go(q, 2, "virtio1")
    await wait_console(con, "FAST-CS=")

    step("3: while it runs: 4 MiB/s again")
    await wait_console(con, "G-READY-ON")
    await ok(q, "block_set_io_throttle", **limits(4 << 20))
    await go(q, 3, "virtio1")

    step("4: quit while a vCPU waits in a throttled CD read")
    await wait_console(con, "G-READY-QUIT")
    await ok(q, "block_set_io_throttle", **limits(1024, device="ide1-cd0"))
    await go(q, 4, "virtio1")
    await wait_console(con, "G-CD-READING")
    # The first 64 KiB block goes at once; the next waits a minute.
    while True:
        st = {s["device"]: s["stats"] for s in await ex(q, "query-blockstats")}
        if st["ide1-cd0"]["rd_bytes"] >= 32768:
            break
        check(time.monotonic() < DEADLINE, "the CD read never started")
        await asyncio.sleep(0.1)
    await asyncio.sleep(1)
    t = time.monotonic()
    await ok(q, "quit")
    await wait_console(con, "H-VMM-RC=", timeout=60)
    took = time.monotonic() - t
    check(took < 20, f"the VMM took {took:.1f} s to quit: it waited for the throttle")
    print(f"HOST-STEP: quit took {took:.1f} s", flush=True)


async def main():
    con = Console(SPEC["argv"], SPEC["env"])
    try:
        q = await connect(SPEC["qmp"])
        scenarios = {"media_and_run_state": scenario, "error_policies": error_policies, "throttle": throttle}
        await scenarios[SPEC.get("scenario", "media_and_run_state")](con, q, SPEC["images"])
        try:
            await q.disconnect()
        except EOFError:
            pass
        await wait_console(con, SPEC["done"])
    finally:
        con.stop()
    print("QMP-GUEST-PASSED", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
