"""The README's Python examples run as written."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README should show Python examples"
    for block in blocks:
        exec(compile(block, str(README), "exec"), {})
    assert "key_fingerprint" in capsys.readouterr().out
