"""The `corral` command."""

from __future__ import annotations

import sys

import click

from corral.cli.settings import build_settings, resolve_data_dir
from corral.errors import ConfigError

DATA_DIR = click.option("--data-dir", envvar="CORRAL_DATA_DIR", default=None,
                        help="Data directory (default: ~/.local/share/corral).")


@click.group()
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
    key = KeyStore(keys_path(resolve_data_dir(data_dir))).load_or_create_root()
    click.echo(f"export AWS_ACCESS_KEY_ID={key.access_key_id}")
    click.echo(f"export AWS_SECRET_ACCESS_KEY={key.secret_access_key}")
    click.echo(f"export AWS_DEFAULT_REGION={settings.region}")
    click.echo(f"export AWS_ENDPOINT_URL={settings.endpoint_url}")


if __name__ == "__main__":
    main()
