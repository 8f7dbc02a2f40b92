"""The rule "no imports inside functions except for an optional dependency or start-up time,
each with a comment saying which", checked over the whole package."""

from __future__ import annotations

import ast
from pathlib import Path

import tipretrieval

PACKAGE = Path(tipretrieval.__file__).parent
REASONS = ("optional dependency", "start-up time")


def function_imports(source: str) -> list[tuple[int, str]]:
    """(line, its text with the run of imports and comments just above it) of each import
    inside a function: one comment may explain a group of imports."""
    lines = source.splitlines()
    found = set()
    for fn in ast.walk(ast.parse(source)):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    first = node.lineno - 1
                    while first > 0 and lines[first - 1].strip().startswith(
                            ("import ", "from ", "#")):
                        first -= 1
                    found.add((node.lineno, "\n".join(lines[first:node.lineno])))
    return sorted(found)


def test_every_import_inside_a_function_says_why():
    unexplained = [f"{path.relative_to(PACKAGE)}:{line}"
                   for path in sorted(PACKAGE.rglob("*.py"))
                   for line, text in function_imports(path.read_text())
                   if not any(reason in text for reason in REASONS)]
    assert unexplained == []


def test_the_check_sees_nested_imports_and_the_comment_of_their_group():
    source = ("import os\n\ndef f():\n    import ray  # optional dependency\n"
              "    x = 1\n    import numpy\n    def g():\n        # start-up time: torch\n"
              "        import torch\n        from torch import nn\n")
    found = function_imports(source)
    assert [line for line, _ in found] == [4, 6, 9, 10]
    assert [any(r in text for r in REASONS) for _, text in found] == [True, False, True, True]
