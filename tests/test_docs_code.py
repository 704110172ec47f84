"""Every ```python block of README.md and docs/*.md runs, on CPU, against the library as it is.

Blocks of one page run in order in one namespace, fresh for each page, as a reader pastes them one after another:
a block may use names an earlier block of the same page defined. A block right after a line `<!-- gpu -->` needs a
CUDA device and is skipped without one, so the blocks after it must not use what it defines (GPU blocks name their
objects cuda_*). Other blocks (bash, text) are not run. Each page runs in a temporary working folder (for blocks
that save files), from torch's global seed 0 (the generator's state is restored after), with torch on one thread
(the blocks use tiny models, where more threads only contend on a small machine).
"""
from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
GPU_MARK = "<!-- gpu -->"
FENCE = re.compile(r"^(?P<indent> *)```(?P<lang>[\w+-]*)\s*$")


def code_blocks(text: str) -> list[tuple[int, str, bool]]:
    """(line number of the first code line, code, needs a GPU) for each ```python block of a markdown text."""
    lines, blocks, i = text.splitlines(), [], 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"), None)
        if end is None:
            raise ValueError(f"line {i + 1}: a code block that is never closed")
        if opening["lang"] == "python":
            before = next((line.strip() for line in reversed(lines[:i]) if line.strip()), "")
            blocks.append((i + 2, textwrap.dedent("\n".join(lines[i + 1:end])), before == GPU_MARK))
        i = end + 1
    return blocks


def test_the_extractor_finds_blocks_and_gpu_marks():
    text = "x\n\n```python\na = 1\n```\n\n```bash\nls\n```\n<!-- gpu -->\n```python\nb = a\n```\n"
    assert code_blocks(text) == [(4, "a = 1", False), (12, "b = a", True)]


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_every_python_block_runs(page: Path, tmp_path, monkeypatch):
    blocks = code_blocks(page.read_text())
    if not blocks:
        pytest.skip("no python blocks")
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    namespace: dict = {"__name__": f"docs:{page.name}"}
    name = page.relative_to(ROOT)
    try:
        with torch.random.fork_rng(devices=[]):  # the global generator is as it was after the page
            torch.manual_seed(0)
            for line, code, gpu in blocks:
                if gpu and not torch.cuda.is_available():
                    continue
                try:
                    exec(compile(code, f"{name}:{line}", "exec"), namespace)
                except Exception as e:
                    raise AssertionError(f"the block at {name} line {line} failed: {type(e).__name__}: {e}") from e
    finally:
        torch.set_num_threads(threads)
