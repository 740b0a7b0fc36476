"""A loopback stand-in for the Globus Auth and Transfer services, for offline soaks.

The soak (``rtlib soak --globus``) must drive the *real* globus-sdk client
code — token grants, renewal after a 401, task submission, polling, paginated
results — for hours, in a subprocess agent, with no internet. This module
answers the handful of HTTP calls the Globus backend makes, on 127.0.0.1,
copying files between collections that are directories on this machine:

- ``POST /auth/v2/oauth2/token`` (client credentials, HTTP basic auth)
- ``GET /transfer/v0.10/submission_id``, ``POST /transfer/v0.10/transfer``
- ``GET /transfer/v0.10/task/<id>`` and its ``successful_transfers``,
  ``skipped_errors`` and ``event_list``; ``POST /transfer/v0.10/task/<id>/cancel``
- ``GET /transfer/v0.10/operation/endpoint/<id>/stat`` and ``.../ls``

Point globus-sdk at it with the environment from `sdk_environment()`
(``GLOBUS_SDK_SERVICE_URL_AUTH`` / ``_TRANSFER``). `expire_tokens()` revokes
every access token issued so far: the next Transfer call answers 401, which
is the "expired or revoked token" fault the agent must survive by
re-authenticating once. It is not a Globus implementation: no ACLs, no
sync levels, a file copied is a file verified.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

TRANSFER_RESOURCE_SERVER = "transfer.api.globus.org"
_MAX_BODY = 16 * 2**20


@dataclass
class _Task:
    task_id: str
    src: str
    dst: str
    items: list[tuple[str, str]]
    status: str = "ACTIVE"
    bytes_transferred: int = 0
    succeeded: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)
    cancelled: bool = False


class GlobusEmulator:
    """Globus Auth + Transfer on a free loopback port; collections are local directories.

    collections: collection id -> local directory that stands for the collection's "/".
    clients: client id -> client secret accepted by the token endpoint.
    token_lifetime_s: how long an access token is valid (renewing authorizers renew ahead).
    """

    def __init__(self, collections: dict[str, Path], clients: dict[str, str], *, token_lifetime_s: int = 3600):
        self.collections = {cid: Path(root) for cid, root in collections.items()}
        self.clients = dict(clients)
        self.token_lifetime_s = token_lifetime_s
        self._tokens: dict[str, float] = {}  # access token -> expiry (epoch s)
        self._issued: dict[str, float] = {}  # access token -> when it was granted (epoch s)
        self._tasks: dict[str, _Task] = {}
        self._submissions: dict[str, str] = {}  # submission id -> task id
        self._lock = threading.Lock()
        self.counts = {"token_grants": 0, "rejected_401": 0, "tasks": 0, "files": 0, "tokens_expired": 0}
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> "GlobusEmulator":
        emulator = self

        class Handler(_Handler):
            owner = emulator

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="globus-emulator", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "GlobusEmulator":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the emulator first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def sdk_environment(self) -> dict[str, str]:
        """Environment variables that send globus-sdk's Auth and Transfer calls here."""
        return {"GLOBUS_SDK_SERVICE_URL_AUTH": f"{self.url}/auth/", "GLOBUS_SDK_SERVICE_URL_TRANSFER": f"{self.url}/transfer/"}

    # -- faults ---------------------------------------------------------------------------
    def _live(self, min_age_s: float) -> list[str]:
        now = time.time()
        return [t for t, exp in self._tokens.items() if exp > now and now - self._issued.get(t, 0.0) >= min_age_s]

    def live_tokens(self, *, min_age_s: float = 0.0) -> int:
        """How many issued access tokens are still valid (and at least `min_age_s` old)."""
        with self._lock:
            return len(self._live(min_age_s))

    def expire_tokens(self, *, min_age_s: float = 0.0) -> int:
        """Revoke the valid access tokens at least `min_age_s` old; returns how many.

        A real token dies at the end of its lifetime, never just after it was granted:
        `min_age_s` keeps the fault from hitting a client in the middle of its one renewal.
        """
        with self._lock:
            doomed = self._live(min_age_s)
            for token in doomed:
                self._tokens.pop(token, None)
                self._issued.pop(token, None)
            self.counts["tokens_expired"] += 1
            return len(doomed)

    # -- auth -------------------------------------------------------------------------------
    def _grant(self, client_id: str, secret: str, scope: str) -> tuple[int, dict]:
        if self.clients.get(client_id) != secret:
            return 401, {"error": "invalid_client", "error_description": "unknown client or wrong secret"}
        token = secrets.token_urlsafe(24)
        with self._lock:
            self._tokens[token] = time.time() + self.token_lifetime_s
            self._issued[token] = time.time()
            self.counts["token_grants"] += 1
        return 200, {"access_token": token, "expires_in": self.token_lifetime_s, "token_type": "Bearer",
                     "scope": scope, "resource_server": TRANSFER_RESOURCE_SERVER, "other_tokens": []}

    def _authorized(self, header: str | None) -> bool:
        token = (header or "").removeprefix("Bearer ").strip()
        with self._lock:
            ok = self._tokens.get(token, 0) > time.time()
            if not ok:
                self.counts["rejected_401"] += 1
            return ok

    # -- transfer ---------------------------------------------------------------------------
    def _local(self, collection: str, path: str) -> Path | None:
        root = self.collections.get(collection)
        if root is None:
            return None
        full = (root / path.lstrip("/")).resolve()
        return full if full == root.resolve() or root.resolve() in full.parents else None

    def _submit(self, doc: dict) -> tuple[int, dict]:
        src, dst = doc.get("source_endpoint"), doc.get("destination_endpoint")
        for cid in (src, dst):
            if cid not in self.collections:
                return 404, {"code": "EndpointNotFound", "message": f"collection {cid} not found"}
        sub = doc.get("submission_id") or ""
        with self._lock:
            if sub in self._submissions:  # a resubmission after a lost answer: the same task
                return 202, {"code": "Duplicate", "task_id": self._submissions[sub], "submission_id": sub}
            task = _Task(str(uuid.uuid4()), src, dst, [(d["source_path"], d["destination_path"]) for d in doc.get("DATA", [])])
            self._tasks[task.task_id] = task
            self._submissions[sub] = task.task_id
            self.counts["tasks"] += 1
        threading.Thread(target=self._run, args=(task,), daemon=True).start()
        return 202, {"code": "Accepted", "task_id": task.task_id, "submission_id": sub}

    def _run(self, task: _Task) -> None:
        for src_path, dst_path in task.items:
            if task.cancelled:
                break
            src, dst = self._local(task.src, src_path), self._local(task.dst, dst_path)
            if src is None or dst is None or not src.is_file():
                code = "FILE_NOT_FOUND" if src is not None and not src.exists() else "INVALID_PATH"
                with self._lock:
                    task.skipped.append({"source_path": src_path, "destination_path": dst_path, "error_code": code,
                                         "error_details": f"{src_path} cannot be read"})
                continue
            dst.parent.mkdir(parents=True, exist_ok=True)
            tmp = dst.with_name(f".{dst.name}.globus-partial")
            shutil.copyfile(src, tmp)
            os.replace(tmp, dst)
            with self._lock:
                task.bytes_transferred += dst.stat().st_size
                task.succeeded.append({"source_path": src_path, "destination_path": dst_path})
                self.counts["files"] += 1
        with self._lock:
            task.status = "FAILED" if task.cancelled else "SUCCEEDED"
            if task.cancelled:
                task.events.insert(0, {"code": "CANCELED", "is_error": True, "description": "canceled", "details": "by request"})

    def _task_doc(self, task: _Task) -> dict:
        return {"DATA_TYPE": "task", "task_id": task.task_id, "status": task.status, "nice_status": task.status.lower(),
                "bytes_transferred": task.bytes_transferred, "files": len(task.items), "files_transferred": len(task.succeeded),
                "files_skipped": len(task.skipped), "is_paused": False, "faults": 0}

    def handle(self, method: str, path: str, query: dict, headers, body: bytes) -> tuple[int, dict]:
        if path == "/auth/v2/oauth2/token" and method == "POST":
            form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
            basic = (headers.get("Authorization") or "").removeprefix("Basic ").strip()
            try:
                client_id, _, secret = base64.b64decode(basic).decode().partition(":")
            except ValueError:
                client_id, secret = "", ""
            if form.get("grant_type") != "client_credentials":
                return 400, {"error": "unsupported_grant_type"}
            return self._grant(client_id, secret, form.get("scope", ""))
        if not path.startswith("/transfer/v0.10/"):
            return 404, {"code": "NotFound", "message": f"no such API: {path}"}
        if not self._authorized(headers.get("Authorization")):
            return 401, {"code": "AuthenticationFailed", "message": "Token is not active"}
        parts = path.removeprefix("/transfer/v0.10/").strip("/").split("/")
        if parts == ["submission_id"]:
            return 200, {"value": str(uuid.uuid4())}
        if parts == ["transfer"] and method == "POST":
            return self._submit(json.loads(body or b"{}"))
        if parts[0] == "task" and len(parts) >= 2:
            with self._lock:
                task = self._tasks.get(parts[1])
                if task is None:
                    return 404, {"code": "TaskNotFound", "message": f"task {parts[1]} not found"}
                if len(parts) == 2:
                    return 200, self._task_doc(task)
                if parts[2] == "successful_transfers":
                    return 200, {"DATA": list(task.succeeded), "next_marker": None}
                if parts[2] == "skipped_errors":
                    return 200, {"DATA": list(task.skipped), "next_marker": None}
                if parts[2] == "event_list":
                    return 200, {"DATA": list(task.events), "offset": 0, "limit": 100, "has_next_page": False}
                if parts[2] == "cancel" and method == "POST":
                    task.cancelled = task.status == "ACTIVE"
                    return 200, {"code": "Canceled" if task.cancelled else "TaskComplete", "message": "ok"}
        if parts[:2] == ["operation", "endpoint"] and len(parts) == 4:
            target = self._local(parts[2], query.get("path", ["/"])[0])
            if target is None or not target.exists():
                return 404, {"code": "ClientError.NotFound", "message": f"{query.get('path')} not found"}
            if parts[3] == "stat":
                return 200, {"name": target.name, "type": "dir" if target.is_dir() else "file", "size": target.stat().st_size}
            if parts[3] == "ls":
                entries = [{"name": p.name, "type": "dir" if p.is_dir() else "file", "size": p.stat().st_size}
                           for p in sorted(target.iterdir())]
                return 200, {"DATA": entries, "path": query.get("path", ["/"])[0]}
        return 404, {"code": "NotFound", "message": f"no such API: {method} {path}"}


