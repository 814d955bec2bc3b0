"""`python -m zcser ls | inspect | gc` and transports.inspect, over real buffers owned by real
(live, killed and stopped) processes. gc must remove exactly the provably dead buffers, also
when several gc processes race over the same leftovers."""

from __future__ import annotations

import contextlib
import json
import os
import stat
from pathlib import Path

import posix_ipc
import pytest
from conftest import RUN_TOKEN, unique_name
from fixtures.foreign import NOBODY, as_nobody, decoy, needs_root, plant_semaphore, remove
from fixtures.procs import run_zcser, script, zcser_json

from transports.admin import collect_garbage, health, inspect_buffer, list_buffers
from transports.fanout import layout as F
from transports.zerobuffer import BufferConfig, Reader, Writer
from transports.zerobuffer import layout as L
from zcser.tools.cli import main


def _exists(name: str) -> dict[str, bool]:
    return {
        "shm": Path(f"/dev/shm/{name}").exists(),
        "sem-w": Path(f"/dev/shm/sem.sem-w-{name}").exists(),
        "sem-r": Path(f"/dev/shm/sem.sem-r-{name}").exists(),
        "lock": L.lock_path(name).exists(),
    }


def _readers_code(names: list[str], payload: int = 64) -> str:
    return f"""
        readers = [Reader(n, BufferConfig(0, {payload})) for n in {names!r}]
        say("ready", os.getpid())
        sys.stdin.readline()
        """


def _stale(names: list[str], locks: bool = True) -> None:
    """Leave NAMES as a SIGKILLed reader leaves them: shm, semaphores, unheld lock files.

    Any Reader created on this machine meanwhile (other test runs) sweeps stale buffers that
    have lock files, so those may vanish at any time. Without `locks` the reader deletes its
    lock files before it is killed: only gc finds such leftovers (no lock file to sweep)."""
    code = _readers_code(names)
    if not locks:
        code = code.replace(
            'say("ready"',
            f"[os.unlink('/tmp/zerobuffer/' + n + '.lock') for n in {names!r}]\n        say(\"ready\"",
        )
    with script(code) as child:
        child.expect("ready")
    if not locks:
        for name in names:
            assert _exists(name) == {"shm": True, "sem-w": True, "sem-r": True, "lock": False}


def test_health_bands_follow_zerobuffer_guidance() -> None:
    assert [health(u) for u in (0.0, 0.79, 0.80, 0.95, 0.951, 1.0)] == [
        "healthy",
        "healthy",
        "degraded",
        "degraded",
        "critical",
        "critical",
    ]


def _gc_all(names: list[str]) -> list[str]:
    """gc this run's buffers; every name in NAMES must be gone afterwards. Any Reader created on
    this machine meanwhile (other test runs) sweeps stale buffers too, so gc may find some
    already removed: it reports only what it removed itself, never a live buffer."""
    removed = collect_garbage(RUN_TOKEN)
    assert len(set(removed)) == len(removed)
    assert set(removed) <= set(names), removed
    for name in names:
        assert not any(_exists(name).values()), name
    return removed


def test_ls_shows_live_and_orphaned_buffers_with_peers_and_sizes(shm_name: str) -> None:
    orphan = unique_name("or")
    with (
        script(_readers_code([orphan])) as dying,
        script(
            f"""
        r = Reader({shm_name!r}, BufferConfig(256, 4096))
        w = Writer({shm_name!r})
        w.set_metadata(b"schema")
        for _ in range(3):
            w.write(b"x" * 1000)
        held = r.read()
        sys.stdin.readline()
        w2 = Writer({orphan!r})
        say("ready", os.getpid())
        sys.stdin.readline()
        """
        ) as child,
    ):
        dying.expect("ready")
        child.send()
        pid = int(child.expect("ready")[0])
        dying.kill()  # the orphan's reader dies; our child still writes to it
        rows = {row["name"]: row for row in zcser_json("ls", "--prefix", RUN_TOKEN)}
        live = rows[shm_name]
        assert (live["state"], live["lock"], live["lock_pid"]) == ("live", "held", pid)
        assert (live["reader_pid"], live["reader_alive"]) == (pid, True)
        assert (live["writer_pid"], live["writer_alive"]) == (pid, True)
        assert live["shm_bytes"] == 128 + 256 + 4096 and live["capacity"] == 4096
        assert live["used"] == 3 * 1016 and live["health"] == "healthy"
        assert live["frames_unread"] == 2 and live["bytes_unread"] == 2 * 1016
        assert live["bytes_held"] == 1016  # the frame the reader holds
        assert live["metadata_bytes"] == 6
        gone = rows[orphan]
        assert gone["state"] == "orphan-in-use" and gone["lock"] in ("free", "missing")
        assert (gone["reader_pid"], gone["reader_alive"]) == (dying.pid, False)
        assert (gone["writer_pid"], gone["writer_alive"]) == (pid, True)
        text = run_zcser("ls", "--prefix", RUN_TOKEN)
        assert text.returncode == 0
        assert f"{pid}(alive)" in text.stdout and f"{dying.pid}(dead)" in text.stdout
        assert collect_garbage(RUN_TOKEN) == []
    _gc_all([shm_name, orphan])
    assert list_buffers(RUN_TOKEN) == []


