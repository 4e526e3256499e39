"""Every code block of README.md and docs/ runs, and the documentation site builds with no warning.

Blocks run in the order they appear, one temporary folder per document (a later block may use what an
earlier one wrote, as a reader following the page would). ``python`` blocks are executed with that folder
as the working directory; ``bash``/``sh`` blocks run under ``bash -euo pipefail`` there, with a ``keyveil``
command on the PATH that runs this checkout's keyveil. Blocks in other languages (``text``, none) are not
code. The folder starts with ``photos/`` holding two real photos (scikit-image's), standing in for the
reader's own. A block preceded by ``<!-- doc-test: skip "REASON" -->`` is not run here, for that reason
(set-up commands, hour-long experiments, a sequence another test runs); test_not_run_blocks_say_why lists them.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import keyveil

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
RUNNABLE = {"python": "python", "py": "python", "bash": "bash", "sh": "bash", "shell": "bash"}
_FENCE = re.compile(
    r"(?:<!--\s*doc-test:\s*skip\s+\"(?P<skip>[^\"]+)\"\s*-->\s*\n)?"
    r"^(?P<indent>[ ]*)```(?P<lang>[\w+-]*)[^\n]*\n(?P<body>.*?)^(?P=indent)```[ ]*$",
    flags=re.S | re.M,
)


@dataclass(frozen=True)
class Block:
    document: Path
    index: int
    line: int
    lang: str
    code: str
    skip: str | None

    @property
    def name(self) -> str:
        return f"{self.document.relative_to(ROOT).as_posix()}:{self.line}"


def code_blocks(document: Path) -> list[Block]:
    """The fenced blocks of ``document`` in a language this test runs, with their skip reasons."""
    text = document.read_text(encoding="utf-8")
    blocks = []
    for m in _FENCE.finditer(text):
        lang = RUNNABLE.get(m.group("lang").lower())
        if lang is None:
            continue
        body = "".join(line[len(m.group("indent")):] + "\n" for line in m.group("body").splitlines())
        line = text.count("\n", 0, m.start("indent")) + 1
        blocks.append(Block(document, len(blocks), line, lang, body, m.group("skip")))
    return blocks


BLOCKS = [b for d in DOCUMENTS for b in code_blocks(d)]
_FOLDERS: dict[Path, Path] = {}
_FAILED: set[Path] = set()


@pytest.fixture
def folder(tmp_path_factory, request) -> Path:
    """The working folder of the block's document, shared by its blocks in order."""
    block: Block = request.node.callspec.params["block"]
    if block.document not in _FOLDERS:
        _FOLDERS[block.document] = _with_photos(tmp_path_factory.mktemp(block.document.stem))
    return _FOLDERS[block.document]


def _with_photos(folder: Path) -> Path:
    """Stand in for the reader's ``photos/`` folder: two real photos from scikit-image."""
    from PIL import Image
    from skimage import data

    (folder / "photos").mkdir()
    for name in ("astronaut", "coffee"):
        Image.fromarray(getattr(data, name)()).save(folder / "photos" / f"{name}.png")
    return folder


def _keyveil_on_path(folder: Path) -> dict[str, str]:
    bin_dir = folder.parent / f"{folder.name}-bin"
    bin_dir.mkdir(exist_ok=True)
    shim = bin_dir / "keyveil"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m keyveil.cli "$@"\n')
    shim.chmod(0o755)
    src = str(Path(keyveil.__file__).resolve().parents[1])
    env = dict(os.environ)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    env.setdefault("OMP_NUM_THREADS", "2")
    return env


def test_documents_have_code():
    assert any(b.document.name == "README.md" for b in BLOCKS), "the README should show examples"
    assert any(b.document.name == "getting-started.md" for b in BLOCKS)


def test_skip_markers_name_a_reason():
    for document in DOCUMENTS:
        text = document.read_text(encoding="utf-8")
        markers = re.findall(r"<!--\s*doc-test:[^>]*-->", text)
        attached = sum(b.skip is not None for b in BLOCKS if b.document == document)
        assert len(markers) == attached, f"{document.name}: a doc-test marker is not right above a code block"


RUN = [b for b in BLOCKS if not b.skip]  # marked blocks are listed by test_not_run_blocks_say_why


def test_not_run_blocks_say_why():
    """The few blocks not run here (set-up commands, hour-long runs, sequences another test runs) name why."""
    held = [b for b in BLOCKS if b.skip]
    assert all(len(b.skip) > 20 for b in held), [b.name for b in held]
    assert len(held) <= 6, f"more blocks are held back than the set-up and hour-long ones: {[b.name for b in held]}"


@pytest.mark.parametrize("block", RUN, ids=[b.name for b in RUN])
def test_code_block_runs(block: Block, folder: Path, monkeypatch):
    if block.document in _FAILED:
        pytest.fail(f"{block.name}: not run, an earlier block of {block.document.name} failed (see that failure)")
    try:
        if block.lang == "python":
            monkeypatch.chdir(folder)
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                exec(compile(block.code, block.name, "exec"), {"__name__": "__doc_block__"})
        else:
            with subprocess.Popen(["bash", "-euo", "pipefail", "-c", block.code], cwd=folder,
                                  env=_keyveil_on_path(folder), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, start_new_session=True) as shell:
                try:
                    stdout, stderr = shell.communicate(timeout=600)
                except BaseException:  # timeout or interrupt: end the block's whole process group
                    os.killpg(shell.pid, signal.SIGKILL)
                    raise
            assert shell.returncode == 0, (
                f"{block.name} exited {shell.returncode}\n--- stdout\n{stdout[-4000:]}\n--- stderr\n{stderr[-4000:]}")
    except BaseException:
        _FAILED.add(block.document)
        raise


def test_docs_site_builds_without_warnings(tmp_path):
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent)) or shutil.which("mkdocs")
    assert mkdocs is not None, "mkdocs is not installed: pip install -e '.[docs]' (`make test` installs it)"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # Material's banner about MkDocs 2.0, not a build warning
    done = subprocess.run([mkdocs, "build", "--strict", "--site-dir", str(tmp_path / "site")], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stdout[-4000:]}\n{done.stderr[-6000:]}"
    assert "WARNING" not in done.stderr, done.stderr[-6000:]
    assert (tmp_path / "site" / "getting-started.html").exists()


def test_user_documents_cite_nothing_outside_the_repository():
    """No development-log references (issue / stop numbers) and no files a user of the repository lacks."""
    documents = [ROOT / n for n in ("README.md", "RESULTS.md", "BENCHMARKS.md", "SECURITY.md", "CHANGELOG.md")]
    pattern = re.compile(r"\b[Ii]ssues? \d+|\b[Ss]tops? \d+|\bDESIGN\.md|shared folder|shared/seeds")
    for document in documents + DOCUMENTS[1:]:
        hits = [f"{document.name}:{i}: {line.strip()}"
                for i, line in enumerate(document.read_text(encoding="utf-8").splitlines(), 1) if pattern.search(line)]
        assert not hits, "\n".join(hits)
