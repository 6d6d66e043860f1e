#!/usr/bin/env python3
"""Run the imgstream local stack: ``up``, ``down``, ``status``, ``logs``, ``with-stack -- CMD``.

Every component is a real server started as a local process (listed in ``stack.py``, each one
described in its module of ``components/``), tracked by pid file under ``.stack/run`` and stopped
by that pid, never by name. Waits are polls with deadlines; a component that does not come up is
named with the tail of its log.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import procs  # noqa: E402
from component import Component, Context, Paths  # noqa: E402
from stack import BOOTSTRAP_HOOKS, BY_NAME, COMPONENTS, STOP_HOOKS  # noqa: E402

POLL_INTERVAL = 1.0
#: Lock file (under .stack/run) that serialises `up` runs.
UP_LOCK = "stack-up.lock"

# Client libraries log every refused connection while a server is still starting; the poll
# loop reports the reason itself.
for _noisy in ("aiokafka", "kafka", "cassandra"):
    logging.getLogger(_noisy).setLevel(logging.CRITICAL)


def _out(msg: str) -> None:
    print(msg, flush=True)


class Stack:
    def __init__(self, root: Path = ROOT) -> None:
        self.paths = Paths.for_repo(root)
        self.pids = procs.PidFiles(self.paths.run)
        self.ctx = Context.load(self.paths)

    # --- up -------------------------------------------------------------------------------------
    def port_conflicts(self, components: list[Component]) -> list[str]:
        problems = []
        for comp in components:
            if self.pids.running(comp.name):
                continue
            for port in comp.ports:
                holder = procs.port_holder(port)
                if holder:
                    problems.append(f"port {port} needed by {comp.name} is taken by {holder}")
        return problems

    async def _bring_up(self, comp: Component, ready: dict[str, asyncio.Event], failed: dict[str, str],
                        t0: float) -> None:
        try:
            for dep in comp.depends:
                await ready[dep].wait()
                if dep in failed:
                    failed[comp.name] = f"dependency {dep} failed"
                    return
            tracked = self.pids.running(comp.name)
            if tracked is None:
                await asyncio.to_thread(comp.prepare, self.ctx)
                env = self.ctx.base_env()
                env.update(comp.extra_env(self.ctx))
                tracked = procs.spawn(self.pids, comp.name, comp.argv(self.ctx),
                                      log_path=self.paths.logs / f"{comp.name}.log", env=env,
                                      cwd=self.paths.root if comp.run_as is None else Path("/tmp"),
                                      user=comp.run_as)
                _out(f"  started  {comp.name:<18} pid {tracked.pid}")
            deadline = time.monotonic() + comp.start_timeout
            reason: str | None = "not checked yet"
            while time.monotonic() < deadline:
                if not tracked.alive():
                    failed[comp.name] = "process exited"
                    return
                reason = await comp.health(self.ctx)
                if reason is None:
                    break
                await asyncio.sleep(POLL_INTERVAL)
            else:
                failed[comp.name] = f"not healthy after {comp.start_timeout:.0f}s: {reason}"
                return
            if comp.bootstrap is not None:
                await comp.bootstrap(self.ctx)
            for hook in BOOTSTRAP_HOOKS.get(comp.name, []):
                await hook(self.ctx)
            _out(f"  healthy  {comp.name:<18} after {time.monotonic() - t0:5.1f}s")
        except Exception as exc:  # noqa: BLE001 - reported with the component's name and log
            failed[comp.name] = f"{type(exc).__name__}: {exc}"
        finally:
            ready[comp.name].set()

    def up(self, names: list[str] | None = None) -> int:
        """Start what is not running. Two ``up`` at once (two terminals, a test's recovery and
        an operator) would each start a process per missing component and each submit the
        pipeline: they take turns on a lock instead, and the second finds everything running."""
        from imgstream.filelock import exclusive

        with exclusive(self.paths.run / UP_LOCK, "`make up`"):
            return self._up(names)

    def _up(self, names: list[str] | None = None) -> int:
        components = [c for c in COMPONENTS if not names or c.name in names]
        conflicts = self.port_conflicts(components)
        if conflicts:
            for line in conflicts:
                _out(f"ERROR: {line}")
            _out("nothing was started; free the port(s) or stop that process, then run `make up` again")
            return 2
        self.ctx.write_env_file()
        t0 = time.monotonic()
        _out(f"starting {len(components)} components (state in {self.paths.state})")
        failed: dict[str, str] = {}

        async def run() -> None:
            ready = {c.name: asyncio.Event() for c in COMPONENTS}
            for c in COMPONENTS:
                if c not in components:
                    ready[c.name].set()
            await asyncio.gather(*(self._bring_up(c, ready, failed, t0) for c in components))

        asyncio.run(run())
        if failed:
            for name, reason in failed.items():
                _out(f"\nERROR: {name} did not come up: {reason}")
                _out(f"--- last lines of {self.paths.logs / (name + '.log')} ---")
                _out(procs.log_tail(self.paths.logs / f"{name}.log"))
            _out("\n`make status` shows what is running; `make down` stops it.")
            return 1
        _out(f"stack up in {time.monotonic() - t0:.1f}s\n")
        self.print_table(health=None)
        return 0

    # --- down -----------------------------------------------------------------------------------
    def down(self, names: list[str] | None = None) -> int:
        order = [c for c in reversed(COMPONENTS) if not names or c.name in names]
        for comp in order:
            if self.pids.running(comp.name):
                for hook in STOP_HOOKS.get(comp.name, []):
                    try:
                        hook(self.ctx)
                    except Exception as exc:  # noqa: BLE001 - stopping goes on; the reason is shown
                        _out(f"  WARNING  {comp.name}: pre-stop step {hook.__name__} failed: {exc}")
            sig = signal.SIGINT if comp.name == "postgres" else signal.SIGTERM  # postgres: fast shutdown
            result = procs.stop(self.pids, comp.name, sig=sig, grace=45.0)
            if result != "not running":
                _out(f"  {comp.name:<18} {result}")
        return 0

    # --- status ---------------------------------------------------------------------------------
    def health_all(self) -> dict[str, str | None]:
        async def run() -> dict[str, str | None]:
            results = await asyncio.gather(*(asyncio.wait_for(c.health(self.ctx), 15) for c in COMPONENTS),
                                           return_exceptions=True)
            return {c.name: (r if not isinstance(r, BaseException) else f"check failed: {r!r}")
                    for c, r in zip(COMPONENTS, results)}
        return asyncio.run(run())

    def print_table(self, health: dict[str, str | None] | None) -> None:
        _out(f"{'component':<18} {'pid':>8} {'rss MiB':>8}  {'health':<10} url / detail")
        for comp in COMPONENTS:
            tracked = self.pids.running(comp.name)
            pid = str(tracked.pid) if tracked else "-"
            rss = f"{tracked.rss_mib():.0f}" if tracked and tracked.rss_mib() else "-"
            if health is None:
                state = "up" if tracked else "down"
                detail = comp.url
            else:
                reason = health[comp.name]
                state = "healthy" if reason is None else ("down" if tracked is None else "unhealthy")
                detail = comp.url if reason is None else reason
            _out(f"{comp.name:<18} {pid:>8} {rss:>8}  {state:<10} {detail}")

    def status(self) -> int:
        health = self.health_all()
        self.print_table(health)
        import status_notes  # dead letters, and what else must not stay silent

        for line in status_notes.lines(self.ctx):
            _out(line)
        return 0 if all(v is None for v in health.values()) else 3

    def running_names(self) -> list[str]:
        return [c.name for c in COMPONENTS if self.pids.running(c.name)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stackctl", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_up = sub.add_parser("up", help="start (or restart) what is not running, wait until healthy")
    p_up.add_argument("components", nargs="*", default=[], help=", ".join(BY_NAME))
    p_down = sub.add_parser("down", help="stop what the stack started")
    p_down.add_argument("components", nargs="*", default=[])
    sub.add_parser("status", help="pid, memory and a real health check of each component")
    p_logs = sub.add_parser("logs", help="follow one component's log")
    p_logs.add_argument("component", nargs="?", default="")
    p_with = sub.add_parser("with-stack", help="run CMD with the stack up; stop afterwards only what was started for it")
    p_with.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    stack = Stack()

    if args.cmd == "up":
        return stack.up(args.components or None)
    if args.cmd == "down":
        return stack.down(args.components or None)
    if args.cmd == "status":
        return stack.status()
    if args.cmd == "logs":
        if args.component not in BY_NAME:
            _out(f"usage: make logs C=<component>, one of: {', '.join(BY_NAME)}")
            return 2
        log = stack.paths.logs / f"{args.component}.log"
        os.execvp("tail", ["tail", "-n", "200", "-F", str(log)])
    if args.cmd == "with-stack":
        command = args.command[1:] if args.command[:1] == ["--"] else args.command
        if not command:
            parser.error("with-stack needs a command after --")
        before = set(stack.running_names())
        rc = stack.up()
        try:
            if rc != 0:
                return rc
            env = dict(os.environ)
            env.update(stack.ctx.env_values())
            return subprocess.call(command, env=env)
        finally:
            started = [n for n in stack.running_names() if n not in before]
            if started:
                _out(f"stopping what was started for this run: {', '.join(started)}")
                stack.down(started)
    return 2


if __name__ == "__main__":
    sys.exit(main())
