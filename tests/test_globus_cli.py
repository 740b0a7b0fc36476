"""`rtlib transfer` (local and Globus endpoints) and `rtlib login`, through typer's test runner."""

from __future__ import annotations

import json

import pytest
import responses
import typer
from typer.testing import CliRunner

from rtlib import cli_transfer
from rtlib.transfer.identity import UserIdentity

from test_globus import CLIENT_ID, DST_COLL, SRC_COLL, add_results, add_submission_id, add_submit, add_task, add_token

app = typer.Typer()
app.command("transfer")(cli_transfer.transfer)
app.command("login")(cli_transfer.login)
runner = CliRunner()


@pytest.fixture
def ws(tmp_path):
    root = tmp_path / "ws" / "endpoints" / "aps" / "raw"
    (root / "sub").mkdir(parents=True)
    (root / "a.h5").write_bytes(b"a" * 1000)
    (root / "sub" / "b.h5").write_bytes(b"b" * 10)
    return tmp_path / "ws"


def run(*args):
    return runner.invoke(app, list(args), catch_exceptions=False)


def test_local_file_and_directory_transfers(ws, monkeypatch):
    monkeypatch.delenv("RTLIB_CONFIG", raising=False)
    r = run("transfer", "aps:raw/a.h5", "alcf:incoming/", "-w", str(ws))
    assert r.exit_code == 0, r.output
    assert (ws / "endpoints/alcf/incoming/a.h5").read_bytes() == b"a" * 1000 and "1 of 1 file(s)" in r.output

    r = run("transfer", "aps:raw", "als:copy", "-w", str(ws), "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert sorted((o["dst"], o["ok"], o["bytes"]) for o in out) == [("als:copy/a.h5", True, 1000), ("als:copy/sub/b.h5", True, 10)]
    assert (ws / "endpoints/als/copy/sub/b.h5").read_bytes() == b"b" * 10


def test_transfer_errors_are_one_clear_line(ws, monkeypatch):
    monkeypatch.delenv("RTLIB_CONFIG", raising=False)
    r = runner.invoke(app, ["transfer", "aps:raw/nope.h5", "alcf:x", "-w", str(ws)])
    assert r.exit_code == 2 and "does not exist" in r.output
    r = runner.invoke(app, ["transfer", "aps-raw", "alcf:x", "-w", str(ws)])
    assert r.exit_code == 2 and "ENDPOINT:PATH" in r.output


def test_globus_transfer_from_the_command_line(tmp_path, monkeypatch):
    monkeypatch.setenv("CLI_GLOBUS_SECRET", "cli-secret")
    conf = tmp_path / "site.toml"
    conf.write_text(f"""
workspace = "{tmp_path / 'ws'}"
[endpoints.aps]
kind = "globus"
collection_id = "{SRC_COLL}"
base_path = "/data/8id"
[endpoints.alcf]
kind = "globus"
collection_id = "{DST_COLL}"
base_path = "/eagle/rtlib"
[beamlines.8id]
facility = "aps"
endpoint = "aps"
service_account = {{ client_id = "{CLIENT_ID}", secret_env = "CLI_GLOBUS_SECRET" }}
[sites.local]
scratch_endpoint = "alcf"
[globus]
poll_initial_s = 0.001
poll_max_s = 0.002
""")
    responses.start()
    try:
        add_token("tok")
        responses.add("GET", f"https://transfer.api.globus.org/v0.10/operation/endpoint/{SRC_COLL}/stat",
                      json={"DATA_TYPE": "file", "name": "a.h5", "type": "file", "size": 878})
        add_submission_id()
        add_submit("task-cli")
        add_task("task-cli", "SUCCEEDED", bytes_transferred=878)
        add_results("task-cli", [("/data/8id/scan/a.h5", "/eagle/rtlib/in/a.h5")])
        r = run("transfer", "aps:scan/a.h5", "alcf:in/", "-c", str(conf))
    finally:
        responses.stop()
        responses.reset()
    assert r.exit_code == 0, r.output
    assert "1 of 1 file(s) transferred" in r.output and "cli-secret" not in r.output


def test_login_needs_a_native_client_and_runs_the_flow(tmp_path, monkeypatch):
    r = runner.invoke(app, ["login", "-w", str(tmp_path)])
    assert r.exit_code == 2 and "native_client_id" in r.output
    conf = tmp_path / "site.toml"
    conf.write_text(f'workspace = "{tmp_path}"\n[endpoints.x]\nroot = "{tmp_path}/x"\n[sites.local]\nscratch_endpoint = "x"\n'
                    '[globus]\nnative_client_id = "11111111-2222-3333-4444-555555555555"\n')
    calls = []
    monkeypatch.setattr(UserIdentity, "login", lambda self, force, extra_scopes: calls.append((self.client_id, force, list(extra_scopes))))
    r = runner.invoke(app, ["login", "-c", str(conf), "--force", "--scope", "urn:x:s1"])
    assert r.exit_code == 0, r.output
    assert calls == [("11111111-2222-3333-4444-555555555555", True, ["urn:x:s1"])] and "globus-user-tokens.json" in r.output


def test_beamline_option_chooses_the_service_account_on_a_shared_collection(tmp_path, monkeypatch):
    from base64 import b64decode

    monkeypatch.setenv("CLI_8ID_SECRET", "secret-8id")
    monkeypatch.setenv("CLI_9ID_SECRET", "secret-9id")
    other_id = "0d1e2f3a-4b5c-4d6e-8f70-8192a3b4c5d6"
    conf = tmp_path / "site.toml"
    conf.write_text(f"""
workspace = "{tmp_path / 'ws'}"
[endpoints.aps]
kind = "globus"
collection_id = "{SRC_COLL}"
base_path = "/data"
[endpoints.alcf]
kind = "globus"
collection_id = "{DST_COLL}"
base_path = "/eagle/rtlib"
[endpoints.elsewhere]
kind = "globus"
collection_id = "2a0e2b1c-0d7e-4f3a-9b8c-7e6d5c4b3a21"
[beamlines.8id]
facility = "aps"
endpoint = "aps"
service_account = {{ client_id = "{CLIENT_ID}", secret_env = "CLI_8ID_SECRET" }}
[beamlines.9id]
facility = "aps"
endpoint = "aps"
service_account = {{ client_id = "{other_id}", secret_env = "CLI_9ID_SECRET" }}
[sites.local]
scratch_endpoint = "alcf"
[globus]
poll_initial_s = 0.001
poll_max_s = 0.002
""")
    # two beamlines share the aps collection: without --beamline rtlib will not guess whose account to use
    r = runner.invoke(app, ["transfer", "aps:9id/a.h5", "alcf:in/", "-c", str(conf)])
    assert r.exit_code == 2 and "'8id', '9id'" in r.output and "--beamline" in r.output
    # a beamline may use only its allowed endpoints (default: its own and the site scratch)
    r = runner.invoke(app, ["transfer", "aps:9id/a.h5", "elsewhere:in/", "-c", str(conf), "--beamline", "9id"])
    assert r.exit_code == 2 and "may not use endpoint 'elsewhere'" in r.output and "beamlines.9id.allowed_endpoints" in r.output
    responses.start()
    try:
        add_token("tok-9id")
        responses.add("GET", f"https://transfer.api.globus.org/v0.10/operation/endpoint/{SRC_COLL}/stat",
                      json={"DATA_TYPE": "file", "name": "a.h5", "type": "file", "size": 878})
        add_submission_id()
        add_submit("task-9id")
        add_task("task-9id", "SUCCEEDED", bytes_transferred=878)
        add_results("task-9id", [("/data/9id/a.h5", "/eagle/rtlib/in/a.h5")])
        r = run("transfer", "aps:9id/a.h5", "alcf:in/", "-c", str(conf), "--beamline", "9id")
        grants = [c.request for c in responses.calls if c.request.url.endswith("/v2/oauth2/token")]
    finally:
        responses.stop()
        responses.reset()
    assert r.exit_code == 0, r.output
    assert "1 of 1 file(s) transferred" in r.output
    assert len(grants) == 1 and b64decode(grants[0].headers["Authorization"].split()[1]).decode() == f"{other_id}:secret-9id"
