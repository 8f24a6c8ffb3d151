"""The operator's commands behind `ava db`, `ava tenant` and `ava key`.

Output goes to stdout for piping (`TENANT=$(ava tenant create Acme)`); diagnostics to stderr.
"""

from __future__ import annotations

import argparse
import sys

from control.settings import Settings
from control.stores import Stores, open_stores
from storage import NotFound, NotMigrated, current_revision, display_url, head_revision, upgrade
from storage.keys import SecretKeyError

__all__ = ["run_admin"]


def _out(text: str) -> None:
    print(text)  # noqa: T201 - CLI output


def _err(text: str) -> None:
    print(text, file=sys.stderr)  # noqa: T201 - CLI output


async def _set_limit(settings: Settings, stores: Stores, tenant_id: str, value: str) -> int:
    limit: int | None = None
    if value != "default":
        try:
            limit = int(value)
        except ValueError:
            limit = -1
        if limit < 0:
            _err(f"max calls: a number (0 or more) or 'default', not {value!r}")
            return 2
    try:
        await stores.tenants.set_max_calls(tenant_id, limit)
    except NotFound as exc:
        _err(str(exc))
        return 1
    effective = settings.tenant_max_calls if limit is None else limit
    _err(f"tenant {tenant_id}: at most {effective} concurrent calls")
    return 0


async def run_admin(settings: Settings, args: argparse.Namespace) -> int:
    url = settings.resolved_database_url()
    if args.command == "db":
        if args.action == "upgrade":
            # The server's key: a database set up with another one is refused (SecretKeyError).
            try:
                server_key = settings.server_key()
                await upgrade(url, secret_key=server_key.value, key_source=server_key.source)
            except SecretKeyError as exc:
                _err(str(exc))
                return 1
            _err(f"database at {display_url(url)} is at revision {head_revision()}")
        else:
            _out(await current_revision(url) or "(not migrated)")
        return 0
    try:
        stores = await open_stores(settings)
    except (NotMigrated, SecretKeyError) as exc:
        # A key the database was not set up with would print API keys that always answer 401.
        _err(str(exc))
        return 1
    try:
        if args.command == "tenant":
            if args.action == "create":
                _out((await stores.tenants.create_tenant(args.name)).id)
            elif args.action == "set-limit":
                return await _set_limit(settings, stores, args.tenant, args.max_calls)
            else:
                for tenant in await stores.tenants.list_tenants():
                    _out(f"{tenant.id}\t{tenant.name}\t{tenant.created_at.isoformat()}")
            return 0
        if args.action == "create":
            try:
                created = await stores.tenants.create_api_key(args.tenant, args.name)
            except NotFound as exc:
                _err(str(exc))
                return 1
            _err(f"key {created.key.id}: shown once, store it now")
            _out(created.plaintext)
        elif args.action == "revoke":
            if not await stores.tenants.revoke_key(args.tenant, args.key_id):
                _err(f"tenant {args.tenant} has no active key {args.key_id}")
                return 1
            _err(f"key {args.key_id} revoked")
        else:
            for key in await stores.tenants.list_keys(args.tenant):
                state = "revoked" if key.revoked_at else "active"
                _out(f"{key.id}\t{key.hint}\t{key.name}\t{state}")
        return 0
    finally:
        await stores.close()
