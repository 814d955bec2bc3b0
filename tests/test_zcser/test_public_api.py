"""The public face: every name of the previous release still imports and is what it was, old
module paths import or say where their names went, the library never imports its tools, and no
module reaches into another package's private parts."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import transports.errors
import transports.zerobuffer
import zcser
import zcser.errors

REPO = Path(__file__).resolve().parents[2]

# Every public name of the release before the redesign (0.1.0), by module.
BEFORE = {
    "zcser": [
        "Codec", "DEFAULT_CAPACITY", "DEFAULT_HEADROOM", "DEFAULT_THRESHOLD", "Message",
        "NetReceiver", "NetReceiverStats", "NetSender", "NetSenderStats", "Plan", "Receiver",
        "ReceiverStats", "Sender", "SenderFactory", "SenderStats", "__version__", "channel",
        "dumps", "errors", "load", "loads", "save", "snapshot_info",
    ],
    "zcser.errors": [
        "BufferFull", "BufferTooSmall", "ChannelError", "ChecksumMismatch", "Closed",
        "CorruptData", "CorruptMessage", "CorruptSnapshot", "CorruptStream", "DecodeError",
        "IncompatibleStream", "MessageTooLarge", "PeerDead", "ReaderDead", "Timeout",
        "UnregisteredType", "UnsupportedType", "UnsupportedVersion", "UsageError",
        "WriterDead", "ZcserError",
    ],
    "zcser.codec": [
        "CODEC_NAME", "CODEC_VERSION", "Codec", "DEFAULT_THRESHOLD", "FORMAT_NAME", "Plan",
        "dumps", "loads",
    ],
    "zcser.snapshot": ["load", "save", "snapshot_info", "verify_file"],
    "transports.errors": [
        "AtomicsUnavailable", "BufferExists", "BufferFull", "BufferNotFound", "CorruptBuffer",
        "FileSpaceError", "FrameTooLarge", "IncompatibleBuffer", "InvalidConfig",
        "InvalidFrameSize", "InvalidName", "MetadataAlreadyWritten", "MetadataTooLarge",
        "PeerDead", "PeerProtocolError", "ReaderDead", "ReservationError", "SequenceError",
        "ShmFullError", "SnapshotFileError", "Timeout", "TransportClosed",
        "TransportEnvironmentError", "TransportError", "TransportUsageError",
        "WriterAlreadyConnected", "WriterDead",
    ],
    "transports.zerobuffer": [
        "BufferConfig", "DEFAULT_SPIN", "Frame", "POLL_INTERVAL", "Reader", "ReaderStats",
        "Writer", "WriterStats",
    ],
    "transports.mmapfile": [
        "AtomicWriter", "FILE_MODE", "MapMode", "TEMP_MARKER", "is_temp_name", "open_mapping",
        "remove_stale_temp_files", "stale_temp_files", "temp_path_for", "write_file_atomic",
    ],
}  # fmt: skip

OLD_PATHS = {  # module of 0.1.0 -> the module its names live in now
    "transports.inspect": "transports.admin",
    "transports.zmq": "transports.zeromq",
}


@pytest.mark.parametrize("module", sorted(BEFORE))
def test_every_public_name_of_the_previous_release_still_imports(module: str) -> None:
    mod = importlib.import_module(module)
    missing = [name for name in BEFORE[module] if not hasattr(mod, name)]
    assert not missing, f"{module} lost {missing}"
    if hasattr(mod, "__all__"):
        assert not set(BEFORE[module]) - set(mod.__all__) - {"__version__"}


def test_the_version_is_the_installed_package_version_not_the_wire_format() -> None:
    from importlib.metadata import version

    assert zcser.__version__ == version("zcser")
    assert zcser.CODEC_VERSION == zcser.codec.CODEC_VERSION


def test_constructing_the_base_class_builds_the_registered_transport(shm_name: str) -> None:
    with zcser.Receiver(shm_name, capacity=1 << 20) as rx, zcser.Sender(shm_name) as tx:
        assert isinstance(rx, zcser.Receiver) and type(rx) is zcser.ShmReceiver
        assert isinstance(tx, zcser.Sender) and type(tx) is zcser.ShmSender
        assert repr(tx).startswith("<ShmSender ") and repr(rx).startswith("<ShmReceiver ")
    with zcser.Receiver("tcp://127.0.0.1:0") as net_rx:
        assert isinstance(net_rx, zcser.Receiver) and type(net_rx) is zcser.NetReceiver
        assert repr(net_rx).startswith("<NetReceiver 'tcp://127.0.0.1:")


@pytest.mark.parametrize(
    ("call", "option"),
    [
        (lambda: zcser.Sender("tcp://127.0.0.1:9", headroom=8192), "headroom"),
        (lambda: zcser.Sender("tcp://127.0.0.1:9", spin=10), "spin"),
        (lambda: zcser.Receiver("tcp://127.0.0.1:0", metadata_size=1 << 16), "metadata_size"),
        (lambda: zcser.Receiver("ipc:///tmp/zcser-none", spin=10), "spin"),
    ],
)
def test_network_ends_refuse_shared_memory_options_by_name(call: object, option: str) -> None:
    with pytest.raises(zcser.errors.UsageError, match=option):
        call()  # type: ignore[operator]


@pytest.mark.parametrize("name", [5, None, b"bytes", 1.5])
def test_a_name_that_is_not_a_string_is_a_usage_error(name: object) -> None:
    with pytest.raises(zcser.errors.UsageError, match="must be a str"):
        zcser.Receiver(name)  # type: ignore[arg-type]
    with pytest.raises(zcser.errors.UsageError, match="must be a str"):
        zcser.Sender(name)  # type: ignore[arg-type]


def test_an_unknown_scheme_is_a_usage_error_listing_the_known_ones() -> None:
    with pytest.raises(zcser.errors.UsageError, match="ipc://, shm://, tcp://"):
        zcser.Receiver("udp://127.0.0.1:5000")


def test_channel_is_a_function_and_the_old_module_path_says_where_it_went() -> None:
    with pytest.raises(ModuleNotFoundError, match=r"zcser\.channels"):
        importlib.import_module("zcser.channel")
    assert callable(zcser.channel)


@pytest.mark.parametrize(("old", "new"), sorted(OLD_PATHS.items()))
def test_old_module_paths_still_import_with_a_deprecation_warning(old: str, new: str) -> None:
    sys.modules.pop(old, None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(old)
    assert module is importlib.import_module(new)
    assert any(issubclass(w.category, DeprecationWarning) and new in str(w.message) for w in caught)


def test_one_error_tree_timeouts_are_builtin_timeouts() -> None:
    assert issubclass(zcser.errors.Timeout, TimeoutError)
    assert issubclass(zcser.errors.BufferFull, zcser.errors.Timeout)
    translated = zcser.errors.translate(transports.errors.ShmFullError("no room"))
    assert isinstance(translated, zcser.errors.ShmFull)
    assert isinstance(translated, zcser.errors.ChannelError) and str(translated) == "no room"
    for exc, cls in [
        (transports.errors.BufferFull("x"), zcser.errors.BufferFull),
        (transports.errors.WriterDead("x"), zcser.errors.WriterDead),
        (transports.errors.SnapshotFileError("x"), zcser.errors.CorruptSnapshot),
        (transports.errors.FileSpaceError("x"), zcser.errors.DiskFull),
        (transports.errors.CorruptBuffer("x"), zcser.errors.CorruptStream),
        (transports.errors.InvalidConfig("x"), zcser.errors.UsageError),
    ]:
        assert type(zcser.errors.translate(exc)) is cls
    other = ValueError("not a transport error")
    assert zcser.errors.translate(other) is other


def test_importing_zcser_imports_nothing_from_its_tools() -> None:
    code = (
        "import sys, zcser, zcser.channels, zcser.codec, zcser.snapshot;"
        "print(sorted(m for m in sys.modules if m.startswith('zcser.tools')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    )
    assert out.stdout.strip() == "[]"


def _modules(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_package(module: str) -> bool:
    return (REPO / module.replace(".", "/")).is_dir()


def _private_reaches(path: Path) -> list[str]:
    """Imports in `path` of a private (_underscore) module or name that is not its own package's:
    a private name of a module is its package's, a private name of a package is that package's.
    Relative imports are resolved first."""
    me = _module_name(path)
    my_package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[tuple[str, str]] = []  # (module, imported name or "")
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = my_package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join([*base, module] if module else base)
            targets = [(module, a.name) for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [(a.name, "") for a in node.names]
        for module, name in targets:
            if not module.startswith(("zcser", "transports")):
                continue
            full = f"{module}.{name}" if name else module
            parts = full.split(".")
            for i, part in enumerate(parts):
                if part.startswith("_") and not part.startswith("__"):
                    owner = ".".join(parts[:i])  # the module or package holding the name
                    home = owner if _is_package(owner) else owner.rpartition(".")[0]
                    if home != my_package:
                        found.append(f"{me} imports {full}")
                    break
    return found


def test_no_module_imports_another_packages_private_parts() -> None:
    reaches = [r for p in _modules("zcser") + _modules("transports") for r in _private_reaches(p)]
    assert not reaches, reaches
