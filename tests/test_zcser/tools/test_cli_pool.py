"""`python -m zcser inspect NAME` and `ls` over a pool (a zcser.Receiver with senders=N) owned
by real processes: inspect shows the pool by its channel name (places, connected senders, each
ring), and the control segment NAME--pool is a pool's, not a problem."""

from __future__ import annotations

from conftest import RUN_TOKEN, unique_name
from fixtures.procs import run_zcser, script, zcser_json

from transports.admin import collect_garbage, inspect_buffer, inspect_pool

RECEIVER = """
import zcser
rx = zcser.Receiver({name!r}, capacity=1 << 16, senders=3)
say("ready", os.getpid())
sys.stdin.readline()
"""

SENDER = """
import zcser
tx = zcser.Sender({name!r})
tx.send({{"i": 1}})
tx.send({{"i": 2}})
say("ready", os.getpid())
sys.stdin.readline()
"""


def test_inspect_shows_a_pool_by_its_name_with_senders_and_rings() -> None:
    """Regression: `inspect NAME` of a Receiver(senders=3) said "no buffer named NAME" (there
    is no /dev/shm/NAME, only NAME--pool and NAME--0..2), and the NAME--pool row had the
    problem "payload fields out of range for a 0-byte ring" with no reader."""
    name = unique_name("ip")
    with script(RECEIVER.format(name=name)) as rx:
        rx_pid = int(rx.expect("ready")[0])
        with script(SENDER.format(name=name)) as tx:
            tx_pid = int(tx.expect("ready")[0])
            pool = zcser_json("inspect", name)
            assert pool["kind"] == "pool" and pool["control"] == f"{name}--pool"
            assert (pool["state"], pool["lock"], pool["lock_pid"]) == ("live", "held", rx_pid)
            assert (pool["reader_pid"], pool["reader_alive"], pool["problem"]) == (
                rx_pid,
                True,
                "",
            )
            assert (pool["places"], pool["connected"], pool["joins"]) == (3, 1, 1)
            taken = [s for s in pool["senders"] if s["state"] == "taken"]
            assert [(s["pid"], s["alive"], s["generation"]) for s in taken] == [(tx_pid, True, 1)]
            assert sorted(s["state"] for s in pool["senders"]) == ["free", "free", "taken"]
            rings = {ring["name"]: ring for ring in pool["rings"]}
            assert set(rings) == {f"{name}--{i}" for i in range(3)}
            ring = rings[taken[0]["ring"]]
            assert (ring["state"], ring["writer_pid"], ring["frames_unread"]) == ("live", tx_pid, 2)
            text = run_zcser("inspect", name).stdout
            assert "places           3" in text and f"{tx_pid}(alive)" in text
            assert text.count("  place ") == 3
            control = zcser_json("inspect", f"{name}--pool")
            assert control["problem"] == "" and control["reader_pid"] == rx_pid
            rows = {row["name"]: row for row in zcser_json("ls", "--prefix", name)}
            assert rows[f"{name}--pool"]["problem"] == ""
            assert rows[f"{name}--pool"]["reader_alive"] is True
        rx.kill()
    assert inspect_buffer(f"{name}--pool").state == "stale"
    assert f"{name}--pool" in collect_garbage(RUN_TOKEN)
    assert inspect_pool(name) is None
    assert run_zcser("inspect", name).returncode == 1


def test_inspect_of_a_one_sender_channel_shows_its_pool() -> None:
    name = unique_name("iq")
    with script(RECEIVER.format(name=name).replace("senders=3", "senders=1")) as rx:
        rx.expect("ready")
        pool = zcser_json("inspect", name)
        assert (pool["places"], pool["connected"], pool["problem"]) == (1, 0, "")
        assert [ring["name"] for ring in pool["rings"]] == [name]
        rx.send()
        rx.wait()
