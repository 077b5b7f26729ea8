"""The docs keep their promises pointing at something: every test that docs/guarantees.md names exists."""

from __future__ import annotations

import ast
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
# `tests/test_x.py::test_name`, `tests/test_x.py` alone, and `…::test_name` (a test of the file named before it)
NAMED = re.compile(r"`(tests/[\w/]+\.py|…)(?:::(\w+))?(?:\[[^\]`]*\])?`")


def named_tests(text: str) -> list[tuple[str, str | None]]:
    """(file, test or None) for each test the text names, `…` resolved to the file named before it."""
    found, last = [], None
    for file, test in NAMED.findall(text):
        if file == "…":
            assert last is not None, f"…::{test} names no file before it"
            file = last
        found.append((file, test or None))
        last = file
    return found


def test_every_test_named_in_the_guarantees_exists():
    named = named_tests((ROOT / "docs" / "guarantees.md").read_text())
    assert len(named) >= 40  # the reader found the table's references
    missing = []
    for file, test in named:
        path = ROOT / file
        if not path.is_file():
            missing.append(file)
            continue
        if test is not None:
            defined = {node.name for node in ast.parse(path.read_text()).body
                       if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}
            if test not in defined:
                missing.append(f"{file}::{test}")
    assert not missing, f"docs/guarantees.md names tests that do not exist: {missing}"


def test_the_reader_resolves_an_ellipsis_to_the_file_before_it():
    text = "`tests/test_a.py::test_one`, `…::test_two`; `tests/test_b.py`, `…::test_three[x-1]`"
    assert named_tests(text) == [("tests/test_a.py", "test_one"), ("tests/test_a.py", "test_two"),
                                 ("tests/test_b.py", None), ("tests/test_b.py", "test_three")]
