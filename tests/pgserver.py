"""A real, throw-away PostgreSQL server for tests and benchmarks.

    with PostgresServer() as pg:
        store = JobStore(pg.url)            # postgresql+psycopg://rtlib@127.0.0.1:PORT/rtlib
        url = pg.create_database("other")   # a second, empty database

The server lives in a fresh temporary directory (data, unix socket, log),
listens on a free loopback port with trust authentication, and is stopped
(`pg_ctl stop -m fast`) and deleted on exit. PostgreSQL refuses to run as
root, so under root the server runs as the `postgres` system user.

No pytest import here: benchmarks use this module too.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from helpers import free_port

INSTALL_HINT = (
    "install the PostgreSQL server binaries (Debian/Ubuntu: `sudo apt-get install postgresql`; "
    "`.ci/run` does this), or put the directory holding initdb and pg_ctl on PATH"
)


class PostgresUnavailable(RuntimeError):
    """The PostgreSQL server binaries are missing or the server would not start."""


def _version_key(path: str) -> tuple[int, ...]:
    # /usr/lib/postgresql/15/bin -> (15,); "9.6" -> (9, 6)
    return tuple(int(n) for n in re.findall(r"\d+", Path(path).parent.name)) or (0,)


def find_bindir() -> Path:
    """The directory holding initdb and pg_ctl: pg_config, then /usr/lib/postgresql/*/bin, then PATH."""
    candidates: list[Path] = []
    if shutil.which("pg_config"):
        try:
            out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, timeout=30)
            if out.returncode == 0 and out.stdout.strip():
                candidates.append(Path(out.stdout.strip()))
        except (OSError, subprocess.SubprocessError):
            pass
    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True)]
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).resolve().parent)
    for d in candidates:
        if (d / "initdb").is_file() and (d / "pg_ctl").is_file():
            return d
    searched = ", ".join(str(c) for c in candidates) or "nothing found by pg_config, /usr/lib/postgresql/*/bin or PATH"
    raise PostgresUnavailable(f"PostgreSQL server binaries (initdb, pg_ctl) not found (searched: {searched}); {INSTALL_HINT}")


