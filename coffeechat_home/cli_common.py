"""What every ``coffeechat-home`` subcommand shares (cli.py, cli_admin.py):
the -c/--dev flags, the database or the services a one-off command runs
on, and the dates ``--before`` takes."""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, AsyncIterator

from .config import DEFAULT_DATA_DIR, Config, ConfigError

if TYPE_CHECKING:
    from .app import HomeServer, Services
    from .storage.database import Database


def add_config_args(p: argparse.ArgumentParser) -> None:
    """-c and --dev, the same on every command: given the same flags and
    environment, every command finds the same data as `serve`."""
    p.add_argument(
        "-c", "--config", help="config file (TOML); default $COFFEECHAT_CONFIG, else built-in defaults"
    )
    p.add_argument(
        "--dev", action="store_true",
        help=f"development mode (open registration); data in {DEFAULT_DATA_DIR} unless configured, as without it",
    )


def add_command(sub: Any, name: str, help: str, description: str | None = None) -> argparse.ArgumentParser:
    """A subcommand with the shared -c/--dev flags."""
    p: argparse.ArgumentParser = sub.add_parser(name, help=help, description=description)
    add_config_args(p)
    return p


def parse_time_ms(text: str, expected: str = "an ISO date or ms since the epoch") -> int:
    """ms since the epoch from '1700000000000' or an ISO date/time (UTC
    unless it says)."""
    if text.isdigit():
        return int(text)
    try:
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"--before: expected {expected}, got {text!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return int(when.timestamp() * 1000)


@asynccontextmanager
async def cli_database(config: Config) -> AsyncIterator[tuple[HomeServer, Database]]:
    """The server's database (migrations not run), closed afterwards."""
    from .app import HomeServer

    server = HomeServer(config)
    db = await server.open_database()
    try:
        yield server, db
    finally:
        await server.stop()


@asynccontextmanager
async def cli_services(config: Config) -> AsyncIterator[Services]:
    """The services, on a prepared database, for a one-off command next to
    a running server: under an instance name of its own (taking a running
    server's name would take over what that server holds)."""
    from .app import HomeServer, build_services

    server = HomeServer(config)
    try:
        db, signing_key = await server.prepare()
        config = dataclasses.replace(config, instance_name=f"cli-{os.getpid()}")
        services = build_services(config, db, signing_key)
        await services.liveness.start()
        try:
            yield services
        finally:
            await services.liveness.stop()
            services.passwords.close()
    finally:
        await server.stop()
