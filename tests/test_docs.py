"""Every ```python block in README.md and docs/*.md runs, so the documentation cannot rot.

A block fenced as ```python notest is shown but not run (it needs data the test machine may lack).
"""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python[ \t]*\n(.*?)^```", re.MULTILINE | re.DOTALL)


def python_blocks(path: Path):
    return [match.group(1) for match in BLOCK.finditer(path.read_text(encoding="utf-8"))]


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_python_examples_run(path):
    namespace: dict = {"__name__": f"docs_{path.stem}"}
    for number, code in enumerate(python_blocks(path), start=1):
        with contextlib.redirect_stdout(io.StringIO()):
            try:
                exec(compile(code, f"{path.name} block {number}", "exec"), namespace)
            except Exception as error:  # report which block broke, with its code
                pytest.fail(f"{path.name} python block {number} failed: {error!r}\n{code}")


def test_documents_have_examples():
    assert python_blocks(ROOT / "docs" / "data.md"), "docs/data.md lost its runnable examples"
