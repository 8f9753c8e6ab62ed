"""QMP against `vmm --paused` (no guest runs), with the reference client,
qemu.qmp, and with a raw socket where the client library would hide what
is being tested (negotiation, malformed input).

Run by tests/tests/qmp.rs:  python3 test_qmp.py VMM KERNEL WORKDIR
Every check raises on failure; the last line is QMP-TESTS-PASSED N.
"""

import asyncio
import json
import os
import socket
import stat
import subprocess
import sys
import time

from qemu.qmp import QMPClient, ExecuteError

VMM, KERNEL, WORK = sys.argv[1], sys.argv[2], sys.argv[3]


def check(cond, what):
    if not cond:
        raise AssertionError(what)


TESTS = []


def test(fn):
    TESTS.append(fn)
    return fn


class Vmm:
    """A `vmm --paused` with a QMP socket; stopped and reaped on exit."""

    def __init__(self, name, extra=()):
        self.sock = os.path.join(WORK, name + ".sock")
        self.err = os.path.join(WORK, name + ".err")
        args = [VMM, "--kernel", KERNEL, "--paused", "--serial", "none", "--qmp", self.sock, *extra]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stderr=open(self.err, "w"))
        # Ready when it accepts (a stale socket file may be there before).
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.socket(socket.AF_UNIX) as s:
                    s.connect(self.sock)
                    break
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"no QMP socket: {self.stderr()}")
            time.sleep(0.02)

    def stderr(self):
        with open(self.err) as f:
            return f.read()

    def wait(self, timeout=30):
        return self.proc.wait(timeout)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)


class Raw:
    """A line-oriented raw QMP connection."""

    def __init__(self, path):
        self.s = socket.socket(socket.AF_UNIX)
        self.s.settimeout(10)
        self.s.connect(path)
        self.buf = b""

    def recv(self):
        while b"\n" not in self.buf:
            data = self.s.recv(65536)
            if not data:
                raise EOFError("connection closed")
            self.buf += data
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def send(self, data):
        self.s.sendall(data if isinstance(data, bytes) else json.dumps(data).encode() + b"\n")

    def cmd(self, execute, id=None, **args):
        msg = {"execute": execute}
        if args:
            msg["arguments"] = args
        if id is not None:
            msg["id"] = id
        self.send(msg)
        return self.recv()


def error_of(reply):
    check("error" in reply, f"expected an error, got {reply}")
    return reply["error"]["class"], reply["error"]["desc"]


@test
def negotiation_and_protocol_errors():
    with Vmm("proto") as v:
        c = Raw(v.sock)
        g = c.recv()
        check(g["QMP"]["version"]["qemu"]["major"] == 7, g)
        check(g["QMP"]["capabilities"] == [], g)
        r = c.cmd("query-status", id="early")
        check(error_of(r) == ("CommandNotFound", "Expecting capabilities negotiation with 'qmp_capabilities'"), r)
        check(r["id"] == "early", r)
        check(c.cmd("qmp_capabilities") == {"return": {}}, "negotiation")
        r = c.cmd("qmp_capabilities")
        check(error_of(r) == ("CommandNotFound", "Capabilities negotiation is already complete, command ignored"), r)
        # Malformed JSON: an error, and the same connection goes on.
        c.send(b'{"execute": "query-status", nope}\n')
        cls, desc = error_of(c.recv())
        check(cls == "GenericError" and desc.startswith("JSON parse error"), desc)
        check(c.cmd("query-status", id=1)["return"]["status"] == "prelaunch", "after garbage")
        c.send([1, 2])
        check(error_of(c.recv())[1] == "QMP input must be a JSON object", "array")
        c.send({"arguments": {}})
        check(error_of(c.recv())[1] == "QMP input lacks member 'execute'", "no execute")
        r = c.cmd("frobnicate", id={"any": ["json"]})
        check(error_of(r) == ("CommandNotFound", "The command frobnicate has not been found"), r)
        check(r["id"] == {"any": ["json"]}, r)
        r = c.cmd("stop", now=True)
        check(error_of(r) == ("GenericError", "Parameter 'now' is unexpected"), r)
        r = c.cmd("query-blockstats", **{"query-nodes": "yes"})
        check(error_of(r)[1] == "Invalid parameter type for 'query-nodes', expected: boolean", r)
        # An oversized message: one error, then the connection still works.
        c.send(b'{"execute": "' + b"x" * (2 << 20) + b'"}\n')
        cls, desc = error_of(c.recv())
        check("longer than" in desc, desc)
        check(c.cmd("query-status")["return"]["status"] == "prelaunch", "after oversize")
        # A client leaving mid-message harms nothing.
        d = Raw(v.sock)
        d.recv()
        d.send(b'{"execute": "qmp_capabilities"}\n{"execute": "sto')
        d.s.close()
        check(c.cmd("query-status")["return"]["status"] == "prelaunch", "after a client left")
        check(v.proc.poll() is None, "the VMM died")
        # On the wire, a command's events come before its reply.
        c.send({"execute": "cont", "id": "c1"})
        first, second = c.recv(), c.recv()
        check(first.get("event") == "RESUME" and second == {"return": {}, "id": "c1"}, (first, second))
        c.send({"execute": "stop", "id": "s1"})
        first, second = c.recv(), c.recv()
        check(first.get("event") == "STOP" and second == {"return": {}, "id": "s1"}, (first, second))


