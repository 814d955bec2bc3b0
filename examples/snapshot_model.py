"""Save a model's state dict as a zcser snapshot and load it back without reading the file.

`zcser.save` streams every tensor straight from its memory into a crash-safe file;
`zcser.load` maps the file and hands back tensors that *are* the file's pages, so loading
takes the same time for 1 MB or 10 GB. Compared with `torch.save` / `torch.load` in the same
run. Run: `python examples/snapshot_model.py [--hidden 2048]`.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
import torch
from _shm_check import check, inside

import zcser


def build_state(hidden: int) -> dict[str, object]:
    """A model state dict plus the bookkeeping a training checkpoint carries."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(hidden, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 10)
    )
    # state_dict() is an OrderedDict, which zcser does not send yet: pass a plain dict.
    return {
        "model": dict(model.state_dict()),
        "step": 1200,
        "lr": 3e-4,
        "rng": np.random.default_rng(0).integers(0, 2**32, 624, dtype=np.uint32),
        "notes": "epoch 3, before warm restart",
    }


def timed(fn: object, *args: object, **kwargs: object) -> tuple[object, float]:
    """fn(*args, **kwargs) and the seconds it took."""
    start = time.perf_counter()
    result = fn(*args, **kwargs)  # type: ignore[operator]
    return result, time.perf_counter() - start


def main() -> int:
    """Save, load (two modes), verify, compare with torch.save/torch.load."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=1024, help="layer width (default 1024)")
    args = parser.parse_args()
    state = build_state(args.hidden)
    weights = state["model"]
    assert isinstance(weights, dict)
    nbytes = sum(t.nbytes for t in weights.values())
    print(f"state dict: {len(weights)} tensors, {nbytes / 1e6:.1f} MB")

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "ckpt.zcs")
        _, t_save = timed(zcser.save, state, path)
        loaded, t_load = timed(zcser.load, path)
        assert isinstance(loaded, dict)
        print(f"zcser.save {t_save * 1e3:8.1f} ms   zcser.load {t_load * 1e3:8.3f} ms")

        info = zcser.snapshot_info(path)
        print(f"file {info['file_size'] / 1e6:.1f} MB, {len(info['buffers'])} out-of-band buffers")

        for key, tensor in weights.items():
            check(torch.equal(loaded["model"][key], tensor), f"{key} round-trips")
        check(loaded["step"] == 1200 and loaded["notes"] == state["notes"], "plain fields")
        check(bool(np.array_equal(loaded["rng"], state["rng"])), "numpy array round-trips")
        check(loaded["rng"].flags.writeable, "the default mode 'c' gives private writable arrays")
        where = inside(loaded["model"]["0.weight"].data_ptr(), path)
        if where is not None:
            check(where, "the loaded tensor lives in the file's memory map (by address)")

        # The default mode "c": copy-on-write views, so a model trains on them in place without
        # touching the file.
        model = torch.nn.Sequential(
            torch.nn.Linear(args.hidden, args.hidden),
            torch.nn.ReLU(),
            torch.nn.Linear(args.hidden, 10),
        )
        cow = zcser.load(path)
        model.load_state_dict(cow["model"], assign=True)
        with torch.no_grad():
            model[0].bias.add_(1.0)
        check(torch.equal(model[0].bias, weights["0.bias"] + 1), "mode 'c' tensors are writable")
        again = zcser.load(path)
        check(torch.equal(again["model"]["0.bias"], weights["0.bias"]), "the file is unchanged")

        torch_path = os.path.join(tmp, "ckpt.pt")
        _, t_tsave = timed(torch.save, state, torch_path)
        _, t_tload = timed(torch.load, torch_path, weights_only=False)
        print(f"torch.save {t_tsave * 1e3:8.1f} ms   torch.load {t_tload * 1e3:8.3f} ms")
        print(f"load: zcser {t_load * 1e3:.3f} ms vs torch {t_tload * 1e3:.3f} ms (one run each)")
        del loaded, cow, again, model
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
