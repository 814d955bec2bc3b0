"""Peer processes for the interop tests: our side or the reference (`zerobuffer-ipc`) side.

Run as `python tests/_peers.py JSON`; the child talks JSON lines on stdout (events) and takes
command lines on stdin. `Peer` starts one from a test and reads its events with timeouts, so a
bug fails the test instead of hanging it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import random
import select
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import posix_ipc

REPO = Path(__file__).resolve().parent.parent
LOCK_DIR = Path("/tmp/zerobuffer")
HEADER = 16
PATTERN_MODULUS = 251


# ---------------------------------------------------------------- frame contents, shared by both sides


def frame_sizes(seed: int, count: int, max_total: int, ring: int | None = None) -> list[int]:
    """Seeded data lengths mixing tiny, medium and large frames, each with 16 + N <= max_total.

    With `ring` (the payload size), the writer's position is simulated and sizes are re-drawn so
    that no frame ends with fewer than 16 bytes before the end of the ring: the reference fails
    on such tails (its bugs 1 and 2), which the reference-bug tests cover on their own.
    """
    rng = random.Random(seed)
    limit = max_total - HEADER
    sizes: list[int] = []
    pos = 0
    while len(sizes) < count:
        kind = rng.random()
        if kind < 0.3:
            n = rng.randint(1, 64)
        elif kind < 0.7:
            n = rng.randint(65, 4096)
        elif kind < 0.95:
            n = rng.randint(4097, max(limit, 4097))
        else:
            n = limit
        n = min(n, limit)
        if ring is not None:
            total = HEADER + n
            end = pos + total if ring - pos >= total else total
            if ring - end < HEADER:
                continue
            pos = end
        sizes.append(n)
    return sizes


_pattern_cache: np.ndarray = np.zeros(0, np.uint8)


def pattern(sequence: int, size: int) -> np.ndarray:
    """The expected bytes of frame `sequence`: byte i is (i + 7 * sequence) mod 251."""
    global _pattern_cache
    if len(_pattern_cache) < size + PATTERN_MODULUS:
        length = max(size + PATTERN_MODULUS, 2 * len(_pattern_cache))
        _pattern_cache = (np.arange(length, dtype=np.uint32) % PATTERN_MODULUS).astype(np.uint8)
    start = (7 * sequence) % PATTERN_MODULUS
    return _pattern_cache[start : start + size]


def digest_update(h: Any, sequence: int, data: Any) -> None:
    """Fold one frame (sequence, length, bytes) into a running digest."""
    h.update(sequence.to_bytes(8, "little") + len(data).to_bytes(8, "little"))
    h.update(data)


def check_frame(sequence: int, expected_sequence: int, expected_size: int, data: Any) -> None:
    """Raise AssertionError naming the first wrong byte if the frame is not the expected one."""
    if sequence != expected_sequence:
        raise AssertionError(f"sequence {sequence}, expected {expected_sequence}")
    got = np.frombuffer(data, np.uint8)
    if len(got) != expected_size:
        raise AssertionError(f"frame {sequence}: {len(got)} bytes, expected {expected_size}")
    want = pattern(sequence, expected_size)
    if not np.array_equal(got, want):
        bad = int(np.flatnonzero(got != want)[0])
        raise AssertionError(f"frame {sequence} byte {bad}: {got[bad]} != {want[bad]}")


# ---------------------------------------------------------------- the two implementations behind one face


class Side:
    """Adapter giving our implementation and the reference the same small surface."""

    def __init__(self, impl: str) -> None:
        self.impl = impl
        if impl == "ours":
            from transports import zerobuffer as mod
        else:
            import zerobuffer as mod
        self.mod = mod

    def reader(self, name: str, metadata_size: int, payload_size: int) -> Any:
        return self.mod.Reader(name, self.mod.BufferConfig(metadata_size, payload_size))

    def writer(self, name: str) -> Any:
        return self.mod.Writer(name)

    def read(self, reader: Any, timeout: float) -> Any:
        frame = reader.read(timeout=timeout) if self.impl == "ours" else reader.read_frame(timeout)
        if frame is None:
            raise TimeoutError(f"no frame within {timeout} s")
        return frame

    def release(self, reader: Any, frame: Any) -> None:
        if self.impl == "ours":
            frame.release()
        else:
            reader.release_frame(frame)

    def metadata(self, reader: Any) -> bytes | None:
        view = reader.metadata if self.impl == "ours" else reader.get_metadata()
        return None if view is None else bytes(view)

    def write(self, writer: Any, data: Any, zero_copy: bool) -> None:
        if not zero_copy:
            writer.write(data) if self.impl == "ours" else writer.write_frame(data)
            return
        buf = (
            writer.reserve(len(data)) if self.impl == "ours" else writer.get_frame_buffer(len(data))
        )
        np.frombuffer(buf, np.uint8)[:] = data
        del buf
        writer.commit() if self.impl == "ours" else writer.commit_frame()


OIEB_FORMAT = "<I4B11Q4Q"
OIEB_SIZE = 128
OIEB_FIELDS = (
    "oieb_size",
    "major",
    "minor",
    "patch",
    "reserved_version",
    "metadata_size",
    "metadata_free_bytes",
    "metadata_written_bytes",
    "payload_size",
    "payload_free_bytes",
    "payload_write_pos",
    "payload_read_pos",
    "payload_written_count",
    "payload_read_count",
    "writer_pid",
    "reader_pid",
)
PID_OFFSETS = (0x50, 0x58)


def oieb_bytes(name: str) -> bytes:
    """The raw 128-byte OIEB of NAME, read through /dev/shm (the same pages both sides map)."""
    with open(f"/dev/shm/{name}", "rb") as f:
        return f.read(OIEB_SIZE)


def oieb(name: str) -> dict[str, int]:
    """NAME's OIEB decoded into named fields, straight from shared memory."""
    return dict(zip(OIEB_FIELDS, struct.unpack(OIEB_FORMAT, oieb_bytes(name)), strict=False))


