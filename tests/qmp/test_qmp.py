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
    extra = ["--drive", f"if=virtio,file={disk}", "--cdrom", iso, "--drive", "if=ide,media=cdrom,index=3"]
    with Vmm("blk", extra) as v:
        asyncio.run(run_query_block(v, disk))
        check(v.wait() == 0, v.stderr())


def main():
    for t in TESTS:
        print("test", t.__name__, flush=True)
        t()
    print(f"QMP-TESTS-PASSED {len(TESTS)}", flush=True)


if __name__ == "__main__":
    main()
