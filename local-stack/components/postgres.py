"""PostgreSQL 15 (Debian's binaries): ``initdb`` once with loopback trust, then the roles, the
database and every ``connectors/postgres/*.sql`` applied once it answers ``SELECT 1``."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from imgstream.adapters.postgres import connect

import health
import procs
from component import PORTS, Component, Context

PG_BIN = Path("/usr/lib/postgresql/15/bin")
PG_USER = "postgres"  # Debian's postgresql package creates it; postgres refuses to run as root
#: SQL applied after the roles exist (idempotent scripts), in order, as the imgstream role.
PG_SCRIPTS_DIR = "connectors/postgres"


def run_as() -> str | None:
    """The user PostgreSQL runs as: ``postgres`` when stackctl runs as root, else the caller."""
    return PG_USER if os.geteuid() == 0 else None


def clear_dead_lock(lock: Path) -> bool:
    """Remove a PostgreSQL lock file (``postmaster.pid``, the socket's ``.s.PGSQL.<port>.lock``)
    if the postmaster it names is a zombie; True if removed.

    PostgreSQL clears the lock files of a postmaster that is gone, but refuses to start while
    that pid still answers ``kill(pid, 0)``, which a SIGKILLed postmaster does until PID 1
    reaps it: the crash matrix's ``make up`` one second after the kill got "lock file ...
    already exists", first for the data folder, then for the socket. A zombie holds no port,
    shared memory or file, so its locks can go; a live postmaster's are never touched."""
    try:
        pid = int(lock.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return False
    if not procs.is_zombie(pid):
        return False
    lock.unlink(missing_ok=True)
    return True


def lock_files(ctx: Context) -> list[Path]:
    """Where a postmaster leaves its lock files: the data folder and the socket folder."""
    return [ctx.paths.data / "postgres" / "postmaster.pid",
            ctx.paths.run / "postgres" / f".s.PGSQL.{PORTS['postgres']}.lock"]


def prepare(ctx: Context) -> None:
    data = ctx.paths.data / "postgres"
    for lock in lock_files(ctx):
        clear_dead_lock(lock)
    sock = ctx.paths.run / "postgres"
    sock.mkdir(parents=True, exist_ok=True)
    user = run_as()
    if user:
        shutil.chown(sock, user)
    if (data / "PG_VERSION").exists():
        return
    data.mkdir(parents=True, exist_ok=True)
    if user:
        shutil.chown(data, user)
    os.chmod(data, 0o700)
    result = subprocess.run(
        [str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
         "--locale=C.UTF-8"],
        capture_output=True, text=True, timeout=300, user=user, cwd="/tmp",
    )
    if result.returncode != 0:
        raise RuntimeError(f"initdb failed:\n{result.stdout}\n{result.stderr}")
    # Loopback trust: the local stack only (the brief's `psql -h 127.0.0.1 -U imgstream imgstream`).
    (data / "pg_hba.conf").write_text(
        "# written by the imgstream local stack: loopback only, trust (never in production)\n"
        "local all all trust\n"
        "host  all all 127.0.0.1/32 trust\n"
        "host  all all ::1/128 trust\n")
    if user:
        shutil.chown(data / "pg_hba.conf", user)


def argv(ctx: Context) -> list[str]:
    return [str(PG_BIN / "postgres"), "-D", str(ctx.paths.data / "postgres"),
            "-c", "listen_addresses=127.0.0.1", "-c", f"port={PORTS['postgres']}",
            "-c", f"unix_socket_directories={ctx.paths.run / 'postgres'}",
            "-c", "shared_buffers=256MB", "-c", "max_connections=200",
            "-c", "logging_collector=off", "-c", "log_min_messages=warning",
            "-c", "wal_level=logical"]


async def bootstrap(ctx: Context) -> None:
    """Roles ``imgstream`` and read-only ``analyst``, database ``imgstream``, grants, scripts."""
    admin = await connect(ctx.pg_admin_dsn, timeout=10)
    try:
        for role, attrs in (("imgstream", "LOGIN"), ("analyst", "LOGIN")):
            exists = await admin.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role)
            if not exists:
                await admin.execute(f'CREATE ROLE "{role}" {attrs}')
        await admin.execute("ALTER ROLE analyst SET default_transaction_read_only = on")
        if not await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = 'imgstream'"):
            await admin.execute('CREATE DATABASE imgstream OWNER imgstream')
    finally:
        await admin.close()
    db = await connect(str(ctx.config.postgres.dsn), timeout=10)
    try:
        await db.execute("""
            CREATE SCHEMA IF NOT EXISTS analytics AUTHORIZATION imgstream;
            GRANT CONNECT ON DATABASE imgstream TO analyst;
            GRANT USAGE ON SCHEMA public, analytics TO analyst;
            GRANT SELECT ON ALL TABLES IN SCHEMA public, analytics TO analyst;
            ALTER DEFAULT PRIVILEGES FOR ROLE imgstream IN SCHEMA public, analytics GRANT SELECT ON TABLES TO analyst;
        """)
        scripts = sorted((ctx.paths.root / PG_SCRIPTS_DIR).glob("*.sql"))
        for script in scripts:
            await db.execute(script.read_text())
    finally:
        await db.close()


async def check(ctx: Context) -> str | None:
    return await health.postgres_server(ctx.pg_admin_dsn)


COMPONENT = Component(
    "postgres", (PORTS["postgres"],), f"postgresql://imgstream@127.0.0.1:{PORTS['postgres']}/imgstream",
    "shared_buffers 256MB", argv, check, prepare, bootstrap, start_timeout=60, run_as=run_as(),
)
