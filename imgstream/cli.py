"""The ``imgstream`` command line.

Commands register themselves with :func:`command`; more can be added without editing this file
through the ``imgstream.commands`` entry-point group: each entry point names a callable that
receives the ``argparse`` sub-parsers object and adds its commands, e.g. in ``setup.cfg``::

    [options.entry_points]
    imgstream.commands =
        stack = local_stack.cli:register

A command's parser sets ``handler`` (``args -> exit status``) with ``set_defaults``.

Built in: ``imgstream token create|rotate|retire|revoke|keys|verify|init`` and
``imgstream synthetic purge`` (delete what tests and benchmarks wrote, :mod:`imgstream.ops.synthetic`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import datetime, timezone
from importlib.metadata import entry_points
from pathlib import Path
from typing import Callable, Mapping, Sequence

from imgstream.domain.errors import Unauthorized
from imgstream.domain.producers import SYNTHETIC_PREFIX, is_synthetic
from imgstream.domain.timefmt import format_seconds
from imgstream.domain.tokens import (
    DEFAULT_TTL,
    KEYS_FILE_ENV,
    ROLE_ANALYST,
    ROLE_PRODUCER,
    KeyRing,
    ensure_key_file,
    keys_file_from_env,
    parse_ttl,
)

Handler = Callable[[argparse.Namespace], int]
Configure = Callable[[argparse.ArgumentParser, Mapping[str, str]], None]

#: Entry-point group through which other packages (the local stack, jobs) add commands.
ENTRY_POINT_GROUP = "imgstream.commands"

_COMMANDS: dict[str, tuple[str, Configure]] = {}


def command(name: str, help: str) -> Callable[[Configure], Configure]:
    """Register a top-level command: ``configure(parser, env)`` adds its arguments and handler."""

    def register(configure: Configure) -> Configure:
        if name in _COMMANDS:
            raise ValueError(f"command {name!r} registered twice")
        _COMMANDS[name] = (help, configure)
        return configure

    return register


def build_parser(env: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    """The full parser: built-in commands plus those contributed through entry points."""
    env = os.environ if env is None else env
    parser = argparse.ArgumentParser(prog="imgstream", description="imgstream: a streaming image platform")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (help_text, configure) in sorted(_COMMANDS.items()):
        configure(sub.add_parser(name, help=help_text, description=help_text), env)
    for plugin in entry_points(group=ENTRY_POINT_GROUP):
        plugin.load()(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns (and, as a console script, exits with) its status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return handler(args)
    except (ValueError, OSError) as exc:
        print(f"imgstream {args.command}: error: {exc}", file=sys.stderr)
        return 1


# --- imgstream token ... -----------------------------------------------------------------------



def _token_create(args: argparse.Namespace) -> int:
    role, name = (ROLE_PRODUCER, args.producer) if args.producer else (ROLE_ANALYST, args.analyst)
    if role == ROLE_PRODUCER and is_synthetic(name) and not args.synthetic:
        raise ValueError(f"producer names starting with {SYNTHETIC_PREFIX!r} are reserved for tests and "
                         f"benchmarks (their data is hidden from analytics and the stats API, and deleted "
                         f"after each run): choose another name")
    ring = ensure_key_file(args.keys_file)
    ttl = parse_ttl(args.ttl) if args.ttl else DEFAULT_TTL
    token = ring.issue(name, role, ttl=ttl)
    principal = ring.verify(token)
    print(f"{role} token {principal.token_id} for {name!r}, signed by key {ring.active}, "
          f"expires {format_seconds(principal.expires_at)}", file=sys.stderr)
    print(token)  # the only line on stdout: TOKEN=$(imgstream token create --producer x)
    return 0


def _token_rotate(args: argparse.Namespace) -> int:
    ring = ensure_key_file(args.keys_file)
    rotated = ring.rotated()
    if args.retire_previous:
        for kid in ring.key_ids:
            rotated = rotated.retired(kid)
    rotated.save(args.keys_file)
    kept = [k for k in rotated.key_ids if k != rotated.active]
    print(f"new active key {rotated.active}; still verifying: {', '.join(kept) or 'nothing else'}", file=sys.stderr)
    print(rotated.active)
    return 0


def _token_retire(args: argparse.Namespace) -> int:
    ring = KeyRing.load(args.keys_file)
    ring.retired(args.kid).save(args.keys_file)
    print(f"retired {args.kid}: tokens it signed no longer verify", file=sys.stderr)
    return 0


def _token_revoke(args: argparse.Namespace) -> int:
    ring = KeyRing.load(args.keys_file)
    try:
        ring.with_revoked(args.token_id).save(args.keys_file)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"revoked token {args.token_id}: services refuse it within a second (they re-read the key file)",
          file=sys.stderr)
    return 0


def _token_keys(args: argparse.Namespace) -> int:
    ring = KeyRing.load(args.keys_file)
    for kid in ring.key_ids:
        key = ring.key(kid)
        assert key is not None
        print(f"{kid}\t{key.created_at}\t{'active' if kid == ring.active else 'verify-only'}")
    return 0


def _token_verify(args: argparse.Namespace) -> int:
    token = sys.stdin.readline().strip() if args.token == "-" else args.token
    try:
        principal = KeyRing.load(args.keys_file).verify(token)
    except Unauthorized as exc:
        print(f"invalid: {exc.message}", file=sys.stderr)
        return 1
    print(json.dumps({"name": principal.name, "role": principal.role, "key_id": principal.key_id,
                      "token_id": principal.token_id, "expires_at": format_seconds(principal.expires_at)}))
    return 0


def _token_init(args: argparse.Namespace) -> int:
    existed = Path(args.keys_file).exists()
    ring = ensure_key_file(args.keys_file)
    print(f"{'using existing' if existed else 'created'} key file {args.keys_file} (active key {ring.active})",
          file=sys.stderr)
    return 0


@command("token", help="create, verify and rotate bearer tokens")
def _configure_token(parser: argparse.ArgumentParser, env: Mapping[str, str]) -> None:
    keys_file = keys_file_from_env(env)

    sub = parser.add_subparsers(dest="token_command", metavar="ACTION", required=True)

    def action(name: str, help_text: str, handler: Handler) -> argparse.ArgumentParser:
        """One ``token`` action: its parser, the shared ``--keys-file`` option and its handler."""
        action_parser = sub.add_parser(name, help=help_text)
        action_parser.add_argument("--keys-file", type=Path, default=keys_file,
                                   help=f"signing key file (default ${KEYS_FILE_ENV} or {keys_file})")
        action_parser.set_defaults(handler=handler)
        return action_parser

    create = action("create", "print a new token (the last line of stdout)", _token_create)
    who = create.add_mutually_exclusive_group(required=True)
    who.add_argument("--producer", metavar="NAME", help="a token that may upload as NAME and read NAME's stats")
    who.add_argument("--analyst", metavar="NAME", help="a token that may read every producer's statistics")
    create.add_argument("--ttl", help=f"lifetime, e.g. 3600, 12h, 30d (default {DEFAULT_TTL.days}d)")
    # Test-only (hidden): allow a reserved synthetic producer name. Tests normally sign their
    # tokens with KeyRing directly; this is for a shell script that exercises the CLI itself.
    create.add_argument("--synthetic", action="store_true", help=argparse.SUPPRESS)
    action("rotate", "make a new signing key active; old keys keep verifying", _token_rotate).add_argument(
        "--retire-previous", action="store_true", help="also drop every previous key: all existing tokens stop working")
    action("retire", "drop a (non-active) key: the tokens it signed stop working", _token_retire).add_argument("kid")
    action("revoke", "refuse one token from now on, by its id (see `token verify`)", _token_revoke).add_argument(
        "token_id", help="the token's id (16 hex digits)")
    action("keys", "list key ids (never secrets)", _token_keys)
    action("verify", "check a token and print whom it speaks for", _token_verify).add_argument(
        "token", help="the token, or - to read it from stdin")
    action("init", "create the key file with a random key if it does not exist", _token_init)


# --- imgstream synthetic ... -------------------------------------------------------------------


def _synthetic_purge(args: argparse.Namespace) -> int:
    import asyncio

    from imgstream.config import StackConfig, load_env_file
    from imgstream.ops.synthetic import purge_stack

    env_file = Path(os.environ.get("IMGSTREAM_STACK_DIR") or ".stack") / "env"
    env = {**(load_env_file(env_file) if env_file.exists() else {}), **os.environ}
    report = asyncio.run(purge_stack(StackConfig.from_env(env), dry_run=args.dry_run, legacy=args.legacy))
    print(f"{'would delete' if args.dry_run else 'deleted'}: {report}", file=sys.stderr)
    for producer in sorted(report.producers):
        print(producer)
    return 0


@command("synthetic", help=f"the data of reserved {SYNTHETIC_PREFIX}* producers (tests, benchmarks)")
def _configure_synthetic(parser: argparse.ArgumentParser, env: Mapping[str, str]) -> None:
    sub = parser.add_subparsers(dest="synthetic_command", metavar="ACTION", required=True)
    purge = sub.add_parser("purge", help="delete every row of synthetic producers from Cassandra (CDC deletes "
                                         "them in PostgreSQL); prints the producers found")
    purge.add_argument("--dry-run", action="store_true", help="only count and list")
    purge.add_argument("--legacy", action="store_true",
                       help="also the names tests used before the prefix (it1a2b3c4d-alice, chaos-..., e2e-stats-...): "
                            "once, on a stack that ran an older make test/bench; never while such tests run")
    purge.set_defaults(handler=_synthetic_purge)


if __name__ == "__main__":
    sys.exit(main())
