"""`zcser bench` on a terminal shows a progress bar over its sections on stderr; piped, it
does not (so logs and --json output stay clean)."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import subprocess
import sys
import termios
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
COMMAND = ["-m", "zcser", "bench", "--quick", "--section", "codec-threshold"]
TIMEOUT = 120.0


def _stderr_on_a_terminal() -> str:
    """Run the command with stderr on a real 120-column pseudo-terminal; return what it drew."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    with subprocess.Popen(
        [sys.executable, *COMMAND], cwd=REPO, stdout=subprocess.DEVNULL, stderr=slave
    ) as proc:
        os.close(slave)
        out = b""
        try:
            while select.select([master], [], [], TIMEOUT)[0]:
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                out += chunk
        finally:
            os.close(master)
            proc.kill()
    return out.decode(errors="replace")


def test_progress_bar_on_a_terminal() -> None:
    drawn = _stderr_on_a_terminal()
    assert "bench: 100%" in drawn and "1/1" in drawn and "codec-threshold" in drawn, drawn


def test_no_progress_bar_when_piped() -> None:
    result = subprocess.run(
        [sys.executable, *COMMAND], cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT
    )
    assert result.returncode == 0, result.stderr
    assert "bench:" not in result.stderr
    assert "== codec-threshold" in result.stdout
