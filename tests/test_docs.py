"""The documentation matches the code: docstrings on the public API, CLI help for every
subcommand (and docs/cli.md naming each option), and every code block of README.md and docs/*.md.

How code blocks in the docs are fenced (the rule this file enforces):

- ```python : a complete program. It is run as a script (a subprocess, the repository on
  PYTHONPATH, a fresh temporary directory as cwd, a timeout) and must exit 0.
- a ```text block right after a ```python block (only blank lines between them) is what that
  program prints: its stdout must be exactly those lines.
- ```py : a fragment that cannot run alone (it uses names defined elsewhere); not run.
- ```sh / ```bash : shell commands, not run; every `zcser ...` / `python -m zcser ...` command
  in them must parse with the real argument parser. Plain ``` blocks (diagrams, layouts, usage
  synopses) are not checked.

Shared-memory names written in a ```python block (the quoted first argument of `Receiver`,
`Sender`, `Reader` or `Writer`, and string literals ending in one, like "/sem-w-NAME") are
replaced by names unique to this test run, so concurrent runs never collide and the leak check
(tests/conftest.py) proves the example cleans up after itself.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import io
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import griffe
import pytest
from conftest import unique_name
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

DOC_PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^```([A-Za-z]*)[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)
NAME_ARG = re.compile(r'\b(?:Receiver|Sender|Reader|Writer)\(\s*"([A-Za-z0-9_-]+)"')


@dataclasses.dataclass(frozen=True)
class Block:
    page: Path
    line: int
    lang: str
    code: str
    output: str | None  # the ```text block right after it, if any

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"


def _blocks(page: Path) -> list[Block]:
    text = page.read_text()
    found = list(FENCE.finditer(text))
    blocks = []
    for i, m in enumerate(found):
        output = None
        if m.group(1) == "python" and i + 1 < len(found):
            after = found[i + 1]
            if after.group(1) == "text" and not text[m.end() : after.start()].strip():
                output = after.group(2)
        line = text.count("\n", 0, m.start()) + 1
        blocks.append(Block(page, line, m.group(1), m.group(2), output))
    return blocks


ALL_BLOCKS = [b for page in DOC_PAGES for b in _blocks(page)]
PYTHON_BLOCKS = [b for b in ALL_BLOCKS if b.lang == "python"]
SHELL_BLOCKS = [b for b in ALL_BLOCKS if b.lang in ("sh", "bash")]


def test_code_blocks_use_only_the_documented_fences() -> None:
    """A block fenced some other way (```python3, ```pycon) would silently escape this test."""
    odd = [b.id for b in ALL_BLOCKS if b.lang not in ("", "python", "py", "text", "sh", "bash")]
    assert not odd, f"use ```python (runs), ```py (fragment), ```text or ```sh: {odd}"
    assert len(PYTHON_BLOCKS) >= 10  # the pages really have runnable examples


def _unique_names(code: str) -> str:
    """Each name, and each string literal ending in it ("/sem-w-NAME"), made unique to this run."""
    for name in sorted(set(NAME_ARG.findall(code)), key=len, reverse=True):
        fresh = unique_name("doc")
        code = re.sub(rf'(["/-]){re.escape(name)}"', rf'\g<1>{fresh}"', code)
    return code


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=lambda b: b.id)
def test_python_block_runs_and_prints_what_the_page_says(block: Block, tmp_path: Path) -> None:
    script = tmp_path / "snippet.py"
    script.write_text(_unique_names(block.code))
    result = run_python([str(script)], tmp_path, TIMEOUT)
    assert result.returncode == 0, f"{block.id} failed:\n{result.stderr}"
    if block.output is not None:
        got = [line.rstrip() for line in result.stdout.splitlines()]
        assert got == [line.rstrip() for line in block.output.splitlines()], block.id


def _zcser_commands(code: str) -> list[list[str]]:
    commands = []
    for raw in code.splitlines():
        line = raw.split("#", 1)[0].strip()
        words = shlex.split(line) if line else []
        if words[:3] == ["python", "-m", "zcser"]:
            commands.append(words[3:])
        elif words[:1] == ["zcser"]:
            commands.append(words[1:])
    return commands


@pytest.mark.parametrize("block", SHELL_BLOCKS, ids=lambda b: b.id)
def test_zcser_commands_in_shell_blocks_parse(block: Block) -> None:
    parser = build_parser()
    for args in _zcser_commands(block.code):
        if args in (["--help"], ["--version"]) or args[-1:] == ["--help"]:
            continue
        with contextlib.redirect_stderr(io.StringIO()) as err:
            try:
                parser.parse_args(args)
            except SystemExit:
                pytest.fail(
                    f"{block.id}: `zcser {shlex.join(args)}` does not parse: {err.getvalue()}"
                )


def test_readme_starts_with_the_two_commands() -> None:
    text = (REPO / "README.md").read_text()
    first_block = text.split("```", 2)[1]
    assert [line.split()[:2] for line in first_block.strip().splitlines()] == [
        ["make", "demo"],
        ["make", "test"],
    ]
