"""Every script in examples/ runs as a user would run it (a subprocess, small sizes) and passes.

Each example checks its own claims (content, zero-copy by address, cleanup) and exits non-zero
when one fails; shared-memory names come from `unique_name()`, so the leak check of conftest
sees anything an example leaves behind.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import unique_name
from fixtures.procs import run_python

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
TIMEOUT = 180

# Small sizes so the whole file takes seconds; "{name}" becomes a fresh buffer name.
QUICK_ARGS: dict[str, list[str]] = {
    "quickstart.py": [],
    "producer_pool.py": [],
    "snapshot_model.py": ["--hidden", "64"],
    "interop_reference.py": ["--frames", "5", "--name", "{name}"],
    "camera_stream.py": ["--seconds", "0.5", "--name", "{name}"],
    "fanout_camera.py": ["--seconds", "0.5", "--name", "{name}"],
    "arrow_handoff.py": ["--rows", "20000", "--tables", "2", "--name", "{name}"],
    "ml_handoff.py": ["--batches", "6", "--batch", "4", "--hw", "64", "--name", "{name}"],
    "torch_dataloader.py": ["--samples", "256", "--epochs", "2"],
}


def _scripts() -> list[str]:
    return sorted(p.name for p in EXAMPLES.glob("*.py") if not p.name.startswith("_"))


def run_example(script: str, args: list[str]) -> subprocess.CompletedProcess[str]:
    """Run `python examples/SCRIPT ARGS` from the repository root, as the docs say."""
    warnings = {"PYTHONWARNINGS": "error::ResourceWarning"}
    return run_python([str(EXAMPLES / script), *args], REPO, TIMEOUT, warnings)


def test_every_example_has_quick_arguments() -> None:
    assert set(_scripts()) <= set(QUICK_ARGS), "add the new example to QUICK_ARGS"


@pytest.mark.parametrize("script", _scripts())
def test_example_runs_and_passes_its_checks(script: str) -> None:
    name = unique_name("ex")
    args = [a.replace("{name}", name) for a in QUICK_ARGS[script]]
    result = run_example(script, args)
    assert result.returncode == 0, f"{script} failed:\n{result.stdout}\n{result.stderr}"
    assert "FAILED" not in result.stdout
    assert "Traceback" not in result.stderr, result.stderr


@pytest.mark.parametrize("script", _scripts())
def test_example_help_describes_it(script: str) -> None:
    result = run_example(script, ["--help"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage:")


def test_a_failed_check_exits_non_zero() -> None:
    code = "import _shm_check; _shm_check.check(False, 'the claim')"
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=EXAMPLES,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 1
    assert "FAILED: the claim" in result.stderr


def test_address_check_tells_inside_from_outside(tmp_path: Path) -> None:
    sys.path.insert(0, str(EXAMPLES))
    try:
        import mmap

        inside = importlib.import_module("_shm_check").inside

        path = tmp_path / "data"
        path.write_bytes(b"x" * mmap.PAGESIZE)
        with open(path, "r+b") as fh, mmap.mmap(fh.fileno(), 0) as mm:
            import ctypes

            address = ctypes.addressof(ctypes.c_char.from_buffer(mm))
            assert inside(address, str(path)) is True
            assert inside(address + mmap.PAGESIZE, str(path)) is False
            assert inside(id(path), str(path)) is False
            assert inside(address, str(tmp_path / "not-mapped")) is False
    finally:
        sys.path.remove(str(EXAMPLES))
