"""The documentation site: the public API documented and in the reference, every page in the nav,
the guides' snippets runnable.

CI builds the site itself (``mkdocs build --strict`` in ``.ci/run``); these checks run without
mkdocs and say which name, page or snippet is wrong.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import itertools
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

import metered_realtime

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
REFERENCE = DOCS / "reference"
API_MD = ROOT.parent / "shared" / "API.md"  # the contract, beside the checkout when present


def _names(text: str) -> list[str]:
    return text.split()


# API.md "Public names (metered_realtime.__all__)": pub/sub, peer and media.
PUBSUB = _names("""SignallingClient SubscribeOptions ReconnectOptions Connected Disconnected
StateChange Message Direct Presence PresencePeer ServerError GoingAway TokenProviderError
WsCloseCode IceServerConfig Logger MeteredRealtimeError SignallingError SignallingConnectError
ServerRequestError AckTimeoutError DisconnectedError""")
PEER = _names("""MeteredPeer RemotePeer Joined Left PeerJoined PeerLeft Data FatalError Track
StreamAdded StreamRemoved DataChannelOpened NegotiationError IceCandidateError DataChannel DCOpen
DCClose DCError DCMessage MeteredPeerSendError MeteredPeerOversizedError MeteredPeerStateError
MeteredPeerReplaceTrackError ReplaceTrackFailure DataChannelOverflowError""")
MEDIA = _names("""AudioSource MediaStream StreamMetadata iter_frames from_file from_rtsp
from_camera from_microphone screen_share""")
# The additions API.md allows, exported too.
ADDITIONS = _names("NotConnectedError IceRestartExhaustedError ConnectionReset StdlibLogger")
PUBLIC = PUBSUB + PEER + MEDIA + ADDITIONS


def _facade_sources() -> dict[str, str]:
    """Name -> the module the facade imports it from (top level and ``TYPE_CHECKING``)."""
    tree = ast.parse(Path(metered_realtime.__file__).read_text(encoding="utf-8"))
    found: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                found[alias.asname or alias.name] = node.module
    return found


def _attribute_docstring(module: str, name: str) -> str:
    """The string literal right after ``name = ...`` / ``name: T = ...`` in ``module``."""
    source = Path(importlib.import_module(module).__file__ or "").read_text(encoding="utf-8")
    body = ast.parse(source).body
    for node, following in itertools.pairwise(body):
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        named = any(isinstance(t, ast.Name) and t.id == name for t in targets)
        if named and isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant):
            return str(following.value.value)
    return ""


def _docstring(name: str, obj: Any) -> str:
    if inspect.isclass(obj) or inspect.isfunction(obj):
        doc = obj.__dict__.get("__doc__") if inspect.isclass(obj) else obj.__doc__
        if dataclasses.is_dataclass(obj) and doc and doc.startswith(f"{obj.__name__}("):
            return ""  # the signature dataclasses writes when the class has no docstring
        return (doc or "").strip()
    return _attribute_docstring(_facade_sources()[name], name).strip()  # e.g. a type alias


def test_the_contract_list_matches_api_md() -> None:
    if not API_MD.is_file():
        pytest.skip("shared/API.md is not beside this checkout")
    text = API_MD.read_text(encoding="utf-8")
    section = text.split("## Public names", 1)[1].split("\n## ", 1)[0]
    section = section.split("the constructor keywords", 1)[0]
    listed = {
        word
        for span in re.findall(r"`([^`]*)`", section)
        for word in re.split(r"[\s,]+", span)
        if re.fullmatch(r"[A-Za-z]\w*", word)
    }
    assert listed == set(PUBLIC)


@pytest.mark.parametrize("name", PUBLIC)
def test_public_name_is_exported_and_documented(name: str) -> None:
    assert name in metered_realtime.__all__
    obj = getattr(metered_realtime, name)  # resolves (lazy names import their module)
    assert _docstring(name, obj), f"metered_realtime.{name} has no docstring"


def _directives() -> list[tuple[str, str, list[str] | None]]:
    """(page, identifier, members option or None) of every ``::: x`` block of the reference."""
    found = []
    for page in sorted(REFERENCE.glob("*.md")):
        text = page.read_text(encoding="utf-8")
        for match in re.finditer(r"^::: (\S+)\n((?:    .*\n|\n)*)", text, re.MULTILINE):
            block = "\n".join(line[4:] for line in match.group(2).splitlines())
            options = (yaml.safe_load(block) or {}).get("options", {}) if block.strip() else {}
            found.append((page.name, match.group(1), options.get("members")))
    return found


def _module_exports(identifier: str) -> set[str]:
    try:
        module = importlib.import_module(identifier)
    except ImportError:
        return set()
    return set(getattr(module, "__all__", ()))


@pytest.mark.parametrize("name", PUBLIC)
def test_public_name_is_rendered_in_the_api_reference(name: str) -> None:
    """Rendered in full on a topic page (the facade page, index.md, only links to it)."""
    assert name in metered_realtime.__all__
    module = _facade_sources()[name]
    pages = []
    for page, identifier, members in _directives():
        if page == "index.md" or (members is not None and name not in members):
            continue
        # one object, or a module / package whose __all__ (what mkdocstrings renders) has it
        if identifier == f"{module}.{name}" or name in _module_exports(identifier):
            pages.append(page)
    assert pages, f"{name} (from {module}) is rendered by no page of docs/reference/"


def test_the_facade_page_renders_metered_realtime() -> None:
    assert ("index.md", "metered_realtime", None) in _directives()


def _nav_pages(nav: Any) -> list[str]:
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, list):
        return [page for item in nav for page in _nav_pages(item)]
    if isinstance(nav, dict):
        return [page for value in nav.values() for page in _nav_pages(value)]
    return []


def test_every_docs_page_is_in_the_nav() -> None:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    assert config["docs_dir"] == "docs"
    nav = _nav_pages(config["nav"])
    assert len(nav) == len(set(nav)), "a page is in the nav twice"
    missing_files = [page for page in nav if not (DOCS / page).is_file()]
    assert not missing_files, f"the nav names pages that do not exist: {missing_files}"
    pages = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}
    orphans = sorted(pages - set(nav))
    assert not orphans, f"pages under docs/ not reachable from the nav: {orphans}"


# The runnable snippets of the pages written for the site: every python block that talks to
# ws://127.0.0.1:8787 and starts its own event loop runs, as a user would run it, against one
# server that accepts the development key and the guides' signing secret.
SNIPPET_PAGES = ["index.md", "guides/auth.md", "guides/ai-agent.md", "guides/iot.md",
                 "guides/trio.md"]  # fmt: skip
EXPECTED = {
    "index.md": ["demo/lobby {'text': 'hello'} True", "alice, over the data channel: bob got"],
    "guides/auth.md": ["ada {'displayName': 'Ada'} hi", "closed 4002 True", "connected"],
    "guides/ai-agent.md": [],
    "guides/iot.md": ["{0: [0, 1, 2, 3, 4], 1: [0, 1, 2, 3, 4], 2: [0, 1, 2, 3, 4]}"],
    "guides/trio.md": ["hi from trio", "agent got HELLO FROM TRIO", "human hears 960 samples"],
}


def _runnable(page: str) -> list[str]:
    text = (DOCS / page).read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, re.DOTALL)
    return [b for b in blocks if "ws://127.0.0.1:8787" in b and re.search(r"\.run\(main", b)]


@pytest.fixture(scope="module")
def guide_server() -> Any:
    from tests.serve import Serve

    server = Serve("--key", "pk_dev_local", "--secret", "sk_id_local=dev-only-signing-secret")
    yield server
    server.stop()


@pytest.mark.parametrize("page", SNIPPET_PAGES)
def test_page_snippets_run_against_a_server(page: str, guide_server: Any, tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.serve import ELSEWHERE

    blocks = _runnable(page)
    assert blocks, f"{page} has no runnable snippet"
    output = ""
    for i, block in enumerate(blocks):
        code = block.replace("ws://127.0.0.1:8787", f"ws://127.0.0.1:{guide_server.port}")
        code = code.replace("await asyncio.Event().wait()", "await asyncio.sleep(1)")
        script = tmp_path / f"snippet_{i}.py"
        script.write_text(code, encoding="utf-8")
        result = subprocess.run(
            [sys.executable, str(script)],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ELSEWHERE,
        )
        assert result.returncode == 0, f"{page} snippet {i}:\n{result.stderr}"
        output += result.stdout
    for expected in EXPECTED[page]:
        assert expected in output, f"{page}: {expected!r} not in {output!r}"
