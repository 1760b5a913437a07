"""``tessera token new``: make a scoped bearer token and the ``[tokens.NAME]`` lines that admit it.

The token goes to stdout once, on the first line, followed by a blank line and the TOML section; the
notes for a person go to stderr. Nothing is stored: the config keeps only the hash, so a lost token is
replaced by a new one (and its section), never recovered.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.text import Text

from tessera.tokens import SCOPES, TokenHash, check_prefix, new_token

token_app = typer.Typer(
    help="Scoped bearer tokens (the \\[tokens.NAME] sections of the config).", no_args_is_help=True
)
err = Console(stderr=True)

#: A name that is a bare TOML key and fits ``TESSERA_TOKENS__NAME__KEY`` (no double underscore).
_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]|_(?!_)){0,63}")


def token_section(name: str, token_hash: TokenHash, scopes: list[str], prefixes: list[str]) -> str:
    """The TOML lines of one token (strings written as JSON strings, which TOML reads the same)."""
    lines = [f"[tokens.{name}]", f'hash = "{token_hash}"', f"scopes = {json.dumps(scopes)}"]
    if prefixes:
        lines.append(f"prefixes = {json.dumps(prefixes, ensure_ascii=False)}")
    return "\n".join(lines) + "\n"


def _usage_error(message: str) -> typer.Exit:
    err.print(Text.assemble(("error: ", "red"), message), soft_wrap=True)
    return typer.Exit(2)


@token_app.command("new")
def new(
    name: Annotated[str, typer.Argument(help="The token's name: the NAME of \\[tokens.NAME].")],
    scopes: Annotated[
        str,
        typer.Option("--scopes", help=f"Comma-separated, from {', '.join(SCOPES)} (none implies another)."),
    ],
    prefix: Annotated[
        list[str] | None,
        typer.Option("--prefix", help="A virtual path the token may touch (repeatable; default: all)."),
    ] = None,
) -> None:
    """Print a new token (once) and the config lines that admit it."""
    if not _NAME.fullmatch(name):
        raise _usage_error(f"token name {name!r}: use letters, digits, - and single _ (up to 64)")
    wanted = [scope.strip() for scope in scopes.split(",") if scope.strip()]
    unknown = [scope for scope in wanted if scope not in SCOPES]
    if unknown or not wanted:
        raise _usage_error(f"--scopes {scopes!r}: choose from {', '.join(SCOPES)}")
    try:
        prefixes = list(dict.fromkeys(check_prefix(p) for p in prefix or []))
    except ValueError as exc:
        raise _usage_error(f"--prefix: {exc}") from None
    token, token_hash = new_token()
    section = token_section(name, token_hash, sorted(set(wanted), key=SCOPES.index), prefixes)
    sys.stdout.write(f"{token}\n\n{section}")
    err.print(
        "The first line is the token, shown this once: hand it over now (clients send it as "
        "Authorization: Bearer …). Add the other lines to the config file and restart the server.",
        soft_wrap=True,
    )
