"""A full /dev/shm gives ShmFullError (sizes + the Docker --shm-size fix), never SIGBUS.

Each test runs a child in a private mount namespace (`unshare -m`, needs root) with its own
64 MiB tmpfs on /dev/shm (Docker's default --shm-size) and on /tmp/zerobuffer, so filling it
cannot disturb the machine: shared memory, semaphores (sem_open uses /dev/shm too) and lock
files of the child all live there, and vanish with the namespace. The child fills the space
from a helper process, then creates buffers and writes; it prints one JSON line of facts that
the test checks. The statvfs pre-check on the real /dev/shm is in test_zerobuffer.py.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from conftest import unique_name
from fixtures.procs import namespaces_work, script

MIB = 1 << 20
NAMESPACE = (
    "unshare",
    "-m",
    "sh",
    "-c",
    "mount -t tmpfs -o size=64m,mode=1777 tmpfs /dev/shm && mkdir -p /tmp/zerobuffer && "
    'mount -t tmpfs -o size=1m,mode=1777 tmpfs /tmp/zerobuffer && exec "$0" "$@"',
)

PRELUDE = """
import json, os, subprocess, sys, zlib
from transports.zerobuffer import posix as _shm
from transports import errors as E
from transports.zerobuffer import BufferConfig, Reader, Writer
MIB = 1 << 20
def free():
    return _shm.shm_available()
def fill(leave):
    '''Fill /dev/shm from a helper process until `leave` bytes are free (file stays).'''
    code = (
        "import os; st = os.statvfs('/dev/shm'); n = st.f_bavail * st.f_frsize - %d; "
        "fd = os.open('/dev/shm/filler%%d' %% os.getpid(), os.O_CREAT | os.O_RDWR, 0o600); "
        "os.posix_fallocate(fd, 0, n) if n > 0 else None" % leave
    )
    subprocess.run([sys.executable, "-c", code], check=True)
def leftovers(name):
    found = [n for n in os.listdir("/dev/shm") if name in n]
    return found + [n for n in os.listdir("/tmp/zerobuffer") if name in n]
def shm_full(name, config):
    try:
        Reader(name, config).close()
    except E.ShmFullError as exc:
        return {"message": str(exc), "needed": exc.needed, "available": exc.available,
                "left": leftovers(name)}
    raise AssertionError("no ShmFullError")
def report(**facts):
    print(json.dumps(facts), flush=True)
"""


pytestmark = pytest.mark.skipif(
    not namespaces_work(), reason="needs root and unshare -m to mount a private /dev/shm"
)


def _run(code: str) -> dict[str, Any]:
    """Run `code` in the private namespace; returns the JSON facts it reported."""
    with script(code, launcher=NAMESPACE, prelude=PRELUDE) as child:
        line = child.line(120)
        rc = child.wait(120)
        assert rc == 0 and line is not None, f"child failed ({rc}):\n{child.stderr()}"
    facts: dict[str, Any] = json.loads(line)
    return facts


def _assert_actionable(facts: dict[str, Any]) -> None:
    message = facts["message"]
    assert f"{facts['needed']:,}" in message and f"{facts['available']:,}" in message
    assert "--shm-size" in message and "/dev/shm" in message
    assert facts["left"] == []


def test_docker_default_64_mib_holds_a_buffer_and_refuses_the_next_one() -> None:
    first, second = unique_name("dk"), unique_name("dk")
    facts = _run(
        f"""
        with Reader({first!r}, BufferConfig(0, 40 * MIB)) as r, Writer({first!r}) as w:
            refused = shm_full({second!r}, BufferConfig(0, 40 * MIB))
            w.write(b"still fine")
            with r.read() as frame:
                data = bytes(frame.data)
        report(size=free(), data=data.decode(), **refused)
        """
    )
    assert facts["size"] == 64 * MIB  # the namespace's own /dev/shm, empty again at the end
    assert facts["needed"] == 128 + 40 * MIB
    assert facts["available"] < 24 * MIB + 4096
    _assert_actionable(facts)
    assert facts["data"] == "still fine"


def test_filled_by_another_process_then_a_bigger_ring_is_refused() -> None:
    name = unique_name("fl")
    facts = _run(
        f"""
        fill(3 * MIB)
        refused = shm_full({name!r}, BufferConfig(0, 8 * MIB))
        with Reader({name!r}, BufferConfig(0, 1 * MIB)):  # a ring that fits still works
            pass
        report(**refused)
        """
    )
    assert facts["available"] == 3 * MIB
    _assert_actionable(facts)


def test_space_taken_between_the_check_and_the_allocation() -> None:
    """posix_fallocate itself fails (ENOSPC from the kernel, not our pre-check): the race where
    another process takes the space after the statvfs check."""
    name = unique_name("rc")
    facts = _run(
        f"""
        fill(5 * MIB)
        _shm.check_space = lambda name, needed: None
        report(**shm_full({name!r}, BufferConfig(0, 8 * MIB)))
        """
    )
    assert facts["needed"] == 128 + 8 * MIB
    _assert_actionable(facts)


def test_ring_fits_but_its_semaphores_do_not() -> None:
    """Regression: sem_open's ENOSPC escaped as a bare OSError after the shm took the last pages."""
    name = unique_name("sm")
    facts = _run(
        f"""
        fill(8 * MIB + 4096)
        report(**shm_full({name!r}, BufferConfig(0, 8 * MIB)))
        """
    )
    assert facts["needed"] == 4096 and facts["available"] == 0
    _assert_actionable(facts)


def test_writes_into_a_full_dev_shm_never_sigbus() -> None:
    """The ring's pages are reserved at creation: with /dev/shm then filled to the last byte,
    writing the whole ring several times over (wrap-around) works. The control shows the same
    full filesystem does SIGBUS a mapping whose pages were not reserved."""
    name = unique_name("wr")
    facts = _run(
        f"""
        ring = 16 * MIB
        with Reader({name!r}, BufferConfig(0, ring)) as r, Writer({name!r}) as w:
            fill(0)
            full = free()
            frames = 0
            for seq in range(1, 4 * 16 + 1):  # 4 passes of 1 MiB frames over the 16 MiB ring
                payload = seq.to_bytes(8, "little") * (MIB // 8)
                w.write(payload)
                with r.read() as frame:
                    assert bytes(frame.data) == payload
                frames += 1
            control = subprocess.run([sys.executable, "-c",
                "import mmap, os; fd = os.open('/dev/shm/sparse', os.O_CREAT | os.O_RDWR, 0o600); "
                "os.ftruncate(fd, 1 << 20); m = mmap.mmap(fd, 1 << 20); m[:] = b'x' * (1 << 20)"])
            os.unlink("/dev/shm/sparse")
        report(frames=frames, free=full, control=control.returncode)
        """
    )
    assert facts["frames"] == 64 and facts["free"] == 0
    assert facts["control"] == -7  # SIGBUS
