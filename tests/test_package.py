"""Packaging rules: a pure core, a lazy facade, the CLI entry point."""

from __future__ import annotations

import ast
import subprocess
import sys
import tempfile
from pathlib import Path

import metered_realtime
import metered_realtime.core

FORBIDDEN = {
    "asyncio",
    "anyio",
    "trio",
    "socket",
    "ssl",
    "selectors",
    "threading",
    "time",
    "random",
    "aiortc",
    "av",
}


# Subprocesses run outside the checkout: its top-level metered_realtime/ (the facade sources
# only) must not shadow the installed package, whose core/ is mapped in by package-dir.
_ELSEWHERE = tempfile.gettempdir()


def _core_files() -> list[Path]:
    return sorted(Path(metered_realtime.core.__file__).parent.glob("*.py"))


def test_core_source_imports_nothing_impure() -> None:
    files = _core_files()
    assert len(files) >= 8
    for path in files:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in FORBIDDEN, f"{path.name} imports {name}"


def _loaded_forbidden(imports: str) -> set[str]:
    names = f"set({sorted(FORBIDDEN)!r}) & set(sys.modules)"
    code = f"import sys{imports}; print(','.join(sorted({names})))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=_ELSEWHERE
    )
    return set(filter(None, out.stdout.strip().split(",")))


def test_importing_core_loads_no_impure_module() -> None:
    # Compare with a bare interpreter: some stdlib modules (e.g. time) are loaded at start-up.
    baseline = _loaded_forbidden("")
    assert (
        _loaded_forbidden("; import metered_realtime.core, metered_realtime.core.jwt") <= baseline
    )


def test_facade_never_imports_media_stack() -> None:
    code = "import sys, metered_realtime; print('aiortc' in sys.modules or 'av' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=_ELSEWHERE
    )
    assert out.stdout.strip() == "False"


def test_every_exported_name_resolves() -> None:
    for name in metered_realtime.__all__:
        assert getattr(metered_realtime, name) is not None, name
    for name in metered_realtime.core.__all__:
        assert getattr(metered_realtime.core, name) is not None, name


def test_cli_version() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "metered_realtime", "--version"],
        capture_output=True,
        text=True,
        check=True,
        cwd=_ELSEWHERE,
    )
    assert out.stdout.strip() == f"metered-realtime {metered_realtime.__version__}"


def test_typed_markers_are_installed() -> None:
    for pkg in (
        "metered_realtime",
        "metered_realtime.core",
        "metered_realtime.adapters",
        "metered_realtime.media",
    ):
        mod = __import__(pkg, fromlist=["_"])
        assert (Path(mod.__file__).parent / "py.typed").is_file(), pkg
