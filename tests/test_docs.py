"""README.rst is part of the product: it renders cleanly, and every test it cites exists."""

from __future__ import annotations

import ast
import io
import re

import docutils.core

from conftest import ROOT

README = (ROOT / "README.rst").read_text(encoding="utf-8")


def test_readme_renders_without_warnings():
    warnings = io.StringIO()
    docutils.core.publish_doctree(README, settings_overrides={"warning_stream": warnings, "report_level": 2})
    assert warnings.getvalue() == ""


def cited_tests() -> list[tuple[str, str]]:
    """(file, test) for every ``tests/x.py::test_y`` and following ``::test_z`` in README.rst."""
    cited, current = [], None
    for path, name in re.findall(r"``(tests/[\w/]+\.py)?::(test_\w+)``", README):
        current = path or current
        cited.append((current, name))
    return cited


def test_every_cited_test_exists():
    cited = cited_tests()
    assert len(cited) > 20
    missing = []
    for path, name in cited:
        tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
        defined = {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}
        if name not in defined:
            missing.append(f"{path}::{name}")
    assert missing == []
