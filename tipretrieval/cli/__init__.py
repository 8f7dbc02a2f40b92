"""The `tipretrieval` command line: a thin layer over the Python API.

Each sub-module defines `commands`, a list of click commands. Errors the user can act on
(`TipError`) are printed as one line on stderr, "error: <problem>: <hint>", with the API
parameters the hint names shown as options, and the error's exit code (2 for bad input).
`options` holds the shared options and the naming scheme.
"""

from __future__ import annotations

import logging
import sys

import click

from ..errors import TipError
from . import (
    cache_cmds,
    classify_cmds,
    demo_cmds,
    encode_cmds,
    report_cmds,
    search_cmds,
    store_cmds,
)
from .options import cli_message, cli_text


class _CliText(logging.Filter):
    """Shows the API parameters a library log message names as options (`cli_text`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = cli_text(record.getMessage()), ()
        return True


class _Group(click.Group):
    """Turns TipError into a one-line message and its exit code."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except TipError as exc:
            click.echo(f"error: {cli_message(exc)}", err=True)
            sys.exit(exc.exit_code)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
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


for _module in (store_cmds, encode_cmds, cache_cmds, classify_cmds, report_cmds, search_cmds,
                demo_cmds):
    for _command in _module.commands:
        main.add_command(_command)
