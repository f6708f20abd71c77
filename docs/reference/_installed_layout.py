"""mkdocs hook: mkdocstrings reads ``metered_realtime`` as installed, not as laid out in the repo.

The repository keeps ``core/``, ``adapters/`` and ``media/`` at the top level and setuptools
installs them as ``metered_realtime.core`` / ``.adapters`` / ``.media`` (``package-dir`` in
pyproject.toml). griffe, which mkdocstrings uses, reads source files statically (so field
docstrings survive) and finds subpackages by walking the package's folder: from the repository's
``metered_realtime/`` folder, which an import-hook editable install also points back to, it would
see no subpackages at all.

This hook asks the import system where each of the four packages lives and hands griffe one search
path that has the installed layout:

* a regular install (CI): the ``site-packages`` folder that holds the package;
* an editable install (the dev venv; import-hook or strict): if the package folder does not hold
  the subpackages, a temporary folder where ``metered_realtime/`` is rebuilt from symlinks to the
  real files, with ``core``, ``adapters`` and ``media`` linked in. It is removed when mkdocs exits.

Run the ``mkdocs`` script of a venv that has the package installed (``pip install ".[docs]"`` or
``".[dev]"``); ``python -m mkdocs`` from the repository root would import the source folder.
"""

from __future__ import annotations

import atexit
import importlib.util
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from mkdocs.plugins import event_priority

PACKAGE = "metered_realtime"
SUBPACKAGES = ("core", "adapters", "media")

_search_path: Path | None = None


def _folder(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    folders = [Path(p) for p in (spec.submodule_search_locations or [])] if spec else []
    folders = [p for p in folders if p.is_dir()]
    if not folders:
        raise RuntimeError(f"{name} is not importable: install the package first (pip install .)")
    return folders[0].resolve()


def _build_search_path() -> Path:
    top = _folder(PACKAGE)
    subs = {sub: _folder(f"{PACKAGE}.{sub}") for sub in SUBPACKAGES}
    if all(path == top / sub for sub, path in subs.items()):
        return top.parent  # installed as one folder: site-packages
    tree = Path(tempfile.mkdtemp(prefix="mr-docs-"))
    atexit.register(shutil.rmtree, tree, ignore_errors=True)
    package = tree / PACKAGE
    package.mkdir()
    for entry in top.iterdir():
        if entry.name != "__pycache__" and entry.name not in subs:
            (package / entry.name).symlink_to(entry)
    for sub, path in subs.items():
        (package / sub).symlink_to(path, target_is_directory=True)
    return tree


@event_priority(100)  # before mkdocstrings' own on_config, which creates the handler
def on_config(config: Any, **_: Any) -> Any:
    """Point the python handler's ``paths`` at the installed layout."""
    global _search_path
    if _search_path is None:
        _search_path = _build_search_path()
    plugin = config.plugins["mkdocstrings"]
    handler = plugin.config.handlers.setdefault("python", {})
    handler["paths"] = [str(_search_path)]
    return config


_SPHINX_ROLE = re.compile(r":(?:class|func|meth|attr|mod|exc|data|obj):<code>(~?)([^<]*)</code>")


def _role(match: re.Match[str]) -> str:
    target = match.group(2)
    return f"<code>{target.rsplit('.', 1)[-1] if match.group(1) else target}</code>"


def on_page_content(html: str, **_: Any) -> str:
    """Docstrings use Sphinx roles (``:class:`~a.B```): render them as plain code, ``B``."""
    return _SPHINX_ROLE.sub(_role, html)
