"""The `corral` command."""

from __future__ import annotations

import sys
from typing import Any

import click

from corral.cli.settings import build_settings, resolve_data_dir, running_endpoint
from corral.errors import ConfigError

DATA_DIR = click.option("--data-dir", envvar="CORRAL_DATA_DIR", default=None,
                        help="Data directory (default: ~/.local/share/corral).")


# Commands that talk to a server are imported on first use, so that `corral server` and
# `corral env` do not pay for importing boto3.
LAZY_COMMANDS = {
    "deploy": "corral.cli.commands.deploy:deploy",
    "invoke": "corral.cli.commands.invoke:invoke",
    "ls": "corral.cli.commands.functions:ls",
    "rm": "corral.cli.commands.functions:rm",
    "logs": "corral.cli.commands.logs:logs",
    "doctor": "corral.cli.commands.doctor:doctor",
    "stats": "corral.cli.commands.stats:stats",
    "bill": "corral.cli.commands.bill:bill",
    "schedule": "corral.cli.commands.schedule:schedule",
    "route": "corral.cli.commands.route:route",
    "subscribe": "corral.cli.commands.subscribe:subscribe",
}


class CorralGroup(click.Group):
    """The command group: expected failures become one line on stderr and exit status 1."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *LAZY_COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is None and cmd_name in LAZY_COMMANDS:
            import importlib

            module, _, attr = LAZY_COMMANDS[cmd_name].partition(":")
            command = getattr(importlib.import_module(module), attr)
            assert isinstance(command, click.Command)
            self.add_command(command, cmd_name)
        return command

    def invoke(self, ctx: click.Context) -> Any:
        from corral.cli.client import ENDPOINT_META, describe_error
        from corral.cli.output import error

        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            # `corral ls | head`: the reader went away; nothing more to say.
            _silence_stdout()
            ctx.exit(1)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception as exc:
            message = describe_error(exc, ctx.meta.get(ENDPOINT_META))
            if message is None:
                raise
            error(message)
            ctx.exit(1)


def _silence_stdout() -> None:
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


@click.group(cls=CorralGroup)
@click.version_option(package_name="corral")
def main() -> None:
    """Corral: run AWS Lambda functions on your own machine, isolated."""


@main.command()
@DATA_DIR
@click.option("--listen", default=None, help="HOST:PORT to listen on (default 127.0.0.1:9009).")
@click.option("--insecure", is_flag=True, help="Allow running code without real isolation "
              "when this host cannot sandbox it.")
@click.option("--sandbox", type=click.Choice(["auto", "linux", "process"]), default=None,
              help="Sandbox implementation (default: auto).")
@click.option("--keep-alive", type=float, default=None,
              help="Seconds an idle instance is kept warm (default 600).")
def server(data_dir: str | None, listen: str | None, insecure: bool, sandbox: str | None,
           keep_alive: float | None) -> None:
    """Run the Corral server in the foreground."""
    from corral.server import serve

    settings = build_settings(data_dir, listen, insecure=insecure, sandbox=sandbox,
                              keep_alive=keep_alive)
    try:
        serve(settings)
    except ConfigError as exc:
        click.echo(f"corral: {exc}", err=True)
        sys.exit(2)


@main.command()
@DATA_DIR
@click.option("--listen", default=None, help="The server's HOST:PORT.")
def env(data_dir: str | None, listen: str | None) -> None:
    """Print `export` lines that point boto3 and the AWS CLI at Corral."""
    from corral.iam.keys import KeyStore
    from corral.server import keys_path

    settings = build_settings(data_dir, listen)
    directory = resolve_data_dir(data_dir)
    key = KeyStore(keys_path(directory)).load_or_create_root()
    endpoint = settings.endpoint_url
    if listen is None:
        endpoint = running_endpoint(directory) or endpoint
    click.echo(f"export AWS_ACCESS_KEY_ID={key.access_key_id}")
    click.echo(f"export AWS_SECRET_ACCESS_KEY={key.secret_access_key}")
    click.echo(f"export AWS_DEFAULT_REGION={settings.region}")
    click.echo(f"export AWS_ENDPOINT_URL={endpoint}")


if __name__ == "__main__":
    main()
