"""The ``coffeechat-home`` command: serve, init, migrate, register-user,
media-* and the admin commands (cli_admin.py)."""

from __future__ import annotations

import argparse
import asyncio
import gc
import getpass
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Coroutine, Sequence

from . import __version__
from .cli_admin import ADMIN_COMMANDS, add_admin_parsers, run_admin_command
from .cli_common import add_command, cli_database, cli_services, parse_time_ms
from .config import CONFIG_TEMPLATE, DEFAULT_DATA_DIR, Config, ConfigError, load_config
from .errors import MatrixError
from .keyfile import ensure_signing_key
from .storage.database import DatabaseError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="coffeechat-home", description="A Matrix homeserver.")
    parser.add_argument("--version", action="version", version=f"coffeechat-home {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = add_command(sub, "serve", "run the server", "Run the homeserver until interrupted.")
    p.add_argument(
        "--instance-name",
        help="this instance's name when several share one database (default: instance_name, 'main')",
    )

    p = sub.add_parser(
        "init", help="write a config file and signing key",
        description="Write a commented config file (if missing) and generate the signing key (if missing).",
    )
    p.add_argument("-c", "--config", default="coffeechat.toml", help="config file to write (default %(default)s)")
    p.add_argument("--server-name", default="localhost:8008", help="server_name for a new config")
    p.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help="data_dir for a new config")
    p.add_argument("--dev", action="store_true", help="write a config with dev_mode = true")

    add_command(sub, "migrate", "apply database migrations", "Apply pending migrations and exit.")

    p = add_command(sub, "register-user", "create a user", "Create a user account from the shell.")
    p.add_argument("username", help="localpart or full user id")
    p.add_argument("--password", help="password (default: prompt, or $COFFEECHAT_NEW_PASSWORD)")
    p.add_argument("--admin", action="store_true", help="make the user a server admin")

    p = add_command(sub, "media-list", "list a user's media", "List the media a user uploaded.")
    p.add_argument("user_id", help="full user id, e.g. @alice:example.org")
    p = add_command(
        sub, "media-quarantine", "quarantine media (downloads answer 404)",
        "Quarantine media: downloads and thumbnails answer 404 until released.",
    )
    p.add_argument("mxc", help="mxc://server/media_id")
    p.add_argument("--release", action="store_true", help="lift the quarantine instead")
    p = add_command(sub, "media-delete", "delete media", "Delete media, its thumbnails and unused files.")
    p.add_argument("mxc", help="mxc://server/media_id")
    p = add_command(
        sub, "media-purge-remote", "delete cached remote media older than a date",
        "Delete cached copies of other servers' media created before a date.",
    )
    p.add_argument("--before", required=True, help="ISO date/time (UTC unless it says) or ms since the epoch")

    add_command(
        sub, "rotate-signing-key", "replace the signing key (the old one stays published as old)",
        "Generate a new signing key; the current one is kept in the database and published as an "
        "old verify key, expired now. Restart every instance afterwards.",
    )

    add_admin_parsers(sub)
    return parser


async def _media_admin(config: Config, args: argparse.Namespace) -> int:
    """The media-* admin commands: straight on the database and media folder."""
    from .services.media import build_media
    from .storage.migrations import run_migrations

    async with cli_database(config) as (_, db):
        await run_migrations(db)
        media = build_media(config, db)
        if args.command == "media-list":
            for m in await media.list_user_media(args.user_id):
                state = "quarantined" if m.quarantined else ("uploaded" if m.uploaded else "pending")
                print(f"mxc://{m.server_name}/{m.media_id}\t{m.size_bytes}\t{m.content_type}\t"
                      f"{m.upload_name or ''}\t{m.created_ts}\t{state}")
            return 0
        if args.command == "media-quarantine":
            found = await media.quarantine(args.mxc, None if args.release else "admin (command line)")
            print(f"{'released' if args.release else 'quarantined'} {args.mxc}" if found else f"no such media {args.mxc}")
            return 0 if found else 1
        if args.command == "media-delete":
            found = await media.delete(args.mxc)
            print(f"deleted {args.mxc}" if found else f"no such media {args.mxc}")
            return 0 if found else 1
        count = await media.purge_remote_before(parse_time_ms(args.before))
        print(f"purged {count} remote media")
        return 0


def _load(args: argparse.Namespace) -> Config:
    env = dict(os.environ)
    if getattr(args, "dev", False):
        env.setdefault("COFFEECHAT_DEV_MODE", "true")
    if getattr(args, "instance_name", None):
        env["COFFEECHAT_INSTANCE_NAME"] = args.instance_name
    return load_config(args.config, env)


async def _serve(config: Config) -> int:
    from .app import HomeServer

    server = HomeServer(config)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # before saying we are up: a SIGTERM right after that line stops us cleanly
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    from .profiling import install as install_profiler, write_tracemalloc

    install_profiler(loop)  # only with BENCH_CPROFILE_DIR set
    print(
        f"coffeechat-home {config.server_name} (instance {config.instance_name}) listening on "
        f"http://{config.client_listener.host}:{server.client_port}/ (client API); "
        f"database: {server.database_description}; "
        f"registration: {config.registration.mode}"
        + (f"; federation on https://{config.federation_listener.host}:{server.federation_port}/"
           if server.federation_port is not None else "; federation off")
        + _metrics_note(config, server.client_port, server.metrics_port)
        + (f"; web chat page: http://{config.client_listener.host}:{server.client_port}/" if config.web.enabled else ""),
        flush=True,
    )
    try:
        await stop.wait()
    finally:
        # whatever still hangs after the bounded stop, the process goes
        _exit_watchdog(EXIT_DEADLINE_S)  # a daemon thread: a normal exit does not wait for it
        write_tracemalloc()  # only with BENCH_TRACEMALLOC_DIR set
        await server.stop()
        await _stop_leftover_tasks()
    return 0


