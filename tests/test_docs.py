"""The documentation matches the code: docstrings on the public API, CLI help for every
subcommand (and docs/cli.md naming each option), and the README / getting-started code runs."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import re
import shutil
import subprocess
import sys
from pathlib import Path

import griffe
import pytest
from fixtures.procs import run_python

from zcser.tools.cli import build_parser, main, subcommands

REPO = Path(__file__).resolve().parent.parent
PUBLIC_MODULES = ["zcser", "zcser.errors", "transports.zerobuffer", "transports.errors"]
TIMEOUT = 120


def _public(module: str) -> list[tuple[str, str]]:
    return [(module, name) for name in importlib.import_module(module).__all__]


def _griffe(module: str) -> griffe.Object | griffe.Alias:
    return griffe.load(module, search_paths=[str(REPO)], resolve_aliases=True)


@pytest.mark.parametrize("module", PUBLIC_MODULES)
def test_every_public_name_has_a_docstring(module: str) -> None:
    """What mkdocstrings shows: each name in __all__ (attributes too) documents itself."""
    tree = _griffe(module)
    missing = [
        name
        for _, name in _public(module)
        if not name.startswith("__") and not (tree[name].docstring and tree[name].docstring.value)
    ]
    assert not missing, f"{module}: no docstring on {missing}"


@pytest.mark.parametrize("module", PUBLIC_MODULES)
def test_every_public_callable_has_a_docstring_at_run_time(module: str) -> None:
    """help() and IDEs read __doc__ (griffe may resolve a name to a same-named submodule)."""
    mod = importlib.import_module(module)
    missing = [
        name
        for name in mod.__all__
        if callable(getattr(mod, name)) and not (getattr(mod, name).__doc__ or "").strip()
    ]
    assert not missing, f"{module}: no docstring on {missing}"


def test_api_page_lists_every_public_name() -> None:
    page = (REPO / "docs" / "api" / "zcser.md").read_text()
    import zcser

    absent = [
        name
        for name in zcser.__all__
        if not name.startswith("__")
        and name not in ("errors", "channel")
        and not re.search(rf"^\s+- {name}$", page, re.M)
    ]
    assert "::: zcser.channels.factory.channel" in page
    assert not absent, f"docs/api/zcser.md does not list {absent}"


@pytest.mark.parametrize("module", PUBLIC_MODULES)
def test_every_public_method_has_a_docstring(module: str) -> None:
    tree = _griffe(module)
    missing = []
    for _, name in _public(module):
        obj = tree[name]
        target = obj.final_target if obj.is_alias else obj
        if not target.is_class:
            continue
        for member_name, member in target.members.items():
            if member_name.startswith("_") or member.is_alias or not member.is_function:
                continue
            if "property" in member.labels:
                continue
            if not (member.docstring and member.docstring.value):
                missing.append(f"{name}.{member_name}")
    assert not missing, f"{module}: no docstring on {missing}"


# ---------------------------------------------------------------- command line


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    return subcommands(build_parser())


SUBCOMMANDS = sorted(_subcommands())


def test_the_expected_subcommands_exist() -> None:
    assert {"bench", "demo", "snapshot", "ls", "inspect", "gc"} <= set(SUBCOMMANDS)


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_subcommand_help(command: str) -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    text = out.getvalue()
    assert text.startswith(f"usage: zcser {command}")
    assert _subcommands()[command].description, f"`zcser {command} --help` has no description"


def test_top_level_help_lists_every_subcommand() -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        main(["--help"])
    for command in SUBCOMMANDS:
        assert re.search(rf"^\s+{command}\s", out.getvalue(), re.M), command


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_cli_page_documents_every_option(command: str) -> None:
    page = (REPO / "docs" / "cli.md").read_text()
    assert f"## `zcser {command}`" in page
    section = page.split(f"## `zcser {command}`", 1)[1].split("\n## ", 1)[0]
    parser = _subcommands()[command]
    for action in parser._actions:
        for flag in action.option_strings:
            if flag.startswith("--") and flag != "--help":
                assert flag in section, f"docs/cli.md, zcser {command}: {flag} undocumented"


def test_console_script_runs() -> None:
    script = shutil.which("zcser", path=str(Path(sys.executable).parent))
    assert script is not None, "the `zcser` console script is not installed (pip install -e .)"
    result = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("zcser ")


# ---------------------------------------------------------------- code in the docs runs


def _python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), re.S)


def _run_snippet(code: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "snippet.py"
    script.write_text(code)
    return run_python([str(script)], tmp_path, TIMEOUT)


def test_readme_starts_with_the_two_commands() -> None:
    text = (REPO / "README.md").read_text()
    first_block = text.split("```", 2)[1]
    assert [line.split()[:2] for line in first_block.strip().splitlines()] == [
        ["make", "demo"],
        ["make", "test"],
    ]


def test_readme_example_runs_and_prints_what_it_says(tmp_path: Path) -> None:
    code = _python_blocks(REPO / "README.md")[0]
    result = _run_snippet(code, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["7 (1080, 1920, 4) False", "10000000.0"]


def test_getting_started_example_runs_and_prints_what_it_says(tmp_path: Path) -> None:
    code = _python_blocks(REPO / "docs" / "getting-started.md")[0]
    result = _run_snippet(code, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["0 0.0 False", "1 1.0 False", "2 2.0 False"]


def test_network_example_runs_and_prints_what_it_says(tmp_path: Path) -> None:
    code = _python_blocks(REPO / "docs" / "network.md")[0]
    result = _run_snippet(code, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["1 (10000000,) False"]
