"""`mscreen keys ...` (API keys), `mscreen db ...` (schema migrations) and `mscreen admin ...`
(maintenance: `reconcile-images`)."""

from __future__ import annotations

from typing import Annotated

import typer

from app.errors import ServiceError
from app.settings import get_settings
from cli.common import UserError, database

keys_cli = typer.Typer(help="API keys (viewer, operator, admin).", no_args_is_help=True)
db_cli = typer.Typer(help="Database schema (Alembic migrations).", no_args_is_help=True)
admin_cli = typer.Typer(help="Maintenance of stored data.", no_args_is_help=True)


@keys_cli.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="Who or what uses the key.")],
    role: Annotated[str, typer.Option(help="viewer, operator or admin.")] = "viewer",
) -> None:
    """Create an API key and print its secret (shown once; only a hash is stored)."""
    from app.auth import issue_key
    from store.db import session_scope
    from store.orm import Role

    try:
        chosen = Role(role)
    except ValueError:
        raise UserError(f"--role must be viewer, operator or admin, not {role!r}") from None
    with database(migrate=True) as factory, session_scope(factory) as session:
        try:
            secret = issue_key(session, name, chosen, actor="cli")
        except ServiceError as exc:
            raise UserError(str(exc)) from exc
    typer.echo(secret)  # after the commit: the key works the moment it is shown


@keys_cli.command("revoke")
def keys_revoke(name: Annotated[str, typer.Argument(help="The key's name.")]) -> None:
    """Revoke an API key."""
    from app.auth import revoke as revoke_api_key
    from store.db import session_scope

    with database() as factory, session_scope(factory) as session:
        try:
            revoke_api_key(session, name, actor="cli")  # a service forgets it within its TTL
        except ServiceError as exc:
            raise UserError(str(exc)) from exc
    typer.echo(f"revoked {name}")


@db_cli.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Argument()] = "head") -> None:
    """Apply migrations up to REVISION (default head)."""
    import migrations

    url = get_settings().resolved_database_url
    migrations.upgrade(url, revision)
    typer.echo(f"database at {revision}: {url}")


@admin_cli.command("reconcile-images")
def reconcile_images(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only list the orphan fields; remove nothing.")
    ] = False,
    scan: Annotated[int | None, typer.Option(help="Only this scan (default: every one).")] = None,
) -> None:
    """Remove image fields on disk that no `images` row records (orphans of a crash between a
    well's write and its commit) from finished scans, and relist their plates. A field with a
    row is never removed; running scans are left alone (their well in flight has no row yet).
    """
    from app.worker import reconcile_finished_scans, reconcile_scan_images
    from store.images import ImageStore

    image_store = ImageStore(get_settings().resolved_image_dir)
    with database() as factory:
        if scan is None:
            found = reconcile_finished_scans(factory, image_store, dry_run=dry_run)
        else:
            orphans = reconcile_scan_images(
                factory, image_store, scan, dry_run=dry_run, only_finished=True
            )
            found = {scan: orphans} if orphans else {}
    for scan_id, orphans in found.items():
        for path in orphans:
            typer.echo(f"scan {scan_id}: {'orphan' if dry_run else 'removed'} {path}")
    total = sum(len(orphans) for orphans in found.values())
    verb = "found" if dry_run else "removed"
    typer.echo(f"{verb} {total} orphan field(s) in {len(found)} scan(s)")
