"""Deleting several named things the same way in every `rm` command: ask first when a person
is at the terminal, go on past failures, and exit 1 if any failed."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

import click
from botocore.exceptions import ClientError

from corral.cli.client import describe_error
from corral.cli.output import error, note


def delete_each(names: Sequence[str], noun: str, delete: Callable[[str], None],
                yes: bool) -> None:
    if not yes and sys.stdin.isatty():
        plural = "s" if len(names) > 1 else ""
        question = f"Delete {len(names)} {noun}{plural} ({', '.join(names)})?"
        if not click.confirm(question, default=False, err=True):
            note("Nothing deleted.")
            raise click.exceptions.Exit(1)
    failed = False
    for name in names:
        try:
            delete(name)
        except ClientError as exc:
            failed = True
            error(describe_error(exc) or str(exc))
            continue
        click.echo(f"Deleted {name}")
    if failed:
        raise click.exceptions.Exit(1)
