"""API key settings and checks (``core.auth``, ``DIP_API_KEYS``), and binding without keys (``dip api/serve``)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from core.auth import OPEN_CALLER, Unauthorized, authenticate, fingerprint, key_digest, parse_key_entries
from core.config import Settings
from core.process import free_port
from stack.cli import main
from stack.supervisor import access_line, is_loopback, open_bind_refusal

ALICE = "alice-key-5f0c1d2e3b4a69788796"
BOB = "bob-key-0a1b2c3d4e5f60718293"
BOB_DIGEST = "sha256:" + hashlib.sha256(BOB.encode()).hexdigest()
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("value", [
    f'["{ALICE}", "{BOB_DIGEST}"]', f"{ALICE},{BOB_DIGEST}", f" {ALICE} , {BOB_DIGEST},",
    [ALICE, "SHA256:" + BOB_DIGEST.removeprefix("sha256:").upper()], f"{ALICE},{ALICE},{BOB_DIGEST}",
])
def test_key_settings_are_read_as_json_or_comma_separated_and_kept_as_digests(value: object) -> None:
    assert parse_key_entries(value, setting="DIP_API_KEYS") == (key_digest(ALICE), BOB_DIGEST)


def test_settings_read_keys_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIP_API_KEYS", f"{ALICE},{BOB_DIGEST}")
    monkeypatch.setenv("DIP_ADMIN_KEYS", f'["{BOB}"]')
    settings = Settings()
    assert settings.api_keys == (key_digest(ALICE), BOB_DIGEST) and settings.admin_keys == (BOB_DIGEST,)
    assert settings.auth_enabled and ALICE not in repr(settings)
    assert Settings.model_validate(settings.model_dump()).api_keys == settings.api_keys  # digests stay digests
    monkeypatch.setenv("DIP_API_KEYS", "")
    monkeypatch.setenv("DIP_ADMIN_KEYS", "")
    assert Settings().api_keys == () and not Settings().auth_enabled


@pytest.mark.parametrize("value, words", [
    ("short-key", ["entry 1", "16"]),
    (f"{ALICE},with space in it here", ["entry 2"]),
    ("sha256:abc", ["entry 1", "64 hex"]),
    (f"sha256:{'g' * 64}", ["64 hex"]),
    ('["unclosed', ["JSON"]),
    (f'["{ALICE}", 3]', ["entry 2", "int"]),
    ('{"a": 1}', ["entry 1"]),
])
def test_bad_key_settings_are_refused_without_echoing_the_key(value: str, words: list[str]) -> None:
    with pytest.raises(ValidationError) as error:
        Settings(api_keys=value)
    message = str(error.value)
    assert all(word in message for word in words), message
    for secret in ("short-key", "with space in it here", "unclosed"):
        assert secret not in message


def test_authenticate() -> None:
    keys = {"api_keys": (key_digest(ALICE),), "admin_keys": (BOB_DIGEST,)}
    alice = authenticate(f"Bearer {ALICE}", **keys)
    assert alice.owner == fingerprint(key_digest(ALICE)) and not alice.admin and ALICE not in alice.owner
    assert authenticate(f"bearer   {BOB} ", **keys).admin
    assert authenticate(None, api_keys=(), admin_keys=()) is OPEN_CALLER
    for header in (None, "", "Bearer", f"Basic {ALICE}", f"Bearer {ALICE}x", f"Bearer {ALICE[:-1]}", ALICE):
        with pytest.raises(Unauthorized) as error:
            authenticate(header, **keys)
        assert ALICE not in str(error.value)


def test_a_job_owner_is_seen_by_its_key_and_admins_only() -> None:
    keys = {"api_keys": (key_digest(ALICE), key_digest(BOB)), "admin_keys": (key_digest("admin-key-0123456789"),)}
    alice, bob = authenticate(f"Bearer {ALICE}", **keys), authenticate(f"Bearer {BOB}", **keys)
    admin = authenticate("Bearer admin-key-0123456789", **keys)
    assert alice.can_see(alice.owner) and not alice.can_see(bob.owner) and not bob.can_see(alice.owner)
    assert admin.can_see(alice.owner) and OPEN_CALLER.can_see(alice.owner)


def test_job_time_limit_defaults_to_the_soft_limit_and_cannot_pass_it() -> None:
    assert Settings().job_time_limit_s == Settings().soft_time_limit_s
    assert Settings(max_job_seconds=60).job_time_limit_s == 60
    with pytest.raises(ValidationError, match="at most soft_time_limit_s"):
        Settings(max_job_seconds=Settings().soft_time_limit_s + 1)


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("127.3.2.1", True), ("localhost", True),
                                            ("::1", True), ("[::1]", True), ("0.0.0.0", False), ("::", False),
                                            ("192.168.1.5", False), ("example.com", False)])
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_without_keys_only_loopback_unless_allowed_open() -> None:
    open_settings = Settings(api_keys="", admin_keys="")
    assert open_bind_refusal(open_settings, "127.0.0.1") is None
    refusal = open_bind_refusal(open_settings, "0.0.0.0")
    assert refusal and "DIP_API_KEYS" in refusal and "DIP_ALLOW_OPEN" in refusal
    assert open_bind_refusal(Settings(api_keys=ALICE), "0.0.0.0") is None
    assert open_bind_refusal(Settings(allow_open=True), "0.0.0.0") is None
    assert "open" in access_line(open_settings, "127.0.0.1") and "loopback" in access_line(open_settings, "127.0.0.1")
    assert "anyone who can reach 0.0.0.0" in access_line(Settings(allow_open=True), "0.0.0.0")
    assert "API key required" in access_line(Settings(api_keys=ALICE), "0.0.0.0")


@pytest.mark.parametrize("command", ["api", "serve"])
def test_dip_refuses_to_listen_openly_without_keys(command: str, monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("DIP_API_KEYS", "DIP_ADMIN_KEYS", "DIP_ALLOW_OPEN", "DIP_REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DIP_VAR_DIR", str(tmp_path / "var"))
    from core.config import get_settings

    get_settings.cache_clear()
    try:
        assert main([command, "--host", "0.0.0.0", "--port", str(free_port())]) == 2
    finally:
        get_settings.cache_clear()
    assert "refusing to listen" in capsys.readouterr().err
    assert not (tmp_path / "var").exists()  # refused before starting anything


def test_dip_api_says_at_start_that_it_is_open(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIP_")}
    env.update(PYTHONPATH=str(REPO_ROOT), DIP_REDIS_URL="redis://127.0.0.1:1/0", DIP_RESULTS_DIR=str(tmp_path))
    process = subprocess.Popen([sys.executable, "-m", "stack.cli", "api", "--port", str(free_port())],
                               cwd=REPO_ROOT, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        first = process.stderr.readline() if process.stderr else ""
    finally:
        process.terminate()
        process.wait(15)
    assert first.startswith("dip api: open: no API keys configured") and "unauthenticated" in first