class PostgresServer:
    """A context manager running one PostgreSQL server; see the module docstring.

    `durable=False` (the default) turns fsync off: a test server never has to
    survive a power cut, and it makes table creation several times faster.
    """

    def __init__(self, *, user: str = "rtlib", dbname: str = "rtlib", durable: bool = False, base_dir: str | None = None):
        self.user = user
        self.dbname = dbname
        self.durable = durable
        self.base_dir = base_dir
        self.bindir = find_bindir()
        self.port: int | None = None
        self.tmpdir: Path | None = None
        self._run_as: list[str] = []

    # -- paths and URLs ----------------------------------------------------
    @property
    def datadir(self) -> Path:
        assert self.tmpdir is not None, "server not started"
        return self.tmpdir / "data"

    @property
    def socket_dir(self) -> Path:
        assert self.tmpdir is not None, "server not started"
        return self.tmpdir / "sock"

    @property
    def logfile(self) -> Path:
        assert self.tmpdir is not None, "server not started"
        return self.tmpdir / "server.log"

    def url_for(self, dbname: str) -> str:
        """SQLAlchemy URL of one database on this server."""
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/{dbname}"

    @property
    def url(self) -> str:
        return self.url_for(self.dbname)

    def conninfo(self, dbname: str | None = None) -> str:
        """libpq connection string, for psycopg.connect()."""
        return f"host=127.0.0.1 port={self.port} user={self.user} dbname={dbname or self.dbname}"

    # -- lifecycle ---------------------------------------------------------
    def __enter__(self) -> "PostgresServer":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        """initdb into a fresh temporary directory, start the server, create the database."""
        self._prepare_dir()
        try:
            self._pg(
                "initdb", "-D", str(self.datadir), "-U", self.user, "--auth=trust",
                "--encoding=UTF8", "--locale=C", "--no-sync",
            )  # fmt: skip
            last: Exception | None = None
            for _ in range(5):  # the free port may be taken between probing and binding
                self.port = free_port()
                try:
                    self._start_server()
                    break
                except PostgresUnavailable as err:
                    last = err
            else:
                raise last  # type: ignore[misc]
            self.create_database(self.dbname)
        except BaseException:
            self.stop()
            raise

    def restart(self, down_s: float = 0.0) -> None:
        """Stop the server (dropping every connection), stay down `down_s` seconds, start it on the same port."""
        self._pg("pg_ctl", "stop", "-D", str(self.datadir), "-m", "fast", "-w")
        time.sleep(down_s)
        self._start_server()

    def stop(self) -> None:
        """Stop the server and delete its directory. Safe to call twice."""
        if self.tmpdir is None:
            return
        try:
            if (self.datadir / "postmaster.pid").exists():
                try:
                    self._pg("pg_ctl", "stop", "-D", str(self.datadir), "-m", "fast", "-w", "-t", "60")
                except PostgresUnavailable:
                    self._pg("pg_ctl", "stop", "-D", str(self.datadir), "-m", "immediate", "-w", check=False)
        finally:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = None

    def is_running(self) -> bool:
        return self.tmpdir is not None and self._pg("pg_ctl", "status", "-D", str(self.datadir), check=False).returncode == 0

    # -- databases ---------------------------------------------------------
    def create_database(self, name: str) -> str:
        """CREATE DATABASE `name`; returns its SQLAlchemy URL."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.conninfo("postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url_for(name)

    def drop_database(self, name: str) -> None:
        """DROP DATABASE `name`, disconnecting whoever is still connected to it."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.conninfo("postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    # -- internals ---------------------------------------------------------
    def _prepare_dir(self) -> None:
        self.tmpdir = Path(tempfile.mkdtemp(prefix="rtlib-pg-", dir=self.base_dir))
        self.socket_dir.mkdir()
        if os.geteuid() != 0:
            return
        import pwd

        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            raise PostgresUnavailable(
                "PostgreSQL refuses to run as root and there is no `postgres` system user to run it as; "
                f"{INSTALL_HINT} (the package creates that user) or run the tests as a normal user"
            ) from None
        if shutil.which("runuser"):
            self._run_as = ["runuser", "-u", "postgres", "--"]
        elif shutil.which("setpriv"):
            self._run_as = ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups", "--"]
        else:
            raise PostgresUnavailable("running as root, but neither runuser nor setpriv is there to start PostgreSQL as `postgres`")
        for path in (self.tmpdir, self.socket_dir):
            os.chown(path, pw.pw_uid, pw.pw_gid)
        probe = subprocess.run([*self._run_as, "test", "-w", str(self.tmpdir)], cwd="/", capture_output=True)
        if probe.returncode != 0:
            raise PostgresUnavailable(
                f"the `postgres` user cannot write {self.tmpdir}; pass base_dir= (or set TMPDIR to) a directory it can reach"
            )

    def _start_server(self) -> None:
        options = [
            f"-p {self.port}",
            f"-k {self.socket_dir}",
            "-c listen_addresses=127.0.0.1",
            "-c max_connections=200",
        ]
        if not self.durable:
            options += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        try:
            self._pg("pg_ctl", "start", "-D", str(self.datadir), "-w", "-t", "60", "-l", str(self.logfile), "-o", " ".join(options))
        except PostgresUnavailable as err:
            raise PostgresUnavailable(f"{err}\n--- server log ---\n{self._log_tail()}") from None
        self._wait_accepting()

    def _wait_accepting(self, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.05)
        raise PostgresUnavailable(f"PostgreSQL did not accept TCP connections on 127.0.0.1:{self.port}\n{self._log_tail()}")

    def _log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no server log)"

    def _pg(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        # cwd: the postgres user may not be able to enter the caller's directory (e.g. /root)
        cmd = [*self._run_as, str(self.bindir / tool), *args]
        proc = subprocess.run(cmd, cwd=self.tmpdir or "/", capture_output=True, text=True, timeout=120)
        if check and proc.returncode != 0:
            raise PostgresUnavailable(f"`{' '.join(cmd)}` failed with exit code {proc.returncode}:\n{proc.stdout}{proc.stderr}")
        return proc


if __name__ == "__main__":  # a quick manual check: python tests/pgserver.py
    with PostgresServer() as pg:
        print("started", pg.url, "from", pg.bindir)
        pg.restart()
        print("restarted; running:", pg.is_running())
