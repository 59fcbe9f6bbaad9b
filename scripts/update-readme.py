"""Rewrite the README's configuration reference from config.py (`make readme`).

tests/test_readme.py fails when the two differ, so a new setting is documented by
running this and committing the result.
"""

from __future__ import annotations

import sys
from pathlib import Path

from agora import config

START, END = "<!-- config-reference:start -->", "<!-- config-reference:end -->"

readme = Path(__file__).resolve().parent.parent / "README.md"
text = readme.read_text()
if text.count(START) != 1 or text.count(END) != 1:
    sys.exit(f"{readme}: expected one {START} and one {END}")
head, rest = text.split(START, 1)
_, tail = rest.split(END, 1)
new = f"{head}{START}\n{config.reference_markdown()}{END}{tail}"
if new != text:
    readme.write_text(new)
    print(f"updated the configuration reference in {readme.name}")
