"""The command line loads a command's module only when that command runs or shows its help:
`--help` and the store commands (import, info, compact) import no torch, torchvision,
open_clip or ray, the other commands no torchvision before they encode images; the group's
help still lists every command with its own first sentence and errors keep their one line and
exit code."""

from __future__ import annotations

import ast
import json
import pkgutil
import subprocess
import sys
from importlib import import_module
from pathlib import Path

import click
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from click.testing import CliRunner

import tipretrieval.cli
from tipretrieval.cli import main

HEAVY = ("torch", "torchvision", "open_clip", "ray")
# Runs the CLI with the given arguments, then prints (last line of stdout) which of HEAVY
# were imported and exits with the CLI's exit code.
SCRIPT = f"""
import sys
from tipretrieval.cli import main
try:
    main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
print(sorted(m for m in {HEAVY!r} if m in sys.modules))
sys.exit(code)
"""


def run(*args: object, code: int = 0) -> tuple[str, str, list[str]]:
    """(stdout, stderr, heavy modules imported) of the CLI run in a fresh interpreter."""
    proc = subprocess.run([sys.executable, "-c", SCRIPT, *map(str, args)],
                          capture_output=True, text=True)
    assert proc.returncode == code, proc.stderr
    *out, heavy = proc.stdout.splitlines()
    return "\n".join(out), proc.stderr, ast.literal_eval(heavy)


def test_help_and_store_commands_import_no_torch(tmp_path: Path):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "feats.npy", rng.standard_normal((100, 16)).astype(np.float32))
    pq.write_table(pa.table({"embedding": list(rng.standard_normal((30, 16), np.float32)),
                             "label": ["cat", "dog", "eel"] * 10}), tmp_path / "dump.parquet")
    store, dump_store = tmp_path / "store", tmp_path / "dump-store"

    out, _, heavy = run("--help")
    assert "Commands:" in out and heavy == []
    out, _, heavy = run("info", "--help")
    assert "--verify" in out and heavy == []
    out, _, heavy = run("import", tmp_path / "feats.npy", "--store", store)
    assert "imported 100 rows into new store" in out and heavy == []
    out, _, heavy = run("import", tmp_path / "dump.parquet", "--store", dump_store,
                        "--label-column", "label", "--quiet")
    assert "imported 30 rows from 1 files" in out and heavy == []
    out, _, heavy = run("info", dump_store, "--json", "--verify")
    described = json.loads(out)
    assert described["rows"] == 30 and described["verified"] and heavy == []
    assert [c["rows"] for c in described["classes"]] == [10, 10, 10]
    out, _, heavy = run("compact", store)
    assert out.startswith("nothing to merge") and heavy == []
    _, err, heavy = run("info", tmp_path / "missing", code=2)
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and heavy == []


def test_a_command_that_needs_torch_loads_it_but_no_torchvision_before_it_encodes_images():
    for command in ("build", "search", "report"):
        out, _, heavy = run(command, "--help")
        assert f"Usage: -c {command} [OPTIONS]" in out and heavy == ["torch"]


def test_help_lists_each_command_with_the_first_sentence_of_its_own_help():
    ctx = click.Context(main)
    eager = click.Group("tipretrieval", commands={
        name: main.get_command(ctx, name) for name in main.list_commands(ctx)})
    lazy_help = CliRunner().invoke(main, ["--help"]).output
    eager_help = CliRunner().invoke(eager, ["--help"]).output
    assert lazy_help.partition("Commands:")[2] == eager_help.partition("Commands:")[2]
    assert "  remove-shots  Remove keys from a cache, e.g. mislabelled shots.\n" in lazy_help


def test_every_command_defined_in_the_cli_package_is_listed():
    defined = {value.name
               for info in pkgutil.iter_modules(tipretrieval.cli.__path__)
               for value in vars(import_module(f"tipretrieval.cli.{info.name}")).values()
               if isinstance(value, click.Command)}
    assert len(defined) == 17
    assert sorted(defined) == main.list_commands(click.Context(main))


def test_an_unknown_command_is_a_usage_error():
    result = CliRunner().invoke(main, ["inspect", "x"])
    assert result.exit_code == 2 and "No such command 'inspect'" in result.output
