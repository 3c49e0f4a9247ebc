"""The documentation runs: every ```python block of README.md and docs/*.md is executed (the blocks
of one page in order, in one namespace, as a reader would paste them), except blocks whose first
line says ``# not run: <reason>``; docs/api.md lists every public name and is current."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys

import pytest

from tests.ckpt_fixtures import REPO, env

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
SKIP = "# not run:"


def blocks(page) -> list[tuple[int, str]]:
    """(first line number, code) of each python block of ``page``."""
    text = page.read_text()
    return [(text[: m.start()].count("\n") + 2, m.group(1)) for m in BLOCK.finditer(text)]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """What the snippets name, made small: a trained checkpoint at best.pt and
    runs/synthetic/checkpoints/best.pt, a video.mp4 (and routine.mp4), and a bank file at bank.pt."""
    import torch

    from tests.ckpt_fixtures import make_checkpoint, write_clips

    tmp_path = tmp_path_factory.mktemp("docs_files")
    make_checkpoint(tmp_path / "runs" / "synthetic" / "checkpoints" / "best.pt")
    (tmp_path / "best.pt").write_bytes(
        (tmp_path / "runs" / "synthetic" / "checkpoints" / "best.pt").read_bytes()
    )
    clip = write_clips(tmp_path / "clips", [2]).parent / "clip0.mp4"
    (tmp_path / "video.mp4").write_bytes(clip.read_bytes())
    (tmp_path / "routine.mp4").write_bytes(clip.read_bytes())  # docs/long_videos.md's long video
    torch.save({"bank": torch.randn(8, 99, 64)}, tmp_path / "bank.pt")
    return tmp_path


@pytest.fixture
def workdir(files, tmp_path, monkeypatch):
    """A fresh folder with the files, as the working folder; the cache and the home folder in it."""
    import shutil

    shutil.copytree(files, tmp_path, dirs_exist_ok=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("ARTLIB_CACHE", str(tmp_path / "cache"))
    return tmp_path


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_python_blocks_run(page, workdir):
    found = blocks(page)
    namespace: dict = {"__name__": "__docs__"}
    for line, code in found:
        first = code.lstrip().splitlines()[0] if code.strip() else ""
        if first.startswith(SKIP):
            reason = first[len(SKIP) :].strip()
            assert len(reason.split()) >= 3, f"{page.name}:{line}: say why the block is not run"
            continue
        try:
            exec(compile(code, f"{page.name}:{line}", "exec"), namespace)
        except Exception as e:
            raise AssertionError(f"{page.name}, the block at line {line}: {e!r}\n{code}") from e


def test_api_page_lists_every_public_name_and_is_current():
    text = (REPO / "docs" / "api.md").read_text()
    gen = importlib.import_module("tools.gen_api")
    for name in gen.MODULES:
        module = importlib.import_module(name)
        section = text.split(f"## `{name}`\n", 1)[1].split("\n## ", 1)[0]
        for public in module.__all__:
            assert re.search(rf"^- `(class )?{re.escape(public)}[(`]", section, re.M), (
                name,
                public,
            )
    res = subprocess.run(
        [sys.executable, "tools/gen_api.py", "--check"],
        env=env(),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert res.returncode == 0, res.stderr
