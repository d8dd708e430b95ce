"""The outbox relay and its ops CLI.

    python -m outbox_relay run                      relay the outbox to RabbitMQ until SIGTERM
    python -m outbox_relay status                   backlog, oldest due age, last hour, failing rows
    python -m outbox_relay list [filters]           rows, oldest first
    python -m outbox_relay replay FILTERS [--dry-run]   publish rows again, same event ids
    python -m outbox_relay purge [--older-than-days N] [--dry-run]
    python -m outbox_relay redrive (--email ID | --event-id ID | --since/--until) [--state failed|held]
                                    [--dry-run] [--reason TEXT]      send failed or held deliveries again
    python -m outbox_relay dead-letters [--all] [--json]            what the dead-letter queues received
    python -m outbox_relay dead-letters redrive|dismiss --id N [--id N …] [--dry-run]

Filters: --event-id ID (repeatable), --aggregate ID, --type TYPE, --since/--until ISO time,
and for list also --state pending|published|failed and --failing.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from datetime import timedelta
from typing import Any

from core import bootstrap, cli


def _selection(args):
    from core.outbox.selectors import OutboxFilter

    return OutboxFilter(
        event_ids=tuple(args.event_id or ()),
        aggregate_id=args.aggregate,
        event_type=args.type,
        since=args.since,
        until=args.until,
        state=getattr(args, "state", None),
        failing=getattr(args, "failing", False),
    )


def _row(event) -> dict:
    return {
        "id": str(event.id),
        "type": event.type,
        "aggregate": f"{event.aggregatetype}:{event.aggregateid}",
        "created_at": event.created_at.isoformat(),
        "published_at": event.published_at.isoformat() if event.published_at else None,
        "failed_at": event.failed_at.isoformat() if event.failed_at else None,
        "attempts": event.attempts,
        "last_error": event.last_error,
    }


def _print_rows(rows, as_json: bool) -> None:
    if as_json:
        for row in rows:
            print(json.dumps(row))
        return
    print(f"{'id':36}  {'type':18}  {'aggregate':22}  {'created':19}  {'state':9}  attempts  error")
    for row in rows:
        state = "failed" if row["failed_at"] else "published" if row["published_at"] else "pending"
        print(
            f"{row['id']:36}  {row['type']:18}  {row['aggregate']:22}  {row['created_at'][:19]:19}  "
            f"{state:9}  {row['attempts']:8}  {row['last_error'][:60]}"
        )


def command_run(args) -> int:
    from django.conf import settings

    from core.broker import topology_from_settings
    from outbox_relay.publisher import ConfirmingPublisher
    from outbox_relay.relay import RelayConfig, RelayWorker

    config = RelayConfig(
        database=settings.DATABASES["default"],
        broker_url=settings.RABBITMQ_URL,
        notify_channel=settings.OUTBOX_NOTIFY_CHANNEL if settings.OUTBOX_NOTIFY else None,
        batch_size=settings.OUTBOX_BATCH_SIZE,
        poll_interval=settings.OUTBOX_POLL_INTERVAL_MS / 1000,
        gather=settings.OUTBOX_GATHER_MS / 1000,
        gather_busy=settings.OUTBOX_GATHER_BUSY_MS / 1000,
        confirm_timeout=settings.OUTBOX_CONFIRM_TIMEOUT_MS / 1000,
        crash_after_confirm=os.environ.get("OUTBOX_RELAY_TEST_CRASH_AFTER_CONFIRM") == "1",
    )
    return bootstrap.run_worker(
        args,
        lambda health: RelayWorker(
            config, ConfirmingPublisher(url=config.broker_url, topology=topology_from_settings()), health
        ),
    )


def command_status(args) -> int:
    from dataclasses import asdict

    from core.outbox.selectors import outbox_status

    status = asdict(outbox_status())
    if args.json:
        print(json.dumps(status))
    else:
        for key, value in status.items():
            print(f"{key:24} {value}")
    return 0


def command_list(args) -> int:
    from core.outbox.selectors import outbox_event_list

    rows = outbox_event_list(selection=_selection(args))[: args.limit]
    _print_rows([_row(event) for event in rows], args.json)
    return 0


def command_replay(args) -> int:
    from tqdm import tqdm

    from core.errors import ApplicationError
    from core.outbox.services import outbox_replay

    selection = _selection(args)
    try:
        preview = outbox_replay(selection=selection, actor=args.actor, via="cli", dry_run=True)
    except ApplicationError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    print(f"{preview.count} published or failed events match {json.dumps(selection.describe())}")
    _print_rows([_row(event) for event in preview.sample], False)
    if preview.count > len(preview.sample):
        print(f"... and {preview.count - len(preview.sample)} more")
    if args.dry_run or preview.count == 0:
        print("dry run: nothing changed" if args.dry_run else "nothing to replay")
        return 0
    with tqdm(total=preview.count, unit="event", desc="replay", file=sys.stderr) as bar:
        result = outbox_replay(
            selection=selection, actor=args.actor, via="cli", reason=args.reason, progress=bar.update
        )
    assert result.replay is not None  # recorded by every replay but a dry run
    print(f"replayed {result.count} events as replay #{result.replay.pk} by {args.actor}")
    return 0


def command_purge(args) -> int:
    from django.conf import settings
    from tqdm import tqdm

    from core.outbox.services import outbox_purge_published

    days = args.older_than_days if args.older_than_days is not None else settings.OUTBOX_RETENTION_DAYS
    older_than = timedelta(days=days)
    count = outbox_purge_published(older_than=older_than, dry_run=True)
    if args.dry_run:
        print(f"{count} published rows older than {days} days would be deleted (dry run)")
        return 0
    with tqdm(total=count, unit="row", desc="purge", file=sys.stderr) as bar:
        deleted = outbox_purge_published(older_than=older_than, progress=bar.update)
    print(f"deleted {deleted} published rows older than {days} days")
    return 0


def command_redrive(args) -> int:
    from tqdm import tqdm

    from core.deliveries.services import RedriveSelection, deliveries_redrive, deliveries_select
    from core.errors import ApplicationError

    selection = RedriveSelection(
        email_ids=tuple(args.email or ()),
        event_ids=tuple(args.event_id or ()),
        states=tuple(args.state or ("failed", "held")),
        since=args.since,
        until=args.until,
    )
    try:
        preview = deliveries_redrive(selection=selection, actor=args.actor, via="cli", dry_run=True)
    except ApplicationError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    print(
        f"{preview.retried + preview.settled} deliveries match {json.dumps(selection.describe())}: "
        f"{preview.retried} to send again, {preview.settled} held that the provider reported on (to mark sent)"
    )
    for delivery in preview.sample:
        print(f"  email {delivery.email_id:<10} {delivery.recipient:40} {delivery.state:7} {delivery.last_error[:60]}")
    if args.dry_run or not preview.retried + preview.settled:
        print("dry run: nothing changed" if args.dry_run else "nothing to re-drive")
        return 0
    with tqdm(total=deliveries_select(selection).count(), unit="delivery", desc="re-drive", file=sys.stderr) as bar:
        result = deliveries_redrive(
            selection=selection, actor=args.actor, via="cli", reason=args.reason, progress=bar.update
        )
    assert result.redrive is not None  # recorded by every re-drive but a dry run
    print(
        f"re-drive #{result.redrive.pk} by {args.actor}: {result.retried} sent again, {result.settled} marked sent"
        + (f", {result.unavailable} left (their request is gone)" if result.unavailable else "")
    )
    return 0


def command_dead_letters(args) -> int:
    from core.outbox.deadletters import dead_letters_dismiss, dead_letters_redrive
    from core.outbox.models import DeadLetter

    if args.action == "list":
        rows = DeadLetter.objects.all() if args.all else DeadLetter.objects.filter(resolution__in=["parked", "failed"])
        for record in rows[: args.limit]:
            row: dict[str, Any] = {
                "id": record.pk,
                "received_at": record.received_at.isoformat(),
                "queue": record.queue,
                "reason": record.reason,
                "deaths": record.deaths,
                "type": record.type,
                "message_id": record.message_id,
                "email_id": record.email_id,
                "resolution": record.resolution,
                "detail": record.detail,
            }
            print(
                json.dumps(row)
                if args.json
                else f"#{row['id']:<6} {row['received_at'][:19]}  {row['queue']:28} {row['reason']:15} "
                f"{row['type'] or '-':24} email {row['email_id'] or '-':<8} {row['resolution']:9} "
                f"{row['detail'][:60]}"
            )
        return 0
    if not args.id:
        print("error: name the dead letters with --id", file=sys.stderr)
        return 2
    if args.action == "dismiss":
        count = 0 if args.dry_run else dead_letters_dismiss(ids=args.id, actor=args.actor)
        print(f"dismissed {count}" if not args.dry_run else f"dry run: would dismiss {len(args.id)}")
        return 0
    result = dead_letters_redrive(ids=args.id, actor=args.actor, via="cli", reason=args.reason, dry_run=args.dry_run)
    print(f"{'would re-drive' if result.dry_run else 're-drove'} {result.count}")
    for why in result.skipped:
        print(f"  skipped {why}")
    return 0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="python -m outbox_relay", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    verbs = root.add_subparsers(dest="verb", required=True, metavar="VERB")

    run = verbs.add_parser("run", help="relay the outbox to RabbitMQ until SIGTERM")
    bootstrap.add_http_options(run, env="OUTBOX_RELAY", port_note="; 0: none")
    run.set_defaults(func=command_run)

    status = verbs.add_parser("status", help="backlog, oldest due age, published last hour, failing rows")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=command_status)

    def filters(p, *, for_list: bool):
        p.add_argument("--event-id", action="append", type=cli.event_id, metavar="ID", help="repeatable")
        p.add_argument("--aggregate", type=cli.line(64), metavar="ID", help="the aggregate id, e.g. an email id")
        p.add_argument("--type", type=cli.line(64), metavar="TYPE", help="the event type, e.g. email.requested")
        p.add_argument("--since", type=cli.moment, metavar="TIME", help="created at or after (ISO 8601)")
        p.add_argument("--until", type=cli.moment, metavar="TIME", help="created at or before (ISO 8601)")
        if for_list:
            p.add_argument("--state", choices=["pending", "published", "failed"])
            p.add_argument("--failing", action="store_true", help="failed, or pending after an error")

    listing = verbs.add_parser("list", help="outbox rows, oldest first")
    filters(listing, for_list=True)
    listing.add_argument("--limit", type=cli.integer(1, 1_000_000), default=100)
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=command_list)

    replay = verbs.add_parser("replay", help="publish events again with their own ids")
    filters(replay, for_list=False)
    replay.add_argument("--dry-run", action="store_true", help="show what would be replayed")
    replay.add_argument("--reason", type=cli.text(1000), default="", help="recorded with the replay")
    replay.add_argument(
        "--actor",
        type=cli.line(150),
        default=os.environ.get("OPS_ACTOR") or getpass.getuser(),
        help="who replays (default $OPS_ACTOR or the login name)",
    )
    replay.set_defaults(func=command_replay)

    actor = dict(
        type=cli.line(150),
        default=os.environ.get("OPS_ACTOR") or getpass.getuser(),
        help="who does it (default $OPS_ACTOR or the login name)",
    )
    redrive = verbs.add_parser("redrive", help="send failed or held deliveries again")
    redrive.add_argument(
        "--email", action="append", type=cli.integer(1, 2**63 - 1), metavar="ID", help="an email id (repeatable)"
    )
    redrive.add_argument(
        "--event-id", action="append", type=cli.event_id, metavar="ID", help="a request's event id (repeatable)"
    )
    redrive.add_argument("--state", action="append", choices=["failed", "held"], help="default: both")
    redrive.add_argument("--since", type=cli.moment, metavar="TIME", help="last changed at or after (ISO 8601)")
    redrive.add_argument("--until", type=cli.moment, metavar="TIME", help="last changed at or before (ISO 8601)")
    redrive.add_argument("--dry-run", action="store_true", help="show what would go again")
    redrive.add_argument("--reason", type=cli.text(1000), default="", help="recorded with the re-drive")
    redrive.add_argument("--actor", **actor)
    redrive.set_defaults(func=command_redrive)

    dead = verbs.add_parser("dead-letters", help="what the dead-letter queues received: list, re-drive, dismiss")
    dead.add_argument("action", nargs="?", choices=["list", "redrive", "dismiss"], default="list")
    dead.add_argument("--id", action="append", type=cli.integer(1, 2**63 - 1), metavar="N", help="repeatable")
    dead.add_argument("--all", action="store_true", help="list the dealt-with ones too")
    dead.add_argument("--limit", type=cli.integer(1, 1_000_000), default=100)
    dead.add_argument("--json", action="store_true")
    dead.add_argument("--dry-run", action="store_true")
    dead.add_argument("--reason", type=cli.text(1000), default="")
    dead.add_argument("--actor", **actor)
    dead.set_defaults(func=command_dead_letters)

    purge = verbs.add_parser("purge", help="delete published rows older than the retention period")
    purge.add_argument(
        "--older-than-days", type=cli.integer(0, 36_500), default=None, help="default OUTBOX_RETENTION_DAYS"
    )
    purge.add_argument("--dry-run", action="store_true")
    purge.set_defaults(func=command_purge)
    return root


def main(argv: list[str] | None = None) -> int:
    return bootstrap.main(parser, argv, settings_module="outbox_relay.settings")


if __name__ == "__main__":
    sys.exit(main())
