"""The fanout bench section's sessions work (tiny sizes; the peers that are installed)."""

from __future__ import annotations

import pytest

from zcser.tools.bench import fanout


@pytest.mark.parametrize("method", [m for m in fanout._methods() if m != "iceoryx2"])
def test_a_session_delivers_to_every_subscriber(method: str) -> None:
    publish, delivered, total, held = fanout._session(method, 2, "big", 3, 1 << 20, "t")
    assert len(publish) == len(delivered) == 3 and total > 0 and len(held) == 2
    cpu: list[float] = []
    _, _, total, held = fanout._session(method, 2, "small", 200, 0, "t", cpu)
    assert total > 0 and len(held) == 2
    assert len(cpu) == 2 and cpu[0] > 0 and cpu[1] > 0  # publisher's, one subscriber's
