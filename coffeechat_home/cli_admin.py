"""Admin commands on the shell (the admin API's use cases, run against the
live database next to a running server): user-list, user-modify,
room-list, room-delete and purge-history, with a progress bar for the long
ones (rich)."""

from __future__ import annotations

import argparse
import asyncio
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from .cli_common import add_command, cli_services, parse_time_ms
from .config import Config, ConfigError

if TYPE_CHECKING:
    from .app import Services

ADMIN_COMMANDS = ("user-list", "user-modify", "room-list", "room-delete", "purge-history")

CLI_ADMIN = "admin (command line)"
EXPECTED_BEFORE = "an event id, an ISO date or ms since the epoch"


def add_admin_parsers(sub: Any) -> None:
    p = add_command(sub, "user-list", "list users", "List users (like GET /_synapse/admin/v2/users).")
    p.add_argument("--name", help="only users whose id or display name contains this")
    p.add_argument("--deactivated", action="store_true", help="include deactivated users")

    p = add_command(
        sub, "user-modify", "change a user: password, admin flag, deactivation",
        "Change a user (like PUT /_synapse/admin/v2/users/<user id>); creates it if missing.",
    )
    p.add_argument("user_id", help="full user id, e.g. @alice:example.org")
    p.add_argument("--password", help="new password (other sessions are logged out)")
    admin = p.add_mutually_exclusive_group()
    admin.add_argument("--admin", dest="admin", action="store_true", default=None, help="make a server admin")
    admin.add_argument("--no-admin", dest="admin", action="store_false", help="no longer a server admin")
    p.add_argument("--deactivate", action="store_true", help="deactivate: leave every room, end every session")
    p.add_argument("--erase", action="store_true", help="with --deactivate: also remove the profile")

    p = add_command(sub, "room-list", "list rooms", "List rooms with their member counts.")
    p.add_argument("--search", help="only rooms whose id or name contains this")

    p = add_command(
        sub, "room-delete", "delete a room: everyone out, blocked, purged",
        "Make every local member leave, block the room, remove its aliases and (unless --no-purge) "
        "delete its stored history. Runs as a job a running server can also finish.",
    )
    p.add_argument("room_id")
    p.add_argument("--no-block", action="store_true", help="do not block the room (it may be joined again)")
    p.add_argument("--no-purge", action="store_true", help="keep the room's stored events")

    p = add_command(
        sub, "purge-history", "delete a room's history before a point",
        "Delete a room's non-state events before an event or a date (state stays).",
    )
    p.add_argument("room_id")
    p.add_argument("--before", required=True, help="an event id, an ISO date/time (UTC unless it says), or ms")
    p.add_argument("--local", action="store_true", help="also delete events sent by local users (else remote only)")


async def run_admin_command(config: Config, args: argparse.Namespace) -> int:
    async with cli_services(config) as services:
        return await _dispatch(services, args)


async def _dispatch(services: Services, args: argparse.Namespace) -> int:
    from .services.admin.users import UserChange

    if args.command == "user-list":
        users, total = await services.user_admin.list_users(0, 1_000_000, args.name, args.deactivated)
        for u in users:
            flags = ",".join(f for f, on in (("admin", u.is_admin), ("deactivated", u.deactivated)) if on)
            print(f"{u.user_id}\t{u.displayname or ''}\t{flags}")
        print(f"{total} users")
        return 0
    if args.command == "user-modify":
        if args.erase and not args.deactivate:
            raise ConfigError("--erase goes with --deactivate")
        change = UserChange(password=args.password, admin=args.admin, deactivated=True if args.deactivate else None,
                            erase=args.erase)
        user, created = await services.user_admin.put_user(args.user_id, change)
        state = "deactivated" if user.deactivated else ("admin" if user.is_admin else "user")
        print(f"{'created' if created else 'changed'} {user.user_id} ({state})")
        return 0
    if args.command == "room-list":
        rows, total = await services.room_admin.list_rooms(0, 1_000_000, args.search)
        for r in rows:
            print(f"{r.room_id}\t{r.joined_members}\t{r.state.get('m.room.name', {}).get('name', '')}")
        print(f"{total} rooms")
        return 0
    return await _room_job(services, args)


async def _room_job(services: Services, args: argparse.Namespace) -> int:
    from .services.accounts import Requester

    admin = services.room_admin
    if args.command == "room-delete":
        job_id = await admin.delete_room(Requester(CLI_ADMIN, "", True, ""), args.room_id,
                                         block=not args.no_block, purge=not args.no_purge)
    else:
        before = args.before
        event_id = before if before.startswith("$") else None
        job_id = await admin.purge_history(args.room_id, event_id=event_id,
                                           before_ts=None if event_id else parse_time_ms(before, EXPECTED_BEFORE),
                                           delete_local_events=args.local)
    # run it here; a running server may take it first, then we watch
    worker = asyncio.create_task(services.jobs.run_pending())
    try:
        job = await _watch(lambda: admin.jobs.get(job_id))
    finally:
        await worker
    if job.status != "complete":
        print(f"{args.command} {args.room_id} failed: {job.error}")
        return 1
    r = job.result
    if args.command == "room-delete":
        print(f"deleted {args.room_id}: {len(r.get('kicked_users', []))} users made to leave, "
              f"aliases removed: {', '.join(r.get('local_aliases', [])) or 'none'}, "
              f"{r.get('deleted_events', 0)} events purged")
    else:
        print(f"purged {r.get('deleted_events', 0)} events from {args.room_id}")
    return 0


async def _watch(read: Callable[[], Awaitable[Any]]) -> Any:
    """A progress bar fed from the job's stored state until it finishes."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns) as bar:
        task = bar.add_task("starting", total=None)
        while True:
            job = await read()
            r = job.result
            if job.status == "shutting_down":
                bar.update(task, description="members leaving", completed=len(r.get("kicked_users", [])),
                           total=r.get("members"))
            elif job.status in ("purging", "active"):
                bar.update(task, description="deleting events", completed=r.get("deleted_events", 0),
                           total=r.get("total_events"))
            if job.status in ("complete", "failed"):
                bar.update(task, description=job.status, completed=r.get("deleted_events", 0),
                           total=r.get("total_events") or r.get("deleted_events", 0) or 1)
                return job
            await asyncio.sleep(0.2)
