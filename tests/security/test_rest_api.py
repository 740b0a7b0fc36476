"""Issue 15, the REST API: hostile requests to a real `jupyter lab` with the rtlib server extension.

Finding 4: no copy may land in a job's scratch folder (REST and `rtlib transfer`).
Finding 6: a body is refused by its Content-Length (or, chunked, at the limit) before it is
buffered; the server's memory (its /proc VmRSS) does not grow by the body.
Finding 7: CORS preflight works, integers past the store's range, mistyped fields and unknown
URLs are 400s/404s in JSON naming the field, never a 500 or a traceback.

The server is a child process (tests/labserver.py) opened to one other origin, as a facility
that lets a beamline's web page call the API would configure it.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from helpers import make_settings
from labserver import LabServer

ORIGIN = "https://beamline.example"
HUGE = [2**63, 10**30]  # past SQLite's 64-bit integers (and PostgreSQL's int4 ids)
MiB = 1 << 20


class ApiServer(LabServer):
    """`jupyter lab` with the rtlib extension's allow_origin set to ORIGIN."""

    def _prepare(self) -> None:
        super()._prepare()
        config_file = self.base / "jupyter-config" / "jupyter_server_config.json"
        config = json.loads(config_file.read_text())
        config["RtlibExtensionApp"] = {"allow_origin": ORIGIN}
        config_file.write_text(json.dumps(config))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with ApiServer(tmp_path_factory.mktemp("rest"), agent=False, use_built_extension=False) as srv:
        srv.settings = make_settings(srv.workspace)
        yield srv


def call(server: LabServer, method: str, path: str, body: bytes | str | dict | None = None, headers: dict | None = None,
         auth: bool = True) -> tuple[int, dict, str]:
    """(status, headers, body text) of METHOD /rtlib/api/PATH."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    hdrs = {"Content-Type": "application/json", **({"Authorization": f"token {server.token}"} if auth else {}), **(headers or {})}
    data = json.dumps(body) if isinstance(body, dict) else body
    try:
        conn.request(method, f"/rtlib/api/{path}", body=data, headers=hdrs)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read().decode(errors="replace")
    finally:
        conn.close()


def refused(server: LabServer, method: str, path: str, body=None, headers=None) -> tuple[int, dict]:
    """A refusal: JSON with an `error`, and no traceback."""
    status, hdrs, text = call(server, method, path, body, headers)
    assert hdrs.get("content-type", "").startswith("application/json"), (method, path, status, text[:300])
    assert "Traceback" not in text and 'File "' not in text, text
    return status, json.loads(text)


def job_count(server: LabServer) -> int:
    status, _, text = call(server, "GET", "jobs")
    assert status == 200, text
    return json.loads(text)["total"]


# -- finding 4: destinations in a job's scratch folder ------------------------------------------
def _stage(settings) -> tuple[Path, bytes]:
    """A file as the agent stages job 1's input on the scratch endpoint alcf, and a different file at the beamline."""
    staged = Path(settings.endpoints["alcf"].root) / "jobs" / "00000001" / "in" / "scan.h5"
    staged.parent.mkdir(parents=True, exist_ok=True)
    staged.write_bytes(b"the bytes job 1 was submitted with")
    evil = Path(settings.endpoints["aps"].root) / "evilset" / "jobs" / "00000001" / "in" / "scan.h5"
    evil.parent.mkdir(parents=True, exist_ok=True)
    evil.write_bytes(b"other bytes")
    (Path(settings.endpoints["aps"].root) / "evil.h5").write_bytes(b"other bytes")
    return staged, staged.read_bytes()


