"""`meshplane registry migrate --from sqlite:PATH --to postgresql://…`: moves a one-machine registry
onto the shared PostgreSQL store.

Owns the copy's rules: every registration of the source is written to the target (in batches, each
acknowledged only after COMMIT); a target that already holds registrations is refused unless
`--merge` (then a device in both gets the source's registration), except when it holds exactly
the source's registrations, as after an earlier run: then nothing is done, so a re-run is
harmless. Each copied lease gets one TTL from the copy (the target's clock decides lease ends; a
device could not renew while its registry was being moved). Must not run while a `meshplane serve`
uses the SQLite file: the file's single-writer lock refuses it with the reason.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from meshplane.registry_api.options import store_url

# Registrations per transaction.
_BATCH = 1000


def add_registry_command(commands: Any) -> None:
    registry = commands.add_parser("registry", help="manage the edge registry's store")
    actions = registry.add_subparsers(dest="action", required=True)
    migrate = actions.add_parser(
        "migrate",
        help="copy every registration of a SQLite registry into a PostgreSQL one (docs/edge.md)",
    )
    migrate.add_argument("--from", dest="source", required=True, metavar="sqlite:PATH", help="the SQLite registry")
    migrate.add_argument(
        "--to", dest="target", required=True, type=store_url, metavar="postgresql://…", help="the shared store"
    )
    migrate.add_argument(
        "--password-file", type=Path, help="file holding the target's password (else PGPASSWORD or ~/.pgpass)"
    )
    migrate.add_argument(
        "--merge",
        action="store_true",
        help="add to a target that already holds registrations (a device in both: the source's wins)",
    )


def registry_command(args: argparse.Namespace) -> int:
    """Exit status 0 when copied (or already copied), 1 when refused or failed (the reason on stderr)."""
    from meshplane.discovery.registry.store import StoreError

    try:
        path, password = _inputs(args.source, args.password_file)
        message = asyncio.run(_migrate(path, args.target, password, merge=args.merge))
    except (StoreError, MigrationRefused) as error:
        print(f"meshplane registry migrate: {error}", file=sys.stderr)
        return 1
    print(message)
    return 0


class MigrationRefused(Exception):
    """The copy would change what the operator did not ask to change."""


def _inputs(source: str, password_file: Path | None) -> tuple[Path, str | None]:
    """The SQLite file `--from` names and the password `--password-file` holds (None without one)."""
    if not source.startswith("sqlite:"):
        raise MigrationRefused(f"--from {source[:80]!r}: expected sqlite:PATH")
    path = Path(source.removeprefix("sqlite:"))
    if not path.is_file():
        raise MigrationRefused(f"--from {source}: {path} does not exist or is not a file")
    if password_file is None:
        return path, None
    try:
        return path, password_file.read_text().rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as error:
        raise MigrationRefused(f"--password-file {password_file}: {error}") from None


async def _migrate(path: Path, target: str, password: str | None, *, merge: bool) -> str:
    import psycopg
    from psycopg_pool import PoolTimeout

    from meshplane.discovery.registry.store import Put, SqliteStore, StoreError
    from meshplane.discovery.registry.store_postgres import PostgresSettings, PostgresStore, redacted

    old = SqliteStore(path)
    new = PostgresStore(PostgresSettings(target, password=password))
    try:
        rows = await old.load()
        present = await new.load()
        shown = redacted(target)
        if present and not merge:
            if {_kept(row) for row in present} == {_kept(row) for row in rows}:
                return f"{shown} already holds the {len(rows)} registrations of {path}: nothing to do"
            raise MigrationRefused(
                f"{shown} already holds {len(present)} registrations: give --merge to add those of {path}"
                " to them (a device in both gets the source's registration)"
            )
        try:
            for start in range(0, len(rows), _BATCH):
                await new.write([Put(row) for row in rows[start : start + _BATCH]])
        except (psycopg.Error, PoolTimeout, OSError) as error:  # the batches committed before it are in
            raise StoreError(f"{shown}: copying failed part way ({error}); run again with --merge") from None
        return f"copied {len(rows)} registrations from {path} to {shown}"
    finally:
        await old.close()
        await new.close()


def _kept(row: Any) -> tuple[object, ...]:
    """What a copy keeps of a registration (not its lease end: the target sets that)."""
    return (row.device, row.lease_id, row.principal, row.ttl, row.registered_at, row.certificate)
