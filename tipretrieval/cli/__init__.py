"""The `tipretrieval` command line: a thin layer over the Python API.

Each sub-module defines click commands; `COMMANDS` names, per command, the module that
defines it and the sentence `--help` lists it with, so a command's module (and torch, FAISS,
open_clip, which most of them import) is loaded only when that command runs or shows its own
help (click's lazy-subcommand pattern): `--help` and the store commands start in a fraction of
a second. Errors the user can act on (`TipError`) are printed as one line on stderr,
"error: <problem>: <hint>", with the API parameters the hint names shown as options, and the
error's exit code (2 for bad input). `options` holds the shared options and the naming scheme.
"""

from __future__ import annotations

import importlib
import logging
import sys
from dataclasses import dataclass
from typing import Any

import click

from ..errors import TipError
from .options import cli_message, cli_text


@dataclass(frozen=True)
class LazyCommand:
    """A command by where it is defined (`tipretrieval.cli.<module>.<attr>`) and the first
    sentence of its help, which the group's `--help` lists without importing the module
    (`tests/test_cli_startup.py` checks both against the command itself)."""

    module: str
    attr: str
    help: str


COMMANDS = {
    "import": LazyCommand("store_cmds", "import_cmd", "Import precomputed features from SOURCE "
                          "(.npy, .npz, .pt or .h5) into a store."),
    "info": LazyCommand("store_cmds", "info_cmd", "Describe a store: rows, dim, classes with "
                        "counts, splits, provenance, shards, bytes."),
    "compact": LazyCommand("store_cmds", "compact_cmd", "Merge runs of small shards of STORE "
                           "into fewer, larger ones (atomic; rows unchanged)."),
    "extract": LazyCommand("encode_cmds", "extract_cmd",
                           "Encode the images of SOURCE into the store."),
    "text": LazyCommand("encode_cmds", "text_cmd", "Build the CLIP text classifier: one "
                        "prompt-ensembled, L2-normalised row per class."),
    "build": LazyCommand("cache_cmds", "build_cmd", "Build a Tip-Adapter cache from K "
                         "labelled shots per class of --store."),
    "tune": LazyCommand("cache_cmds", "tune_cmd", "Search alpha and beta on the official grid "
                        "(and GDA's alpha) and write them into the cache; without a text "
                        "classifier only beta is searched."),
    "finetune": LazyCommand("cache_cmds", "finetune_cmd", "Tip-Adapter-F: fine-tune the keys "
                            "on stored views, pick the epoch on val, re-search."),
    "eval": LazyCommand("cache_cmds", "eval_cmd", "Top-1/top-5 accuracy of each method on the "
                        "labelled rows of a store."),
    "add-shots": LazyCommand("cache_cmds", "add_shots_cmd", "Add labelled shots (and new "
                             "classes) to a cache without rebuilding it."),
    "remove-shots": LazyCommand("cache_cmds", "remove_shots_cmd",
                                "Remove keys from a cache, e.g. mislabelled shots."),
    "classify": LazyCommand("classify_cmds", "classify", "Classify every row of a query store "
                            "(or image source) with CACHE into --out."),
    "report": LazyCommand("report_cmds", "report_cmd", "Write a static HTML report of the "
                          "classify OUTPUT: rows per class, confidence, pages of images with "
                          "their top classes and evidence, accuracies for labelled rows, and "
                          "the rows to label next (to-label.txt / to-label.csv)."),
    "fit-predict": LazyCommand("report_cmds", "fit_predict_cmd", "Fit a cache on LABELLED_DIR "
                               "(one sub-folder per class), classify NEW_DIR, write the "
                               "report."),
    "index": LazyCommand("search_cmds", "index_cmd", "Build or update (new rows only) the "
                         "search index of STORE, kept beside it."),
    "search": LazyCommand("search_cmds", "search_cmd", "The k rows of STORE nearest to a text, "
                          "an image or a stored row."),
    "demo": LazyCommand("demo_cmds", "demo_cmd", "Run store -> build -> tune -> finetune -> "
                        "eval -> classify on synthetic data."),
}


class _CliText(logging.Filter):
    """Shows the API parameters a library log message names as options (`cli_text`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = cli_text(record.getMessage()), ()
        return True


class _Group(click.Group):
    """Imports a command's module on first use (click's "Lazily Loading Subcommands"); turns
    TipError into a one-line message and its exit code."""

    def __init__(self, *args: Any, lazy_subcommands: dict[str, LazyCommand], **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.lazy_subcommands = lazy_subcommands

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(self.lazy_subcommands)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        lazy = self.lazy_subcommands.get(cmd_name)
        if lazy is None:
            return None
        module = importlib.import_module(f"{__name__}.{lazy.module}")
        return getattr(module, lazy.attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list of `--help`, from `lazy_subcommands`: imports no command module."""
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max(map(len, names))
        rows = [(name, click.Command(name, help=self.lazy_subcommands[name].help)
                 .get_short_help_str(limit)) for name in names]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except TipError as exc:
            click.echo(f"error: {cli_message(exc)}", err=True)
            sys.exit(exc.exit_code)


@click.group(cls=_Group, lazy_subcommands=COMMANDS,
             context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages to stderr.")
@click.version_option(package_name="tipretrieval")
def main(verbose: bool) -> None:
    """Tip-Adapter CLIP few-shot classification over an HDF5 feature store and FAISS caches."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_CliText())
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        handlers=[handler],
    )
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # CPU-variant probing noise