def test_a_transfer_into_a_jobs_scratch_folder_is_refused(server):
    staged, original = _stage(server.settings)
    scratch = Path(server.settings.endpoints["alcf"].root)
    (scratch / "shortcut").symlink_to(scratch / "jobs" / "00000001", target_is_directory=True)
    for source, destination in [
        ("aps:evil.h5", "alcf:jobs/00000001/in/scan.h5"),                          # the red team's request
        ("aps:evil.h5", {"endpoint": "alcf", "path": "./jobs//00000001/in/scan.h5"}),
        ("aps:evil.h5", {"endpoint": "alcf", "path": str(staged)}),                # absolute, through the root
        ("aps:evil.h5", "alcf:shortcut/in/scan.h5"),                               # a symlink into the job area
        ("aps:evil.h5", "alcf:jobs/00000002/in/"),                                  # a job not staged yet
        ("aps:evilset", "alcf:."),                                                  # a folder whose files land there
    ]:
        status, err = refused(server, "POST", "transfers", {"source": source, "destination": destination})
        assert status == 400 and err["field"] == "destination" and "job area" in err["error"], (destination, err)
    before = job_count(server)
    status, err = refused(server, "POST", "jobs", {"workload": "noop", "input": "aps:evil.h5", "dest": "alcf:jobs/00000001/in"})
    assert status == 400 and err["field"] == "dest" and "job area" in err["error"], err
    assert job_count(server) == before
    time.sleep(0.5)  # a transfer that had started would have written by now
    assert staged.read_bytes() == original
    assert not (scratch / "jobs" / "00000002").exists()

    # elsewhere on the scratch, a copy is still allowed
    status, _, text = call(server, "POST", "transfers", {"source": "aps:evil.h5", "destination": "alcf:transfers/jobs/evil.h5"})
    assert status == 201, text
    tr = json.loads(text)
    deadline = time.monotonic() + 30
    while tr["state"] == "ACTIVE" and time.monotonic() < deadline:
        time.sleep(0.05)
        tr = json.loads(call(server, "GET", f"transfers/{tr['id']}")[2])
    assert tr["state"] == "SUCCEEDED", tr
    assert (scratch / "transfers" / "jobs" / "evil.h5").read_bytes() == b"other bytes"