def without_pids(image: bytes) -> bytes:
    """The OIEB image with the writer and reader PID fields zeroed, for comparing runs."""
    out = bytearray(image)
    for offset in PID_OFFSETS:
        out[offset : offset + 8] = bytes(8)
    return bytes(out)


def wrap_tails(sizes: list[int], ring: int) -> list[int]:
    """The tail wasted at each wrap a protocol-following writer makes for these sizes."""
    pos = 0
    tails = []
    for n in sizes:
        total = HEADER + n
        if ring - pos >= total:
            pos += total
        else:
            tails.append(ring - pos)
            pos = total
    return tails


def unlink_reference_leftovers(name: str) -> None:
    """Remove what the reference leaves behind for NAME (its Reader.close keeps both semaphores)."""
    for sem in (f"/sem-w-{name}", f"/sem-r-{name}"):
        with contextlib.suppress(posix_ipc.ExistentialError):
            posix_ipc.unlink_semaphore(sem)
    with contextlib.suppress(posix_ipc.ExistentialError):
        posix_ipc.unlink_shared_memory(f"/{name}")
    with contextlib.suppress(FileNotFoundError):
        (LOCK_DIR / f"{name}.lock").unlink()


def resources_of(name: str) -> dict[str, bool]:
    """Which of NAME's four named resources exist right now."""
    return {
        "shm": Path(f"/dev/shm/{name}").exists(),
        "sem-w": Path(f"/dev/shm/sem.sem-w-{name}").exists(),
        "sem-r": Path(f"/dev/shm/sem.sem-r-{name}").exists(),
        "lock": (LOCK_DIR / f"{name}.lock").exists(),
    }


# ---------------------------------------------------------------- child side


def _emit(**event: Any) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def _wait_for_stdin() -> str:
    return sys.stdin.readline().strip()