@test
def socket_file_is_private_live_one_refused_removed_on_exit():
    with Vmm("sock") as v:
        mode = stat.S_IMODE(os.stat(v.sock).st_mode)
        check(mode == 0o600, oct(mode))
        other = subprocess.run([VMM, "--kernel", KERNEL, "--paused", "--serial", "none", "--qmp", v.sock],
                               stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
        check(other.returncode == 1, other)
        check("already listening" in other.stderr and v.sock in other.stderr, other.stderr)
        check(os.path.exists(v.sock), "the refused VMM removed the live socket")
        v.proc.terminate()
        check(v.wait() == 0, v.stderr())
        check(not os.path.exists(v.sock), "socket left behind")
    # A stale socket (its VMM was killed) is replaced.
    with Vmm("stale") as v:
        v.proc.kill()
        v.wait()
        check(os.path.exists(v.sock), "SIGKILL cannot clean up")
    with Vmm("stale") as v:
        c = Raw(v.sock)
        check("QMP" in c.recv(), "greeting on the replaced socket")


async def run_stop_cont_quit(v):
    a, b = QMPClient("a"), QMPClient("b")
    await a.connect(v.sock)
    await b.connect(v.sock)
    st = await a.execute("query-status")
    check(st == {"status": "prelaunch", "running": False, "singlestep": False}, st)
    # stop before the first run changes nothing and says nothing (QEMU).
    await a.execute("stop")
    check((await a.execute("query-status"))["status"] == "prelaunch", "stop in prelaunch")
    await a.execute("cont")
    # Events reach every client, before the reply.
    for c in (a, b):
        ev = await asyncio.wait_for(c.events.get(), 10)
        check(ev["event"] == "RESUME", ev)
        check(ev["timestamp"]["seconds"] > 1_700_000_000, ev)
    check((await b.execute("query-status"))["status"] == "running", "after cont")
    await b.execute("stop")
    ev = await asyncio.wait_for(a.events.get(), 10)
    check(ev["event"] == "STOP", ev)
    check((await a.execute("query-status")) == {"status": "paused", "running": False, "singlestep": False}, "paused")
    await a.execute("cont")
    check((await asyncio.wait_for(a.events.get(), 10))["event"] == "RESUME", "second resume")
    await a.execute("stop")
    check((await asyncio.wait_for(a.events.get(), 10))["event"] == "STOP", "second stop")
    # Both clients see SHUTDOWN with QEMU's cause.
    try:
        await a.execute("quit")
    except EOFError:
        pass
    for c in (a, b):
        while True:
            ev = await asyncio.wait_for(c.events.get(), 10)
            if ev["event"] == "SHUTDOWN":
                check(ev["data"] == {"guest": False, "reason": "host-qmp-quit"}, ev)
                break
    for c in (a, b):
        try:
            await c.disconnect()
        except EOFError:
            pass


@test
def stop_cont_and_quit_with_qemu_qmp():
    with Vmm("run") as v:
        asyncio.run(run_stop_cont_quit(v))
        check(v.wait() == 0, v.stderr())
        check("vmm: quit by QMP" in v.stderr(), v.stderr())


async def run_query_block(v, disk):
    q = QMPClient("q")
    await q.connect(v.sock)
    blocks = {b["device"]: b for b in await q.execute("query-block")}
    check(set(blocks) == {"virtio0", "ide1-cd0", "ide1-cd1"}, blocks)
    vd = blocks["virtio0"]
    check(vd["removable"] is False and vd["locked"] is False and "tray_open" not in vd, vd)
    check(vd["inserted"]["file"] == disk and vd["inserted"]["ro"] is False, vd)
    check(vd["inserted"]["image"]["virtual-size"] == 1 << 20, vd)
    check(vd["inserted"]["drv"] == "raw", "the injection layer is not the format")
    check(vd["x-inject"] == [
        {"type": "error", "operation": "write", "errno": "ENOSPC", "once": True, "hits": 0, "sector": 8, "count": 2},
        {"type": "latency", "operation": "read", "ms": 5, "hits": 0},
    ], vd)
    check("x-inject" not in blocks["ide1-cd0"], "no rules, no layer")
    cd = blocks["ide1-cd0"]
    check(cd["removable"] is True and cd["tray_open"] is False and cd["locked"] is False, cd)
    check(cd["inserted"]["ro"] is True and cd["inserted"]["drv"] == "raw", cd)
    check(cd["inserted"]["node-name"].startswith("#block"), cd)
    empty = blocks["ide1-cd1"]
    check("inserted" not in empty and empty["tray_open"] is False, empty)
    stats = {s["device"]: s for s in await q.execute("query-blockstats")}
    check(stats["virtio0"]["stats"]["rd_operations"] == 0, stats)
    check("node-name" not in stats["ide1-cd1"], stats["ide1-cd1"])
    names = {c["name"] for c in await q.execute("query-commands")}
    check({"qmp_capabilities", "query-block", "stop", "cont", "quit"} <= names, names)
    try:
        await q.execute("system_reset")
        ev = await asyncio.wait_for(q.events.get(), 10)
        check(ev["event"] == "SHUTDOWN" and ev["data"]["reason"] == "host-qmp-system-reset", ev)
        await q.disconnect()
    except EOFError:
        pass


@test
def query_block_with_a_disk_a_cd_and_an_empty_drive():
    disk = os.path.join(WORK, "d.raw")
    with open(disk, "wb") as f:
        f.truncate(1 << 20)
    iso = os.path.join(WORK, "cd.iso")
    with open(iso, "wb") as f:
        f.truncate(4 << 20)
    extra = ["--drive", f"if=virtio,file={disk},x-inject=write:ENOSPC:once@8+2,x-latency=read:5",
             "--cdrom", iso, "--drive", "if=ide,media=cdrom,index=3"]
    with Vmm("blk", extra) as v:
        asyncio.run(run_query_block(v, disk))
        check(v.wait() == 0, v.stderr())



def make_file(name, size, fill=b"\0"):
    path = os.path.join(WORK, name)
    with open(path, "wb") as f:
        f.write(fill * size)
    return path


class Media:
    """One qemu.qmp client on a VMM with a filled CD (cd0) and an empty
    one (cd1); `run` gives a command's reply and the tray events it
    caused (they come before the reply, so they are queued by then)."""

    def __init__(self, q):
        self.q = q

    async def run(self, cmd, **args):
        self.q.events.clear()
        try:
            r = await self.q.execute(cmd, args)
            err = None
        except ExecuteError as e:
            r, err = None, e.error.error.desc
        evs = [(e["data"]["device"], e["data"]["tray-open"]) for e in self.q.events.clear()
               if e["event"] == "DEVICE_TRAY_MOVED"]
        return r, err, evs

    async def ok(self, cmd, events, **args):
        r, err, evs = await self.run(cmd, **args)
        check(err is None, f"{cmd} {args}: {err}")
        check(evs == events, f"{cmd} {args}: tray events {evs}, want {events}")

    async def fails(self, cmd, message, **args):
        r, err, evs = await self.run(cmd, **args)
        check(err == message, f"{cmd} {args}: error {err!r}, want {message!r}")
        check(evs == [], f"{cmd} {args}: a failed command moved the tray {evs}")

    async def state(self, dev):
        blocks = {b["device"]: b for b in await self.q.execute("query-block")}
        b = blocks[dev]
        return b["tray_open"], b.get("inserted", {}).get("file"), b.get("inserted", {}).get("ro")


async def run_media(v, iso1, iso2):
    q = QMPClient("media")
    await q.connect(v.sock)
    m = Media(q)
    cd, empty = "ide1-cd0", "ide1-cd1"
    check(await m.state(cd) == (False, iso1, True), await m.state(cd))
    check(await m.state(empty) == (False, None, None), await m.state(empty))

    # iotest 118 on the initially empty drive: eject, open/close, close on
    # closed, remove on closed, remove on empty, insert/remove cycles.
    await m.ok("eject", [(empty, True)], device=empty)
    check(await m.state(empty) == (True, None, None), "eject on empty")
    await m.ok("blockdev-close-tray", [(empty, False)], id=empty)
    await m.ok("blockdev-close-tray", [], id=empty)
    await m.fails("blockdev-remove-medium", f"Tray of device '{empty}' is not open", id=empty)
    await m.ok("blockdev-open-tray", [(empty, True)], id=empty)
    await m.ok("blockdev-remove-medium", [], id=empty)
    await m.ok("blockdev-add", [], driver="file", filename=iso1, **{"node-name": "e1"}, **{"read-only": True})
    for _ in range(2):
        await m.ok("blockdev-insert-medium", [], id=empty, **{"node-name": "e1"})
        check(await m.state(empty) == (True, iso1, True), "inserted into the empty drive")
        await m.ok("blockdev-remove-medium", [], id=empty)
    await m.ok("blockdev-close-tray", [(empty, False)], id=empty)
    check(await m.state(empty) == (False, None, None), "empty and closed again")

    # iotest 118: change, eject, open/close, in the orders it tries.
    await m.ok("blockdev-change-medium", [(cd, True), (cd, False)], device=cd, filename=iso2, format="raw")
    check(await m.state(cd) == (False, iso2, True), "after change")
    await m.ok("eject", [(cd, True)], device=cd)
    check(await m.state(cd) == (True, None, None), "after eject")
    await m.ok("blockdev-close-tray", [(cd, False)], id=cd)
    check(await m.state(cd) == (False, None, None), "closed empty")
    await m.ok("blockdev-change-medium", [(cd, True), (cd, False)], id=cd, filename=iso1)
    await m.ok("blockdev-open-tray", [(cd, True)], id=cd)
    check(await m.state(cd) == (True, iso1, True), "open keeps the medium")
    await m.ok("blockdev-close-tray", [(cd, False)], id=cd)
    check(await m.state(cd) == (False, iso1, True), "closed again")
    # Eject, then change: the tray is open already, so only it closing.
    await m.ok("eject", [(cd, True)], device=cd)
    await m.ok("blockdev-change-medium", [(cd, False)], device=cd, filename=iso2)
    # Open, then change: the same.
    await m.ok("blockdev-open-tray", [(cd, True)], id=cd)
    await m.ok("blockdev-change-medium", [(cd, False)], device=cd, filename=iso1)
    check(await m.state(cd) == (False, iso1, True), "open then change")
    # Remove and insert cycles with a node of our own.
    await m.ok("blockdev-add", [], driver="raw", **{"node-name": "new"}, file={"driver": "file", "filename": iso2}, **{"read-only": True})
    await m.fails("blockdev-remove-medium", f"Tray of device '{cd}' is not open", id=cd)
    await m.ok("blockdev-open-tray", [(cd, True)], id=cd)
    await m.fails("blockdev-insert-medium", f"There already is a medium in device '{cd}'", id=cd, **{"node-name": "new"})
    for _ in range(3):
        await m.ok("blockdev-remove-medium", [], id=cd)
        check(await m.state(cd) == (True, None, None), "removed")
        await m.ok("blockdev-insert-medium", [], id=cd, **{"node-name": "new"})
        check(await m.state(cd) == (True, iso2, True), "inserted")
    await m.fails("blockdev-del", "Node new is in use", **{"node-name": "new"})
    await m.ok("blockdev-close-tray", [(cd, False)], id=cd)
    # Closing a closed tray: success, no event.
    await m.ok("blockdev-close-tray", [], id=cd)
    # Initially empty drive: removing nothing is a no-op; a change fills it.
    await m.ok("blockdev-open-tray", [(empty, True)], id=empty)
    await m.ok("blockdev-remove-medium", [], id=empty)
    await m.ok("blockdev-remove-medium", [], id=empty)
    await m.ok("blockdev-close-tray", [(empty, False)], id=empty)
    await m.ok("blockdev-change-medium", [(empty, True), (empty, False)], device=empty, filename=iso1)
    check(await m.state(empty) == (False, iso1, True), "empty drive filled")
    await m.fails("blockdev-insert-medium", "Node 'nope' not found", id=empty, **{"node-name": "nope"})
    await m.fails("blockdev-insert-medium", "Node 'new' is already in use", id=empty, **{"node-name": "new"})
    # Errors QEMU gives, word for word.
    await m.fails("eject", "Device 'nope' not found", device="nope")
    await m.fails("eject", "Need exactly one of 'device' and 'id'")
    await m.fails("eject", "Device 'virtio0' is not removable", device="virtio0")
    await m.fails("blockdev-change-medium", f"Could not open '{WORK}/missing.iso': No such file or directory",
                  device=cd, filename=f"{WORK}/missing.iso")
    check(await m.state(cd) == (False, iso2, True), "a failed change keeps the old medium")
    await m.fails("blockdev-add", "Duplicate nodes with node-name='new'", driver="null-co", **{"node-name": "new"})
    await m.fails("blockdev-add", "'node-name' must be specified for the root node", driver="null-co")
    await m.fails("blockdev-add", "Invalid node-name: '#block1'", driver="null-co", **{"node-name": "#block1"})
    await m.fails("blockdev-add", f"node-name={cd} is conflicting with a device id", driver="null-co", **{"node-name": cd})
    await m.fails("blockdev-add", "Node name too long", driver="null-co", **{"node-name": "n" * 32})
    await m.fails("blockdev-del", "Failed to find node with node-name='nope'", **{"node-name": "nope"})
    await m.ok("blockdev-add", [], driver="null-co", **{"node-name": "spare"}, size=4096)
    await m.ok("blockdev-del", [], **{"node-name": "spare"})
    await m.fails("blockdev-del", "Failed to find node with node-name='spare'", **{"node-name": "spare"})
    await q.disconnect()


@test
def media_sequences_of_iotest_118_on_a_filled_and_an_empty_cd():
    iso1 = make_file("one.iso", 1 << 20, b"1")
    iso2 = make_file("two.iso", 2 << 20, b"2")
    disk = make_file("vd.raw", 1 << 20)
    extra = ["--drive", f"if=virtio,file={disk}", "--cdrom", iso1, "--drive", "if=ide,media=cdrom,index=3"]
    with Vmm("media", extra) as v:
        asyncio.run(run_media(v, iso1, iso2))


def make_unwritable(path):
    """A file even root cannot open for writing: immutable (chattr +i) when
    we are root, mode 0444 otherwise. Returns an undo function."""
    if os.geteuid() != 0:
        os.chmod(path, 0o444)
        return lambda: os.chmod(path, 0o644)
    subprocess.run(["chattr", "+i", path], check=True)
    return lambda: subprocess.run(["chattr", "-i", path], check=True)


async def run_read_only_modes(v, iso1, ro_file, rw_file):
    q = QMPClient("ro")
    await q.connect(v.sock)
    m = Media(q)
    cd = "ide1-cd0"
    await m.ok("blockdev-change-medium", [(cd, True), (cd, False)], device=cd, filename=rw_file,
               **{"read-only-mode": "read-write"})
    check(await m.state(cd) == (False, rw_file, False), "read-write")
    await m.ok("blockdev-change-medium", [(cd, True), (cd, False)], device=cd, filename=rw_file,
               **{"read-only-mode": "retain"})
    check(await m.state(cd) == (False, rw_file, False), "retain keeps read-write")
    await m.ok("blockdev-change-medium", [(cd, True), (cd, False)], device=cd, filename=ro_file,
               **{"read-only-mode": "read-only"})
    check(await m.state(cd) == (False, ro_file, True), "read-only")
    # A file that cannot be written, asked read-write: refused before the
    # tray moves, and the old medium stays.
    r, err, evs = await m.run("blockdev-change-medium", device=cd, filename=ro_file, **{"read-only-mode": "read-write"})
    check(err is not None and err.startswith(f"Could not open '{ro_file}': "), err)
    check(evs == [], evs)
    check(await m.state(cd) == (False, ro_file, True), "old medium kept")
    await m.fails("blockdev-change-medium", "Parameter 'read-only-mode' does not accept value 'sometimes'",
                  device=cd, filename=ro_file, **{"read-only-mode": "sometimes"})
    await q.disconnect()


@test
def change_medium_read_only_modes():
    iso1 = make_file("ro1.iso", 1 << 20, b"1")
    rw_file = make_file("rw.iso", 1 << 20, b"w")
    ro_file = make_file("ro.iso", 1 << 20, b"r")
    undo = make_unwritable(ro_file)
    try:
        with Vmm("romode", ["--cdrom", iso1]) as v:
            asyncio.run(run_read_only_modes(v, iso1, ro_file, rw_file))
    finally:
        undo()


@test
def resize_a_virtio_disk_and_a_node():
    disk = make_file("grow.raw", 1 << 20)
    extra = ["--drive", f"if=virtio,file={disk}"]
    with Vmm("resize", extra) as v:
        async def go():
            q = QMPClient("resize")
            await q.connect(v.sock)
            m = Media(q)
            await m.ok("block_resize", [], device="virtio0", size=4 << 20)
            check(os.path.getsize(disk) == 4 << 20, os.path.getsize(disk))
            b = [b for b in await q.execute("query-block") if b["device"] == "virtio0"][0]
            check(b["inserted"]["image"]["virtual-size"] == 4 << 20, b)
            node = [b for b in await q.execute("query-block") if b["device"] == "virtio0"][0]["inserted"]["node-name"]
            await m.ok("block_resize", [], **{"node-name": node}, size=8 << 20)
            check(os.path.getsize(disk) == 8 << 20, "by node-name")
            await m.fails("block_resize", "Parameter 'size' expects a >0 size", device="virtio0", size=-1)
            await m.fails("block_resize", "Cannot find device='nope' nor node-name=''", device="nope", size=1)
            await m.fails("block_resize", "Cannot find device='nope' nor node-name=''", device="nope", size=-1)
            await m.fails("block_resize", "Cannot find device='' nor node-name=''", size=1)
            await m.fails("block_resize", "Parameter 'size' is missing", device="virtio0")
            await q.disconnect()
        asyncio.run(go())


def main():
    for t in TESTS:
        print("test", t.__name__, flush=True)
        t()
    print(f"QMP-TESTS-PASSED {len(TESTS)}", flush=True)


if __name__ == "__main__":
    main()
