"""Options shared by several commands, so each is spelled and documented once.

Naming scheme: the object a command acts on is its argument (`info STORE`, `tune CACHE`);
every store it reads or writes besides is `--store STORE` (a second one: `--val-store`);
replacing an existing output is `--overwrite`; `--device` defaults to auto.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ..errors import BadInput, TipError

_PARAM = re.compile(r"`([a-z_]+(?:\.[a-z_]+)?)=`")
# API parameters whose option is not their dashed name; `owner.name=` names the parameter
# `name` of `owner` (a method or an options field) where `name=` alone would be ambiguous.
_OPTION = {
    "keys": "key",
    "row": "id",
    "spec": "index",
    "columns.features": "embedding-column",
    "columns.ids": "id-column",
    "columns.labels": "label-column",
    "columns.sources": "path-column",
    "retune.store": "val",
    "retune.split": "val-split",
}
# API calls a hint names (in backticks) and the command that does the same
_COMMAND = {
    "`Store.verify()`": "`tipretrieval info STORE --verify`",
    "`StoreIndex.ensure()`": "`tipretrieval index STORE`",
    "`Cache.retune()`": "`tipretrieval tune` or `add-shots --retune`",
}


def cli_text(text: str) -> str:
    """`text` as the CLI prints it: each API parameter (`name=`) becomes its --option and
    each API call it names (`Store.verify()`) the command that does the same."""
    def option(m: re.Match) -> str:
        name = _OPTION.get(m[1], m[1].rpartition(".")[2])
        return "--" + name.replace("_", "-")
    for call, command in _COMMAND.items():
        text = text.replace(call, command)
    return _PARAM.sub(option, text)


def cli_message(exc: TipError) -> str:
    """The one line the CLI prints for `exc`: API parameters (`name=`) become --options."""
    return cli_text(str(exc))


def model_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """--model/--pretrained/--checkpoint/--device: which encoder (`encode.encoder_for`)."""
    f = click.option("--device", default="auto", show_default=True,
                     help="cpu, cuda, cuda:N, or auto (CUDA when available).")(f)
    f = click.option("--checkpoint", type=click.Path(dir_okay=False),
                     help="Local weights file (state_dict, wrapped state_dict or .safetensors).")(f)
    f = click.option("--pretrained", help="open_clip pretrained tag, e.g. openai.")(f)
    f = click.option("--model", help="open_clip model name or model-config .json "
                     "(default: the encoder of the store or cache).")(f)
    return f


def overwrite_option(what: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """--overwrite: replace an existing output (`what`) instead of refusing."""
    return click.option("--overwrite", "--force", "overwrite", is_flag=True,
                        help=f"Replace an existing {what} at --out (--force: old name).")


def id_list(ids: tuple[str, ...], ids_file: str | None) -> list[str]:
    """Ids from repeated/comma-separated --ids and an --ids-file (UTF-8, one per line);
    BadInput when the options were given but name no id (never "no ids" = "all rows")."""
    out = [i for value in ids for i in value.split(",") if i]
    if ids_file:
        try:
            text = Path(ids_file).read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise BadInput(f"--ids-file {ids_file} is not UTF-8 text (byte {exc.start})",
                           "save it as UTF-8, one id a line") from None
        out += [line.strip() for line in text.splitlines() if line.strip()]
    if (ids or ids_file) and not out:
        raise BadInput("--ids/--ids-file name no id", "give at least one id")
    return out


def wants_encoder(model: str | None, pretrained: str | None, checkpoint: str | None) -> bool:
    """Whether any encoder option was given (otherwise the library picks the encoder)."""
    return any(v is not None for v in (model, pretrained, checkpoint))