def _run_reader(a: dict[str, Any]) -> None:
    side = Side(a["impl"])
    reader = side.reader(a["name"], a["metadata_size"], a["payload_size"])
    _emit(event="ready", pid=os.getpid())
    if a.get("idle"):
        _wait_for_stdin()
        return
    sizes = frame_sizes(a["seed"], a["count"], a["max_total"], a.get("ring"))
    h = hashlib.blake2b()
    metadata = None
    small = a.get("small", 0)  # ours only: read_small(small), runs of copied-out frames
    for i, size in enumerate(sizes):
        if small:
            got = reader.read_small(small, timeout=a.get("timeout", 10.0))
            if isinstance(got, bytes):
                check_frame(i + 1, i + 1, size, got)  # the pattern encodes the sequence
                digest_update(h, i + 1, got)
                if i == 0:
                    metadata = side.metadata(reader)
                continue
            frame = got
        else:
            frame = side.read(reader, a.get("timeout", 10.0))
        check_frame(frame.sequence, i + 1, size, frame.data)
        digest_update(h, frame.sequence, frame.data)
        side.release(reader, frame)
        if i == 0:
            metadata = side.metadata(reader)
    _emit(
        event="done",
        count=len(sizes),
        digest=h.hexdigest(),
        metadata=None if metadata is None else metadata.hex(),
    )
    if a.get("linger"):
        _wait_for_stdin()
    reader.close()


def _run_writer(a: dict[str, Any]) -> None:
    side = Side(a["impl"])
    writer = side.writer(a["name"])
    _emit(event="ready", pid=os.getpid())
    if a.get("idle"):
        _wait_for_stdin()
        return
    if a.get("metadata") is not None:
        writer.set_metadata(bytes.fromhex(a["metadata"]))
    mode = a.get("mode", "mixed")
    h = hashlib.blake2b()
    for i, size in enumerate(frame_sizes(a["seed"], a["count"], a["max_total"], a.get("ring"))):
        data = pattern(i + 1, size)
        zero_copy = mode == "reserve" or (mode == "mixed" and i % 2 == 1)
        side.write(writer, data, zero_copy)
        digest_update(h, i + 1, data)
    _emit(event="done", count=a["count"], digest=h.hexdigest())
    if a.get("linger"):
        _wait_for_stdin()
    writer.close()


def _run_fill(a: dict[str, Any]) -> None:
    """Attach, then fill the ring with 100-byte frames until a write times out; report how
    it failed (attaching may fail too: then `written` is -1)."""
    side = Side(a["impl"])
    timeout = a.get("timeout", 0.5)
    written = -1
    try:
        writer = side.writer(a["name"])
    except Exception as exc:
        _emit(event="done", error=type(exc).__name__, message=str(exc), written=written)
        return
    if a["impl"] == "ref":
        writer.write_timeout = timedelta(seconds=timeout)
    written = 0
    try:
        while True:
            data = pattern(written + 1, 100)
            if a["impl"] == "ours":
                writer.write(data, timeout=timeout)
            else:
                writer.write_frame(data)
            written += 1
    except Exception as exc:
        _emit(event="done", error=type(exc).__name__, message=str(exc), written=written)
    writer.close()


def _run_probe(a: dict[str, Any]) -> None:
    """Report how kill(pid, 0) answers in this process (errno name, or "ok"), and whether our
    transport counts that PID as alive."""
    from transports.zerobuffer import posix

    try:
        os.kill(a["pid"], 0)
        result = "ok"
    except OSError as exc:
        result = errno.errorcode[exc.errno or 0]
    _emit(event="done", errno=result, uid=os.getuid(), alive=posix.pid_alive(a["pid"]))


def _main() -> None:
    args = json.loads(sys.argv[1])
    roles = {"reader": _run_reader, "writer": _run_writer, "fill": _run_fill, "probe": _run_probe}
    roles[args["role"]](args)


