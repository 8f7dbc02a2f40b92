"""Library messages name API parameters (`name=`), never command-line flags; the CLI shows
each such parameter as its option (`cli.options.cli_text`)."""

from __future__ import annotations

import ast
import logging
import re
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner

import tipretrieval
from tipretrieval import Store
from tipretrieval.cli import _CliText, main
from tipretrieval.cli.cache_cmds import _warn
from tipretrieval.cli.options import cli_message, cli_text
from tipretrieval.errors import BadInput
from tipretrieval.jobs.classify.options import ClassifyOptions
from tipretrieval.jobs.search import Query, choose_index, search
from tipretrieval.provenance import Provenance
from tipretrieval.rows import Rows
from tipretrieval.store.dumps import DumpOptions, import_dump

PACKAGE = Path(tipretrieval.__file__).parent
FLAG = re.compile(r"(?<![\w`-])--[a-z][a-z0-9-]*")
PARAM = re.compile(r"`([a-z_]+(?:\.[a-z_]+)?)=`")
# Modules outside cli/ whose strings are read by people at a terminal or in a browser after
# running a command, not raised or logged by an API: they may name options.
NOT_SCANNED = {
    "cli",  # the command line itself
    "demo/run.py",  # `make demo` prints the commands that do the same by hand
    "jobs/report/html.py",  # the report page tells its reader which commands to run next
}
# (module, flag): the report's notes, shown on the page under "how this was made"
ALLOWED = {
    ("jobs/report/build.py", "--per-class"): "report note: how the rows were chosen",
    ("jobs/report/build.py", "--max-rows"): "report note: how the rows were chosen",
    ("jobs/report/build.py", "--store"): "report note: why thumbnails are missing",
    ("jobs/report/build.py", "--evidence"): "report note: how to see evidence shots",
}


def _library_modules() -> list[Path]:
    return [p for p in sorted(PACKAGE.rglob("*.py"))
            if not any(str(p.relative_to(PACKAGE)).startswith(skip) for skip in NOT_SCANNED)]


def _strings(tree: ast.AST) -> list[str]:
    """Every string constant of `tree` except docstrings (f-strings: their literal parts)."""
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                docstrings.add(id(body[0].value))
    return [node.value for node in ast.walk(tree) if isinstance(node, ast.Constant)
            and isinstance(node.value, str) and id(node) not in docstrings]


def _library_strings() -> list[tuple[str, str]]:
    return [(str(path.relative_to(PACKAGE)), s) for path in _library_modules()
            for s in _strings(ast.parse(path.read_text()))]


def test_library_modules_name_no_command_line_flag():
    found = sorted({(module, flag) for module, s in _library_strings()
                    for flag in FLAG.findall(s)})
    assert found, "the scan finds the allowed report notes"
    assert [f for f in found if f not in ALLOWED] == []
    assert sorted(ALLOWED) == found  # an allowance nothing needs any more is removed


def test_scan_sees_flags_in_fstrings_and_skips_docstrings():
    tree = ast.parse('"""Use --doc."""\nx = 1\nraise E(f"bad {x}: drop --evidence", "`k=`")\n')
    strings = _strings(tree)
    assert sorted(strings) == [": drop --evidence", "`k=`", "bad "]
    assert [f for s in strings for f in FLAG.findall(s)] == ["--evidence"]


def _options() -> set[str]:
    out = set()
    ctx = click.Context(main)
    for name in main.list_commands(ctx):
        for param in main.get_command(ctx, name).params:
            if isinstance(param, click.Option):
                out.update(param.opts)
    return out


def test_every_parameter_a_library_message_names_is_an_option_of_some_command():
    names = {m for _, s in _library_strings() for m in PARAM.findall(s)}
    assert {"evidence", "columns.features", "retune.store", "keys"} <= names
    options = _options()
    assert {n for n in names if cli_text(f"`{n}=`") not in options} == set()