@pytest.mark.parametrize(("frames", "band"), [(2, "healthy"), (7, "degraded"), (8, "critical")])
def test_inspect_reports_oieb_and_health_band(
    shm_name: str, frames: int, band: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with Reader(shm_name, BufferConfig(0, 64 * 64)) as r, Writer(shm_name, timeout=0) as w:
        for _ in range(frames):
            w.write(b"y" * (512 - 16))  # 8 frames fill the ring exactly
        held = [r.read() for _ in range(frames // 2)]
        assert main(["inspect", shm_name, "--json"]) == 0
        info = json.loads(capsys.readouterr().out)
        assert info["health"] == band
        assert info["utilisation"] == pytest.approx(frames / 8)
        assert info["bytes_held"] == 512 * len(held)
        oieb = info["oieb"]
        assert oieb["payload_written_count"] == frames
        assert oieb["payload_read_count"] == len(held)
        assert oieb["reader_pid"] == oieb["writer_pid"] == os.getpid()
        assert main(["inspect", shm_name]) == 0
        text = capsys.readouterr().out
        assert "payload_free_bytes" in text and band in text
        for f in held:
            f.release()
        assert inspect_buffer(shm_name).bytes_held == 0


def test_inspect_unknown_name_exits_1() -> None:
    result = run_zcser("inspect", unique_name("none"))
    assert result.returncode == 1 and "no buffer named" in result.stdout


def test_inspect_marks_a_corrupt_header(shm_name: str) -> None:
    with Reader(shm_name, BufferConfig(0, 256)):
        fd = os.open(f"/dev/shm/{shm_name}", os.O_RDWR)
        try:
            os.pwrite(fd, (999).to_bytes(4, "little"), 0)
        finally:
            os.close(fd)
        info = inspect_buffer(shm_name)
        assert info.oieb is None and "not a ZeroBuffer" in info.problem
        assert info.state == "live"  # its reader still holds the lock: never gc'd


def test_gc_spares_a_buffer_whose_writer_lives_on_after_its_reader_died() -> None:
    name = unique_name("ow")
    with script(_readers_code([name])) as reader:
        reader.expect("ready")
        with script(
            f"""
            w = Writer({name!r})
            say("ready")
            sys.stdin.readline()
            """
        ) as writer:
            writer.expect("ready")
            reader.kill()
            assert inspect_buffer(name).state == "orphan-in-use"
            assert name not in collect_garbage(RUN_TOKEN)
            assert _exists(name)["shm"] and _exists(name)["sem-w"]
    assert inspect_buffer(name).state == "stale" or not _exists(name)["shm"]
    _gc_all([name])


def test_gc_removes_semaphores_left_without_lock_or_shm() -> None:
    """What the reference's Reader.close() leaves behind (its bug 5)."""
    name = unique_name("sm")
    for sem in (L.sem_w_name(name), L.sem_r_name(name)):
        posix_ipc.Semaphore(sem, posix_ipc.O_CREX, mode=0o600).close()
    assert [b.name for b in list_buffers(RUN_TOKEN)] == [name]
    assert zcser_json("gc", "--prefix", RUN_TOKEN) == {"removed": [name]}
    assert not any(_exists(name).values())


def test_concurrent_gc_removes_every_stale_buffer_once_and_no_live_one() -> None:
    locked = [unique_name("gs") for _ in range(12)]
    lockless = [unique_name("gn") for _ in range(12)]
    stale = locked + lockless
    live_here = unique_name("lh")
    live_child = unique_name("lc")
    stopped = unique_name("ls")
    with (
        Reader(live_here, BufferConfig(0, 256)) as r,
        Writer(live_here) as w,
        script(_readers_code([live_child])) as child,
        script(_readers_code([stopped])) as frozen,
    ):
        child.expect("ready")
        frozen.expect("ready")
        frozen.signal(19)  # SIGSTOP: stopped is not dead
        _stale(locked)  # after the live readers: creating a Reader sweeps stale buffers
        _stale(lockless, locks=False)
        gc_code = f"""
            import json
            from transports.admin import collect_garbage
            say("ready")
            sys.stdin.readline()
            say(json.dumps(collect_garbage({RUN_TOKEN!r})))
            """
        removed: list[str] = []
        try:
            with contextlib.ExitStack() as stack:
                gcs = [stack.enter_context(script(gc_code)) for _ in range(4)]
                for proc in gcs:
                    proc.expect("ready")
                for proc in gcs:  # all imported and waiting: the four sweeps overlap
                    proc.send()
                for proc in gcs:
                    line = proc.line(60)
                    assert line is not None, proc.stderr()
                    removed += json.loads(line)
                    assert proc.wait() == 0 and not proc.stderr(), proc.stderr()
        finally:
            frozen.signal(18)  # SIGCONT
        assert len(set(removed)) == len(removed)  # each removed once, by one of the four
        assert set(removed) <= set(stale)
        assert set(lockless) <= set(removed)  # only gc finds these: no foreign sweep interferes
        for name in stale:
            assert not any(_exists(name).values()), name
        for name in (live_here, live_child, stopped):
            assert all(_exists(name).values()), name
        w.write(b"still works")
        with r.read() as frame:
            assert bytes(frame.data) == b"still works"
    _gc_all([live_child, stopped])


def test_a_reader_starting_during_another_process_sweep_of_its_name_still_starts() -> None:
    """Regression (found by the kill loop): a sweep (gc, or any new Reader's stale cleanup)
    holds a dead reader's lock for a moment; a new reader of that name used to fail at once
    with BufferExists instead of waiting for the sweep to finish."""
    name = unique_name("sw")
    with script(
        f"""
        import fcntl
        fd = os.open({str(L.lock_path(name))!r}, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        say("holding")
        time.sleep(0.05)
        os.unlink({str(L.lock_path(name))!r})
        os.close(fd)
        say("done")
        """
    ) as sweeper:
        sweeper.expect("holding")
        with Reader(name, BufferConfig(0, 256)) as r, Writer(name) as w:
            w.write(b"started")
            with r.read() as frame:
                assert bytes(frame.data) == b"started"
        sweeper.expect("done")


# --- only regular files, and only ours (docs/security.md) ----------------------------------------


def test_ls_inspect_and_gc_skip_a_fifo_in_dev_shm_instead_of_blocking() -> None:
    """Regression: `ls` and `gc` opened /dev/shm/NAME to read its header and blocked forever on
    a FIFO (bounded here by the subprocess timeout). Now it is skipped: not a ZeroBuffer."""
    name = unique_name("ff")
    fifo = Path(f"/dev/shm/{name}")
    os.mkfifo(fifo, 0o600)
    try:
        assert zcser_json("ls", "--prefix", name) == []
        assert zcser_json("gc", "--prefix", name) == {"removed": []}
        assert run_zcser("inspect", name).returncode == 1  # "no buffer named ..."
        assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    finally:
        fifo.unlink()


@needs_root
def test_gc_removes_only_regular_files_of_this_user() -> None:
    """Regression: gc (as root) removed semaphore names of any kind and owner: here a FIFO in
    place of a semaphore, and another user's leftover semaphores."""
    fifo_name, foreign_name = unique_name("gf"), unique_name("gu")
    fifo = Path(f"/dev/shm/sem.sem-w-{fifo_name}")
    os.mkfifo(fifo, 0o600)
    sems = [L.sem_w_name(foreign_name), L.sem_r_name(foreign_name)]
    as_nobody(lambda: [plant_semaphore(sem, 0o600) for sem in sems] and None)
    planted = [fifo, *(Path(f"/dev/shm/sem.{sem[1:]}") for sem in sems)]
    try:
        assert collect_garbage(RUN_TOKEN) == []
        assert all(path.exists() for path in planted)
    finally:
        remove(*planted)


# --- orphan bells: FIFOs in the lock directory whose segment is gone ----------------------------

LOCK_DIR = L.lock_dir()


def _bells(name: str) -> list[str]:
    return sorted(f for f in os.listdir(LOCK_DIR) if f.startswith(name) and f.endswith(".bell"))


def test_gc_removes_a_killed_subscribers_bell_once_its_publisher_closed() -> None:
    """Regression: a subscriber SIGKILLed after its publisher closed (segment and lock file
    gone) left NAME.fanout.0.bell, which gc never looked at. The bell of a subscriber alive
    on another, live publisher is kept."""
    import zcser

    name, live = unique_name("ob"), unique_name("ob")
    code = """
        import zcser
        sub = zcser.Subscriber({name!r}, timeout=30)
        say("ready")
        sys.stdin.readline()
        """
    pub = zcser.Publisher(name, capacity=1 << 20, subscribers=2)
    keep = zcser.Publisher(live, capacity=1 << 20, subscribers=2)
    try:
        with script(code.format(name=name)) as child, script(code.format(name=live)) as other:
            child.expect("ready")
            other.expect("ready")
            pub.close()
            child.kill()
            assert not Path(f"/dev/shm/{name}").exists()
            assert _bells(name) == [F.sub_bell(name, 0)]  # only the FIFO is left
            kept = _bells(live)
            assert F.sub_bell(live, 0) in kept
            assert zcser_json("gc", "--prefix", RUN_TOKEN) == {"removed": [name]}
            assert _bells(name) == []
            assert _bells(live) == kept
            keep.close()  # its segment is gone now, but the live subscriber holds its bell
            assert live not in collect_garbage(RUN_TOKEN)
            assert F.sub_bell(live, 0) in _bells(live)
    finally:
        pub.close()
        keep.close()
    assert collect_garbage(RUN_TOKEN) == [live]  # its subscriber was killed with the block
    assert _bells(live) == []


def test_gc_removes_the_bells_of_a_pool_whose_segments_and_locks_are_gone() -> None:
    """A killed pool receiver whose shared memory and lock files were removed by hand (rm
    /dev/shm/NAME*) left its rings' bells; gc removes them, and keeps a live pool's bells."""
    import zcser

    name, live = unique_name("op"), unique_name("op")
    pool = zcser.Receiver(live, senders=2, capacity=1 << 16)
    try:
        with script(f"""
            import zcser
            rx = zcser.Receiver({name!r}, senders=2, capacity=1 << 16)
            say("ready")
            sys.stdin.readline()
            """) as child:
            child.expect("ready")
            child.kill()
        assert _bells(name) == [f"{name}--0.bell", f"{name}--1.bell"]
        for entry in os.listdir("/dev/shm"):
            if name in entry:
                os.unlink(f"/dev/shm/{entry}")
        for entry in os.listdir(LOCK_DIR):
            if entry.startswith(name) and entry.endswith(".lock"):
                os.unlink(LOCK_DIR / entry)
        kept = _bells(live)
        assert len(kept) == 2
        assert collect_garbage(RUN_TOKEN) == [f"{name}--0", f"{name}--1"]
        assert _bells(name) == [] and _bells(live) == kept
    finally:
        pool.close()
    assert _bells(live) == []


def test_gc_leaves_bells_it_may_not_judge() -> None:
    """A symlink named as a bell (to a FIFO with no segment), a FIFO of another user, and a
    bell-named regular file all stay (and the symlink's target too)."""
    name = unique_name("os")
    target = decoy("fifo", name)
    link = LOCK_DIR / f"{name}--0.bell"
    plain = LOCK_DIR / f"{name}.fanout.1.bell"
    foreign = LOCK_DIR / f"{name}.fanout.pub.bell"
    os.symlink(target, link)
    plain.write_bytes(b"")
    planted = [link, plain, Path(target)]
    if os.geteuid() == 0:
        os.mkfifo(foreign, 0o600)
        os.chown(foreign, NOBODY.pw_uid, NOBODY.pw_gid)
        planted.append(foreign)
    try:
        assert collect_garbage(name) == []
        assert all(os.path.lexists(path) for path in planted)
        assert stat.S_ISFIFO(os.stat(target).st_mode)
    finally:
        remove(*planted)
