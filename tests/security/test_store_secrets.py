"""Issue 15, finding 8: a store password never reaches a terminal, a log line or an exception.

psycopg reads a password from the URL's user info and from its query string (`?password=`,
`?sslpassword=`); both are shown as '***'. A password with an unescaped '@' (which SQLAlchemy would
split into the host name) is refused with the fix, without echoing the URL."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import traceback
from pathlib import Path

import psycopg
import pytest

from rtlib import config as cfg
from rtlib.errors import RtlibError
from rtlib.runtime import open_store
from rtlib.store import JobStore

SECRET = "Hunter2-query-Secret"
SSL_SECRET = "ssl-Key-Passphrase-77"
AT_PASSWORD = "p@ss-Tail-9z"  # an unescaped '@': SQLAlchemy reads host 'ss-Tail-9z@127.0.0.1'
PIECES = (SECRET, SSL_SECRET, AT_PASSWORD, "ss-Tail-9z")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _query_url() -> str:
    return f"postgresql+psycopg://rtlib@127.0.0.1:{_closed_port()}/rtlib?password={SECRET}&sslpassword={SSL_SECRET}"


def _at_url() -> str:
    return f"postgresql+psycopg://rtlib:{AT_PASSWORD}@127.0.0.1:{_closed_port()}/rtlib"


def _rtlib(tmp_path: Path, *args: str, store_url: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "RTLIB_CONFIG": "", "RTLIB_WORKSPACE": str(tmp_path / "ws"), "RTLIB_STORE_URL": store_url, "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "rtlib.cli", *args], capture_output=True, text=True, env=env, timeout=120)


def _no_secret(text: str) -> None:
    for piece in PIECES:
        assert piece not in text, f"{piece!r} leaked:\n{text}"


def test_config_show_hides_a_query_string_password(tmp_path):
    run = _rtlib(tmp_path, "config", "show", "--json", store_url=_query_url())
    assert run.returncode == 0, run.stderr
    _no_secret(run.stdout + run.stderr)
    assert "password=***" in run.stdout and "sslpassword=***" in run.stdout, run.stdout


def test_agent_unreachable_error_hides_a_query_string_password(tmp_path):
    run = _rtlib(tmp_path, "agent", "--store-wait-s", "0", "--max-seconds", "1", store_url=_query_url())
    assert run.returncode == 2, (run.stdout, run.stderr)
    assert "unreachable" in run.stderr and "password=***" in run.stderr.replace("\n", ""), run.stderr
    _no_secret(run.stdout + run.stderr)


@pytest.mark.parametrize("command", [["status"], ["submit", "noop", "-i", "aps:raw/scan.h5"], ["config", "show"],
                                     ["agent", "--store-wait-s", "0", "--max-seconds", "1"]])  # fmt: skip
def test_an_unescaped_at_in_the_password_is_refused_with_the_fix_and_never_shown(tmp_path, command):
    run = _rtlib(tmp_path, *command, store_url=_at_url())
    out = run.stdout + run.stderr
    assert run.returncode == 2 and "Traceback" not in out, out
    assert "store_url" in out and "%40" in out, out  # which part is malformed, and how to write it
    _no_secret(out)


def test_library_refusals_and_messages_carry_no_password(tmp_path, monkeypatch):
    with pytest.raises(RtlibError) as err:
        JobStore(_at_url())
    assert "%40" in str(err.value)
    _no_secret(str(err.value))
    with pytest.raises(RtlibError) as err:
        open_store(_query_url(), wait_s=0)
    assert "unreachable" in str(err.value)
    _no_secret("".join(traceback.format_exception(err.value)))
    monkeypatch.setenv("RTLIB_STORE_URL", _at_url())
    monkeypatch.delenv("RTLIB_CONFIG", raising=False)
    with pytest.raises(RtlibError) as err:
        cfg.load(workspace=tmp_path / "ws")
    _no_secret(str(err.value))
    for url in (_query_url(), f"postgresql+psycopg://rtlib:{SECRET}@db/rtlib?PassWord={SSL_SECRET}",
                f"postgresql://rtlib@db/rtlib?sslmode=require&passwd={SECRET}&pwd={SSL_SECRET}", _at_url()):  # fmt: skip
        settings = cfg.validate(cfg.default_config(tmp_path / "ws")).model_copy(update={"store_url": url})
        shown = cfg.redacted(settings)["store_url"]
        _no_secret(shown)
        assert "***" in shown
        _no_secret(repr(settings) + str(settings))  # a settings object in a log line or a failed test's output


@pytest.mark.parametrize("where", ["userinfo", "query"])
def test_a_driver_message_quoting_its_connection_string_is_scrubbed(tmp_path, monkeypatch, where):
    """libpq has quoted connection strings in its errors; SQLAlchemy wraps the driver's message as it is."""

    def quoting_connect(*args, **kwargs):
        dsn = " ".join(f"{k}={v}" for k, v in kwargs.items())
        raise psycopg.OperationalError(f"invalid connection string: {dsn}")

    monkeypatch.setattr(psycopg, "connect", quoting_connect)
    monkeypatch.setattr(psycopg.Connection, "connect", classmethod(lambda cls, *a, **k: quoting_connect(*a, **k)))
    port = _closed_port()
    url = (f"postgresql+psycopg://rtlib:{SECRET}@127.0.0.1:{port}/rtlib" if where == "userinfo"
           else f"postgresql+psycopg://rtlib@127.0.0.1:{port}/rtlib?password={SECRET}")  # fmt: skip
    with pytest.raises(Exception) as err:
        JobStore(url)
    text = "".join(traceback.format_exception(err.value))
    assert "invalid connection string" in text, text  # the driver's message is kept ...
    _no_secret(text)  # ... without the password