# After SIGTERM the process exits within this many seconds, whatever hangs
# (HomeServer.stop bounds each step; this is for the rest: a task ignoring
# its cancellation at asyncio.run's end, a thread that never returns).
EXIT_DEADLINE_S = 25.0


def _exit_watchdog(seconds: float) -> None:
    def expire() -> None:
        print(f"coffeechat-home: still stopping {seconds:.0f} s after the signal; exiting now",
              file=sys.stderr, flush=True)
        os._exit(1)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()


async def _stop_leftover_tasks(timeout: float = 2.0) -> None:
    """Cancel the tasks still running after the server stopped (requests'
    background work), boundedly; asyncio.run would wait on them forever if
    one ignored its cancellation."""
    from .services.tasks import cancel_and_wait

    current = asyncio.current_task()
    leftover = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
    if leftover:
        await asyncio.gather(*(cancel_and_wait(t, timeout) for t in leftover))


def _metrics_note(config: Config, client_port: int | None, metrics_port: int | None) -> str:
    m = config.metrics
    if not m.enabled:
        return ""
    if metrics_port is not None:
        return f"; metrics: http://{m.host}:{metrics_port}{m.path}"
    return f"; metrics: {m.path} on the client listener"


async def _migrate(config: Config) -> int:
    from .storage.migrations import run_migrations

    async with cli_database(config) as (server, db):
        applied = await run_migrations(db)
        print(f"migrations applied: {applied or 'none (up to date)'}; database: {server.database_description}")
    return 0


async def _register_user(config: Config, username: str, password: str, admin: bool) -> int:
    async with cli_services(config) as services:
        result = await services.accounts.register(
            username=username, password=password, device_id=None, device_display_name=None,
            inhibit_login=True, is_admin=admin,
        )
    print(f"created {result}{' (admin)' if admin else ''}")
    return 0


async def _rotate_signing_key(config: Config) -> int:
    from .app import HomeServer
    from .keyfile import rotate_signing_key
    from .storage.server_keys import ServerKeyStore

    server = HomeServer(config)
    try:
        db, _ = await server.prepare()
        old, new = await rotate_signing_key(config.signing_key_file, ServerKeyStore(db))
        print(f"signing key is now {new}; {old} is published as an old key (expired now). "
              "Restart every instance to sign with the new key.")
    finally:
        await server.stop()
    return 0


def _init(args: argparse.Namespace) -> int:
    path = Path(args.config)
    if path.exists():
        print(f"{path} exists; left as it is")
    else:
        text = CONFIG_TEMPLATE.format(
            server_name=args.server_name,
            data_dir=args.data_dir,
            dev_mode="true" if args.dev else "false",
            registration_mode="open" if args.dev else "closed",
        )
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path}")
    config = load_config(path, {})
    if ensure_signing_key(config.signing_key_file):
        print(f"generated signing key {config.signing_key_file}")
    else:
        print(f"signing key {config.signing_key_file} exists")
    return 0


def _limit_malloc_arenas() -> None:
    """glibc gives each thread its own malloc arena; the few worker threads
    (password hashing) then hold memory the main thread never reuses. Two
    arenas are plenty for one event loop and cut the resident size."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-8, 2)  # M_ARENA_MAX
        # A fixed mmap threshold: scrypt's 32 MiB work areas are mapped and
        # unmapped each time instead of raising the dynamic threshold and
        # then staying resident in the heap after the hash is done.
        libc.mallopt(-3, 1024 * 1024)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass  # not glibc: nothing to tune


def _tune_gc() -> None:
    """Fewer garbage collections: what is loaded at start stays (frozen, out
    of every collection), and young objects are collected after 50,000
    allocations instead of 700. With a thousand /sync long-polls open, the
    default thresholds ran full collections over every parked request
    during a fan-out (bench/bench_fanout.py: about a third of the CPU per
    woken sync)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def _run(coro: Coroutine[Any, Any, int]) -> int:
    """Run the server on uvloop where available (about a fifth less CPU per
    request than the default loop); plain asyncio otherwise."""
    _limit_malloc_arenas()
    _tune_gc()
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "init":
            return _init(args)
        config = _load(args)
        from .logs import setup_logging

        setup_logging(config.log_level, config.log_format)
        if args.command == "serve":
            return _run(_serve(config))
        if args.command == "migrate":
            return asyncio.run(_migrate(config))
        if args.command == "register-user":
            password = args.password or os.environ.get("COFFEECHAT_NEW_PASSWORD")
            if not password:
                if not sys.stdin.isatty():
                    raise ConfigError("no password given: use --password or $COFFEECHAT_NEW_PASSWORD")
                password = getpass.getpass("Password: ")
            return asyncio.run(_register_user(config, args.username, password, args.admin))
        if args.command == "rotate-signing-key":
            return asyncio.run(_rotate_signing_key(config))
        if args.command.startswith("media-"):
            return asyncio.run(_media_admin(config, args))
        if args.command in ADMIN_COMMANDS:
            return asyncio.run(run_admin_command(config, args))
    except (ConfigError, DatabaseError) as e:
        print(f"coffeechat-home: error: {e}", file=sys.stderr)
        return 2
    except MatrixError as e:
        print(f"coffeechat-home: error: {e.errcode}: {e.error}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"coffeechat-home: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 1


if __name__ == "__main__":
    sys.exit(main())