# ---------------------------------------------------------------- parent side


NOBODY = 65534


def why_nobody_cannot_run() -> str | None:
    """None when a peer can run here as user `nobody`, else why not (a reason to skip).

    Needs root and setpriv, and the interpreter and this source tree readable by nobody: a
    checkout in a private (0700) directory, the usual clone under /root in a container, is not.
    """
    global _NOBODY_CHECKED
    if _NOBODY_CHECKED is not None:
        return _NOBODY_CHECKED or None
    why = ""
    if os.geteuid() != 0:
        why = "needs root to run a peer as user nobody"
    elif shutil.which("setpriv") is None:
        why = "needs setpriv to run a peer as user nobody"
    else:
        code = f"import transports.zerobuffer, zerobuffer; open({__file__!r}).close()"
        probe = subprocess.run(
            [
                "setpriv",
                f"--reuid={NOBODY}",
                f"--regid={NOBODY}",
                "--clear-groups",
                sys.executable,
                "-c",
                code,
            ],
            env=dict(os.environ, PYTHONPATH=str(REPO)),
            cwd="/",
            capture_output=True,
            text=True,
            check=False,
        )
        if probe.returncode:
            last = (probe.stderr.strip().splitlines() or ["?"])[-1]
            why = (
                "user nobody cannot run this interpreter or read this checkout (a private "
                f"directory?): {last}. Run from a directory others can read to include this test"
            )
    _NOBODY_CHECKED = why
    return why or None


_NOBODY_CHECKED: str | None = None


class PeerFailed(AssertionError):
    """A peer process failed, timed out or said something unexpected (its stderr is attached)."""


class Peer:
    """One peer child process; events are JSON lines read with a timeout."""

    def __init__(
        self, user: int | None = None, launcher: tuple[str, ...] = (), **args: Any
    ) -> None:
        self.args = args
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed by peer())
        env = dict(os.environ, PYTHONPATH=str(REPO))
        command = [*launcher, sys.executable, __file__, json.dumps(args)]
        if user is not None:  # setpriv drops every capability, so EPERM is real
            command = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *command]
        self.proc = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=env,
            cwd=REPO,
        )
        self._buffer = b""
        self.pid = self.proc.pid

    def stderr(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")

    def _fail(self, why: str) -> PeerFailed:
        self.kill()
        return PeerFailed(
            f"{self.args.get('impl')} {self.args.get('role')}: {why}\n{self.stderr()}"
        )

    def event(self, timeout: float = 20.0) -> dict[str, Any]:
        """The next event line; fails (and kills the child) on timeout, exit or bad output."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise self._fail(f"no event within {timeout} s")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    self.proc.wait(timeout=5)
                    raise self._fail(f"exited with {self.proc.returncode} before the next event")
                self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return dict(json.loads(line))

    def expect(self, name: str, timeout: float = 20.0) -> dict[str, Any]:
        event = self.event(timeout)
        if event.get("event") != name:
            raise self._fail(f"expected event {name!r}, got {event}")
        return event

    def send(self, line: str = "go") -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def finish(self, timeout: float = 20.0) -> None:
        """Wait for a clean exit (status 0)."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise self._fail(f"did not exit within {timeout} s") from None
        if self.proc.returncode != 0:
            raise self._fail(f"exit status {self.proc.returncode}")
        self._close_pipes()

    def kill(self) -> None:
        """SIGKILL and reap (no-op if already gone)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        self._close_pipes()

    def _close_pipes(self) -> None:
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()


@contextlib.contextmanager
def peer(user: int | None = None, launcher: tuple[str, ...] = (), **args: Any) -> Iterator[Peer]:
    """A Peer that is always killed and reaped when the block ends."""
    p = Peer(user=user, launcher=launcher, **args)
    try:
        yield p
    finally:
        p.kill()
        p._stderr.close()


if __name__ == "__main__":
    _main()
