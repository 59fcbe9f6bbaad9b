"""The README stays true to the code: its configuration reference, commands and ports."""

from __future__ import annotations

import re
from pathlib import Path

from agora import config

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()

START, END = "<!-- config-reference:start -->", "<!-- config-reference:end -->"


def fenced_blocks(text: str) -> list[str]:
    return [m.group(1).strip() for m in re.finditer(r"^```[^\n]*\n(.*?)^```", text, re.M | re.S)]


def table_rows(text: str, first_header: str) -> list[list[str]]:
    """The body rows of the Markdown table whose first column is headed first_header."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] == first_header:
            rows = []
            for body in lines[i + 2:]:
                if not body.startswith("|"):
                    break
                rows.append([c.strip() for c in body.strip().strip("|").split("|")])
            return rows
    raise AssertionError(f"README has no table headed '{first_header}'")


def test_config_reference_is_generated_from_config_py():
    assert README.count(START) == 1 and README.count(END) == 1
    section = README.split(START, 1)[1].split(END, 1)[0]
    assert section.strip("\n") + "\n" == config.reference_markdown(), (
        "the README's configuration reference is out of date: run `make readme`")


def test_every_setting_is_documented():
    section = README.split(START, 1)[1].split(END, 1)[0]
    for setting in config.SETTINGS:
        for name in (setting.key, setting.env, setting.flag):
            assert f"`{name}`" in section, name


def test_the_two_commands_are_make_serve_and_make_test():
    assert fenced_blocks(README)[:2] == ["make serve", "make test"]
    makefile = (ROOT / "Makefile").read_text()
    for target in ("serve", "test"):
        assert re.search(rf"^{target}:", makefile, re.M), f"Makefile has no '{target}' target"


def test_ci_runs_the_readme_test_command():
    script = (ROOT / ".ci" / "run").read_text()
    commands = [line.strip() for line in script.splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
    assert "exec make test" in commands


def test_ports_table_names_every_listener_with_its_default():
    rows = {row[0].strip("`"): row for row in table_rows(README, "listener")}
    for listener, key in config.LISTENERS.items():
        assert listener in rows, f"ports table lacks the {listener} listener"
        assert rows[listener][1] == str(config.BY_KEY[key].default), listener
        setting = config.BY_KEY[key]
        assert f"`{setting.env}`" in rows[listener][2] and f"`{setting.flag}`" in rows[listener][2], listener
