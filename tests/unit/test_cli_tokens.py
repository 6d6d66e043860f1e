"""``imgstream token ...``: create, verify, rotate, retire; the token is the last line of stdout."""

from __future__ import annotations

import argparse
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from imgstream import cli
from imgstream.domain.tokens import KeyRing

REPO = Path(__file__).resolve().parents[2]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = cli.main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_create_prints_a_verifiable_token_as_last_stdout_line(tmp_path: Path, capsys) -> None:
    keys = tmp_path / "keys.json"
    status, out, err = run(capsys, "token", "create", "--producer", "cam-01", "--keys-file", str(keys))
    assert status == 0
    token = out.strip().splitlines()[-1]
    principal = KeyRing.load(keys).verify(token)
    assert (principal.name, principal.role) == ("cam-01", "producer")
    assert "cam-01" in err and token not in err
    assert stat.S_IMODE(keys.stat().st_mode) == 0o600


def test_analyst_token_and_ttl(tmp_path: Path, capsys) -> None:
    keys = str(tmp_path / "keys.json")
    status, out, _ = run(capsys, "token", "create", "--analyst", "ana", "--ttl", "2h", "--keys-file", keys)
    assert status == 0
    principal = KeyRing.load(Path(keys)).verify(out.splitlines()[-1])
    assert principal.is_analyst
    import time

    assert 7100 < principal.expires_at - time.time() <= 7200


def test_rotate_keeps_old_tokens_and_retire_kills_them(tmp_path: Path, capsys) -> None:
    keys = str(tmp_path / "keys.json")
    _, out, _ = run(capsys, "token", "create", "--producer", "cam", "--keys-file", keys)
    old = out.splitlines()[-1]
    old_kid = old.split(".")[1]
    status, out, _ = run(capsys, "token", "rotate", "--keys-file", keys)
    assert status == 0
    new_kid = out.splitlines()[-1]
    assert new_kid != old_kid
    assert run(capsys, "token", "verify", old, "--keys-file", keys)[0] == 0
    _, out, _ = run(capsys, "token", "create", "--producer", "cam", "--keys-file", keys)
    assert out.splitlines()[-1].split(".")[1] == new_kid
    _, out, _ = run(capsys, "token", "keys", "--keys-file", keys)
    assert f"{old_kid}\t" in out and f"{new_kid}\t" in out and "active" in out
    assert run(capsys, "token", "retire", new_kid, "--keys-file", keys)[0] == 1  # active: refused
    assert run(capsys, "token", "retire", old_kid, "--keys-file", keys)[0] == 0
    status, _, err = run(capsys, "token", "verify", old, "--keys-file", keys)
    assert status == 1 and "invalid" in err


def test_rotate_retire_previous_invalidates_everything(tmp_path: Path, capsys) -> None:
    keys = str(tmp_path / "keys.json")
    _, out, _ = run(capsys, "token", "create", "--producer", "cam", "--keys-file", keys)
    run(capsys, "token", "rotate", "--retire-previous", "--keys-file", keys)
    assert run(capsys, "token", "verify", out.splitlines()[-1], "--keys-file", keys)[0] == 1
    assert len(KeyRing.load(Path(keys)).key_ids) == 1


def test_bad_input_exits_non_zero_with_a_message(tmp_path: Path, capsys) -> None:
    keys = str(tmp_path / "keys.json")
    status, out, err = run(capsys, "token", "create", "--producer", "no spaces", "--keys-file", keys)
    assert status == 1 and out == "" and "invalid name" in err
    status, _, err = run(capsys, "token", "create", "--producer", "cam", "--ttl", "forever", "--keys-file", keys)
    assert status == 1 and "invalid duration" in err
    with pytest.raises(SystemExit):
        cli.main(["token", "create", "--producer", "a", "--analyst", "b"])  # mutually exclusive


def test_keys_file_comes_from_the_environment(tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    keys = tmp_path / "from-env.json"
    monkeypatch.setenv("IMGSTREAM_TOKEN_KEYS_FILE", str(keys))
    status, out, _ = run(capsys, "token", "create", "--producer", "cam")
    assert status == 0 and KeyRing.load(keys).verify(out.splitlines()[-1]).name == "cam"


def test_commands_can_be_added_through_entry_points(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    def register(sub: Any) -> None:
        parser = sub.add_parser("stack", help="the local stack")
        parser.set_defaults(handler=lambda args: print("stack ran") or 0)

    class EntryPoint:
        def load(self) -> Any:
            return register

    monkeypatch.setattr(cli, "entry_points", lambda group: [EntryPoint()] if group == cli.ENTRY_POINT_GROUP else [])
    assert cli.main(["stack"]) == 0
    assert "stack ran" in capsys.readouterr().out


def test_console_process_prints_token_last(tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    env = {**os.environ, "IMGSTREAM_TOKEN_KEYS_FILE": str(keys), "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "imgstream.cli", "token", "create", "--producer", "cam"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60, check=True)
    assert KeyRing.load(keys).verify(done.stdout.strip().splitlines()[-1]).name == "cam"


def test_revoke_refuses_one_token_and_keeps_the_others(tmp_path: Path, capsys) -> None:
    import json

    keys = str(tmp_path / "keys.json")
    _, out, _ = run(capsys, "token", "create", "--producer", "cam", "--keys-file", keys)
    gone = out.splitlines()[-1]
    _, out, _ = run(capsys, "token", "create", "--producer", "cam", "--keys-file", keys)
    kept = out.splitlines()[-1]
    status, out, _ = run(capsys, "token", "verify", gone, "--keys-file", keys)
    token_id = json.loads(out)["token_id"]
    assert status == 0 and len(token_id) == 16
    assert run(capsys, "token", "revoke", token_id, "--keys-file", keys)[0] == 0
    status, _, err = run(capsys, "token", "verify", gone, "--keys-file", keys)
    assert status == 1 and "revoked" in err
    assert run(capsys, "token", "verify", kept, "--keys-file", keys)[0] == 0
    status, _, err = run(capsys, "token", "revoke", "'; DROP", "--keys-file", keys)
    assert status == 2 and "not a token id" in err


def test_create_refuses_the_reserved_synthetic_prefix(tmp_path: Path, capsys) -> None:
    keys = tmp_path / "keys.json"
    status, out, err = run(capsys, "token", "create", "--producer", "synthetic-alice", "--keys-file", str(keys))
    assert status == 1 and out == ""
    assert "'synthetic-' are reserved for tests and benchmarks" in err
    assert not keys.exists()  # refused before anything was written
    # a name that merely contains the word is a normal producer
    status, out, _ = run(capsys, "token", "create", "--producer", "not-synthetic-x", "--keys-file", str(keys))
    assert status == 0 and KeyRing.load(keys).verify(out.strip().splitlines()[-1]).name == "not-synthetic-x"


def test_the_hidden_test_flag_issues_a_synthetic_token(tmp_path: Path, capsys) -> None:
    keys = tmp_path / "keys.json"
    status, out, _ = run(capsys, "token", "create", "--producer", "synthetic-alice", "--synthetic",
                         "--keys-file", str(keys))
    assert status == 0
    assert KeyRing.load(keys).verify(out.strip().splitlines()[-1]).name == "synthetic-alice"
    with pytest.raises(SystemExit):
        cli.main(["token", "create", "--help"])
    shown, _ = capsys.readouterr()
    assert "--producer" in shown and "--synthetic" not in shown  # hidden: for tests only