def test_cli_text_maps_parameters_and_calls():
    assert cli_text("give `top_k=` 1, `keys=` f=X, `row=` or `spec=`") == \
        "give --top-k 1, --key f=X, --id or --index"
    assert cli_text("name it with `columns.features=` or `columns.ids=`") == \
        "name it with --embedding-column or --id-column"
    assert cli_text("give them: `retune.store=` [`retune.split=`]; `a.split=`") == \
        "give them: --val [--val-split]; --split"
    assert cli_text("check with `Store.verify()`") == \
        "check with `tipretrieval info STORE --verify`"
    assert cli_text("`k` and k= and `K=` stay") == "`k` and k= and `K=` stay"


def test_cli_log_handler_shows_options():
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "%s: %s",
                               ("tune again with `Cache.retune()`", "`top_k=`"), None)
    assert _CliText().filter(record)
    assert record.getMessage() == \
        "tune again with `tipretrieval tune` or `add-shots --retune`: --top-k"


def test_cli_warnings_show_options(capsys):
    _warn("alpha 3 is the top of its grid: widen the alpha scale, e.g. `scale=` 7 6")
    assert capsys.readouterr().err == \
        "warning: alpha 3 is the top of its grid: widen the alpha scale, e.g. --scale 7 6\n"


# --- the same errors from the API (`name=`) and from the command line (--option) -----------
def test_classify_options_name_parameters():
    with pytest.raises(BadInput) as exc:
        ClassifyOptions(top_k=0)
    assert str(exc.value) == "`top_k=` is 0: give 1 or more"
    assert cli_message(exc.value) == "--top-k is 0: give 1 or more"
    with pytest.raises(BadInput, match="give `evidence=` 0 or use `method=` tip or cache"):
        ClassifyOptions(method="zero-shot", evidence=2)


def test_search_errors_name_parameters():
    with pytest.raises(BadInput) as exc:
        Query(text="a", row="1")
    assert cli_message(exc.value) == "give exactly one query: --text, --image or --id"
    assert "`text=`, `image=` or `row=`" in str(exc.value)
    with pytest.raises(BadInput) as exc:
        choose_index(10**9, 512, "1MB")
    assert str(exc.value).endswith("raise `memory=` or give `spec=` explicitly")
    assert cli_message(exc.value).endswith("raise --memory or give --index explicitly")


@pytest.fixture
def small_store(tmp_path) -> Store:
    store = Store.create(tmp_path / "s", dim=4, classes=["a", "b"],
                         provenance=Provenance("external", "unknown", 4))
    x = np.eye(4, dtype=np.float32)
    store.append(Rows(np.array([f"r{i}" for i in range(4)], dtype=object), x,
                      np.array([0, 1, 0, 1]), np.array(["q"] * 4, dtype=object)))
    return store.refresh()


def test_missing_search_index_api_and_cli(small_store):
    with pytest.raises(BadInput) as exc:
        search(small_store.path, Query(row="r0"), k=2, index_split="q")
    assert str(exc.value).endswith("build it first: `StoreIndex.ensure()` with `split=` q")
    assert cli_message(exc.value).endswith(
        "build it first: `tipretrieval index STORE` with --split q")
    with pytest.raises(BadInput) as exc:
        search(small_store.path, Query(row="r0"), label="c")
    assert str(exc.value).endswith("has no class 'c': give `label=` one of its classes: 'a', 'b'")
    res = CliRunner().invoke(main, ["search", str(small_store.path), "--id", "r0", "-k", "2"])
    assert res.exit_code == 2
    assert res.output.strip().endswith(
        "has no search index: build it first: `tipretrieval index STORE`"), res.output


def test_dump_errors_api_and_cli(tmp_path):
    np.save(tmp_path / "part.npy", np.eye(3, dtype=np.float32))
    with pytest.raises(BadInput) as exc:
        import_dump(tmp_path, tmp_path / "s", DumpOptions(shard_rows=0))
    assert str(exc.value) == "`shard_rows=` is 0: give a positive row count"
    res = CliRunner().invoke(main, ["import", str(tmp_path), "--store", str(tmp_path / "s"),
                                    "--shard-rows", "0"])
    assert res.exit_code == 2
    assert "error: --shard-rows is 0: give a positive row count" in res.output