class _Handler(BaseHTTPRequestHandler):
    owner: GlobusEmulator

    def _answer(self) -> None:
        url = urlparse(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        if length > _MAX_BODY:
            status, doc = 413, {"code": "RequestTooLarge", "message": "body too large"}
        else:
            body = self.rfile.read(length) if length else b""
            status, doc = self.owner.handle(self.command, url.path, parse_qs(url.query), self.headers, body)
        payload = json.dumps(doc).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):  # the client (an agent the soak SIGKILLed) went away
            self.close_connection = True

    do_GET = do_POST = _answer

    def log_message(self, *args) -> None:  # quiet: the soak prints its own summary
        pass


def use_emulated_globus(raw: dict, endpoints: tuple[str, ...], *, beamline: str, client_id: str, secret_env: str) -> dict[str, Path]:
    """Turn `endpoints` of a raw config (local, with roots) into Globus collections served by an emulator.

    Each keeps its `root` (this machine still mounts it) and gets a collection id
    and base path "/"; `beamline` gets a service account whose secret is read from
    the environment variable `secret_env`. Returns collection id -> root, for
    `GlobusEmulator(collections=...)`. Polling is made fast for a loopback service.
    """
    collections: dict[str, Path] = {}
    for name in endpoints:
        ep = raw["endpoints"][name]
        cid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"rtlib-emulated-collection:{name}"))
        raw["endpoints"][name] = {**ep, "kind": "globus", "collection_id": cid, "base_path": "/"}
        collections[cid] = Path(ep["root"])
    raw["beamlines"][beamline]["service_account"] = {"client_id": client_id, "secret_env": secret_env}
    raw["globus"] = {**raw.get("globus", {}), "poll_initial_s": 0.1, "poll_max_s": 0.5, "stall_limit_s": 60, "network_retries": 3}
    return collections