def test_the_transfer_command_refuses_a_jobs_scratch_folder(tmp_path):
    ws = tmp_path / "ws"
    staged, original = _stage(make_settings(ws))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RTLIB_")}
    for destination in ("alcf:jobs/00000001/in/scan.h5", "alcf:./jobs/00000001/in/", "alcf:."):
        source = "aps:evilset" if destination == "alcf:." else "aps:evil.h5"
        result = subprocess.run([sys.executable, "-m", "rtlib.cli", "transfer", source, destination, "-w", str(ws)],
                                cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert result.returncode == 2 and "job area" in result.stderr, (destination, result.stdout, result.stderr)
    assert staged.read_bytes() == original


def test_the_submit_command_refuses_results_in_a_jobs_scratch_folder(tmp_path):
    """The CLI records jobs through jobs.submit, not the REST manager: the same rule holds there."""
    ws = tmp_path / "ws"
    settings = make_settings(ws)
    scratch = Path(settings.endpoints["alcf"].root)
    (scratch / "jobs").mkdir(parents=True, exist_ok=True)
    (scratch / "shortcut").symlink_to(scratch / "jobs", target_is_directory=True)
    (Path(settings.endpoints["aps"].root) / "scan.h5").write_bytes(b"x")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RTLIB_")}
    for dest in ("alcf:jobs/00000001/in", "alcf:./jobs//{job_id}", "alcf:shortcut/00000001/in"):
        result = subprocess.run([sys.executable, "-m", "rtlib.cli", "submit", "noop", "-i", "aps:scan.h5", "-d", dest, "-w", str(ws)],
                                cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert result.returncode != 0 and "job area" in result.stderr, (dest, result.stdout, result.stderr)
    ok = subprocess.run([sys.executable, "-m", "rtlib.cli", "submit", "noop", "-i", "aps:scan.h5", "-d", "alcf:outbox/{job_id}", "-w", str(ws)],
                        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr


# -- finding 6: bodies refused before they are buffered ----------------------------------------
def _head(server: LabServer, *, length: int | None, auth: bool) -> bytes:
    lines = [f"POST /rtlib/api/jobs HTTP/1.1", f"Host: 127.0.0.1:{server.port}", "Content-Type: application/json"]
    lines.append(f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked")
    if auth:
        lines.append(f"Authorization: token {server.token}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _answer(sock: socket.socket, timeout_s: float) -> bytes:
    sock.settimeout(timeout_s)
    try:
        return sock.recv(65536)
    except (socket.timeout, ConnectionError):
        return b""


@pytest.mark.parametrize("auth", [False, True])
def test_an_oversized_body_is_refused_before_it_is_sent(server, auth):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(_head(server, length=500_000_000, auth=auth))  # the headers only: the client waits for a verdict
        reply = _answer(sock, 10)
    assert reply.startswith(b"HTTP/1.1 413"), f"no 413 within 10 s without the body; got {reply[:200]!r}"
    assert b'"error"' in reply and b"limit" in reply


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def _send_body(server: LabServer, *, body_bytes: int, chunked: bool, auth: bool) -> tuple[bytes, int]:
    """Send the headers and then body_bytes of body as fast as the server takes them (until it hangs up).
    Returns the server's answer and how much its memory (VmRSS, sampled every 5 ms) grew meanwhile."""
    pid = server.lab.pid
    assert "jupyter" in Path(f"/proc/{pid}/cmdline").read_text(), "the measured process is the server"
    assert call(server, "GET", "sites")[0] == 200  # warm: nothing left to import or compile
    baseline = peak = _rss_bytes(pid)
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _rss_bytes(pid))
            time.sleep(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    block = b"x" * MiB
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
            sock.sendall(_head(server, length=None if chunked else body_bytes, auth=auth))
            try:
                for _ in range(body_bytes // MiB):
                    sock.sendall(b"%x\r\n%s\r\n" % (len(block), block) if chunked else block)
                if chunked:
                    sock.sendall(b"0\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError):
                pass  # the server hung up: what the defended server does
            reply = _answer(sock, 30)
        time.sleep(0.3)  # a server that buffered it handles it now
    finally:
        done.set()
        sampler.join()
    return reply, peak - baseline


@pytest.mark.parametrize("chunked, auth", [(False, False), (True, True)], ids=["content-length-unauthenticated", "chunked-authenticated"])
def test_the_server_does_not_buffer_an_oversized_body(server, chunked, auth):
    body_bytes = 160 * MiB
    reply, growth = _send_body(server, body_bytes=body_bytes, chunked=chunked, auth=auth)
    assert growth < 32 * MiB, f"the server's memory grew by {growth / MiB:.0f} MiB for a {body_bytes / MiB:.0f} MiB body"
    assert reply == b"" or reply.startswith((b"HTTP/1.1 413", b"HTTP/1.1 400")), reply[:200]


# -- finding 7: CORS preflight, integer ranges, field types, unknown URLs -------------------------
def test_cors_preflight_is_answered_for_the_allowed_origin_only(server):
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization, content-type"}
    status, headers, text = call(server, "OPTIONS", "jobs", headers={"Origin": ORIGIN, **preflight}, auth=False)
    assert status in (200, 204), (status, text[:300])
    assert headers.get("access-control-allow-origin") == ORIGIN
    assert "POST" in headers.get("access-control-allow-methods", "")
    assert "authorization" in headers.get("access-control-allow-headers", "").lower()
    status, headers, _ = call(server, "OPTIONS", "jobs", headers={"Origin": "https://evil.example", **preflight}, auth=False)
    assert status in (200, 204) and "access-control-allow-origin" not in headers
    # the request the preflight allowed works, and is marked for that origin only
    status, headers, _ = call(server, "GET", "sites", headers={"Origin": ORIGIN})
    assert status == 200 and headers.get("access-control-allow-origin") == ORIGIN


@pytest.mark.parametrize("huge", HUGE)
def test_integers_past_the_stores_range_are_400_naming_the_field(server, huge):
    for method, path, field in [("GET", f"jobs/{huge}", "job_id"), ("POST", f"jobs/{huge}/cancel", "job_id"),
                                ("POST", f"jobs/{huge}/retry", "job_id"), ("GET", f"transfers/{huge}", "transfer_id"),
                                ("GET", f"jobs?offset={huge}", "offset"), ("GET", f"jobs?limit={huge}", "limit"),
                                ("GET", f"events?since={huge}", "since"), ("GET", f"events?job_id={huge}", "job_id")]:
        status, err = refused(server, method, path, body="{}" if method == "POST" else None)
        assert status == 400 and err["field"] == field, (path, status, err)
    status, err = refused(server, "GET", "events", headers={"Last-Event-ID": str(huge)})
    assert status == 400 and err["field"] == "Last-Event-ID", err
    status, err = refused(server, "GET", "jobs?offset=-1")
    assert status == 400 and err["field"] == "offset"


def _submit(**fields) -> dict:
    return {"workload": "noop", "input": "aps:evil.h5", **fields}


@pytest.mark.parametrize("value", ["5", [5], {"p": 5}, 1e300, 2.7, 2.0, True, 2**63, None], ids=repr)
def test_a_priority_that_is_not_an_integer_in_range_is_400(server, value):
    if value is None:  # JSON's Infinity, as Python's json writes it
        body = '{"workload": "noop", "input": "aps:evil.h5", "priority": Infinity}'
    else:
        body = json.dumps(_submit(priority=value))
    before = job_count(server)
    status, err = refused(server, "POST", "jobs", body)
    assert status == 400 and err["field"] == "priority", err
    assert job_count(server) == before


@pytest.mark.parametrize("field", ["site", "queue", "account", "beamline"])
def test_names_of_the_wrong_type_are_400_naming_the_field(server, field):
    before = job_count(server)
    for value in (["local"], {"name": "local"}, 7, "x" * 65, "bad\nname"):
        status, err = refused(server, "POST", "jobs", _submit(**{field: value}))
        assert status == 400 and err["field"] == field, (value, err)
    assert job_count(server) == before


def test_malformed_bodies_and_queries_are_400_not_500(server):
    for body, field in [
        ('{"workload": "noop", "input": "aps:evil.h5", "priority": ' + "9" * 5000 + "}", None),  # past Python's int digits
        ("[" * 100_000 + "]" * 100_000, None),                                                    # nesting past the stack
        ('{"workload": "noop", "input": "aps:evil.h5", "params": {"pad": NaN}}', "params"),
        (json.dumps(_submit(inputs=[], input=None)), "inputs"),
        (json.dumps(_submit(input={"endpoint": "aps", "path": ["evil.h5"]})), "input"),
        (json.dumps(["not", "an", "object"]), None),
    ]:
        status, err = refused(server, "POST", "jobs", body)
        assert status == 400 and err.get("field") == field, (body[:80], err)
    for body, field in [({"source": "aps:evil.h5", "destination": ["alcf:x"]}, "destination"),
                        ({"source": "aps:evil.h5", "destination": "alcf:x", "mode": "fast"}, "mode")]:
        status, err = refused(server, "POST", "transfers", body)
        assert status == 400 and err["field"] == field, err
    for query, field in [("limit=1e3", "limit"), ("limit=5.0", "limit"), ("offset=1_000", "offset"), ("limt=3", "limt"),
                         ("order=sideways", "order")]:
        status, err = refused(server, "GET", f"jobs?{query}")
        assert status == 400 and err["field"] == field, (query, err)


def test_every_other_url_under_the_api_is_a_json_404(server):
    for method, path in [("GET", "jobs/abc"), ("GET", "jobs/-1"), ("GET", "jobs/1/explode"), ("POST", "jobs/abc/cancel"),
                         ("GET", "nope"), ("GET", ""), ("GET", "jobs/"), ("DELETE", "transfers/x")]:
        status, err = refused(server, method, path, body="{}" if method == "POST" else None)
        assert status == 404 and err["error"], (method, path, status, err)
    status, err = refused(server, "DELETE", "jobs/1")  # a known path, an unknown method
    assert status == 405 and err["error"], err
