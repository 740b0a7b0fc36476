"""Who a Globus transfer runs as: a beamline's service account, or a scientist.

A beamline's automation runs as a Globus *confidential client* (Nexus's
service account). Its secret comes from an environment variable or a file
only its owner can read (mode 0600); it is handed to globus-sdk and to
nothing else: never logged, never stored, never part of an error message.
Client-credentials access tokens are cached in a 0600 JSON file and renewed
by globus-sdk's ``ClientCredentialsAuthorizer`` when they expire; a token the
service rejects (revoked, expired early) is renewed once per request, then
the request fails with the API's 401.

Scientists log in as themselves with the native-app flow (``rtlib login``);
their tokens live in globus-sdk's JSON token storage.

A transfer runs as the service account of the beamline it names (a job's
beamline), on that beamline's ``allowed_endpoints`` only; with no beamline,
as the one beamline owning an endpoint of the transfer (never a guess
between several), else as the logged-in scientist.
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
import threading
import time
from pathlib import Path
from typing import Iterable

from ..config import ServiceAccount, Settings
from ..errors import ConfigError, RtlibError

log = logging.getLogger(__name__)

TRANSFER_RESOURCE_SERVER = "transfer.api.globus.org"
_DATA_ACCESS_RE = re.compile(r"https://auth\.globus\.org/scopes/([0-9A-Fa-f-]{36})/data_access")
TOKEN_FILE_NAME = "globus-tokens.json"
USER_TOKEN_FILE_NAME = "globus-user-tokens.json"


class CredentialsError(ConfigError):
    """A service account's secret is missing, unreadable, or readable by others."""


def check_private_file(path: Path, what: str) -> None:
    """Refuse a file that anyone but its owner can read or write: it holds a secret."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        raise CredentialsError(f"{what} {path} does not exist; create it with the secret, then run `chmod 600 {path}`") from None
    if mode & 0o077:
        raise CredentialsError(
            f"{what} {path} has mode {mode:04o}, so other users can read it; "
            f"run `chmod 600 {path}` (owner read/write only), then retry"
        )


def read_client_secret(account: ServiceAccount, *, beamline: str) -> str:
    """The client secret of `beamline`'s service account: env var, then 0600 file, then the config value."""
    where = f"beamlines.{beamline}.service_account"
    if account.secret_env:
        value = os.environ.get(account.secret_env)
        if value:
            return value.strip()
        if not account.secret_file and account.client_secret is None:
            raise CredentialsError(
                f"{where}: the environment variable {account.secret_env} is not set; export it with the client secret "
                f"of Globus client {account.client_id}"
            )
    if account.secret_file:
        path = Path(os.path.expanduser(account.secret_file))
        check_private_file(path, f"{where}.secret_file")
        try:
            value = path.read_text().strip()
        except OSError as err:
            raise CredentialsError(f"{where}.secret_file {path}: cannot read it ({err.strerror}); fix its owner or path") from None
        if not value:
            raise CredentialsError(f"{where}.secret_file {path} is empty; write the client secret of Globus client {account.client_id} into it")
        return value
    if account.client_secret is not None:
        return account.client_secret.get_secret_value()
    raise CredentialsError(f"{where}: no secret configured; set secret_env (an environment variable) or secret_file (a 0600 file)")


# -- scopes -------------------------------------------------------------------------
def transfer_scope(data_access_collections: Iterable[str] = ()):
    """The Transfer scope, with each mapped collection's data_access scope as a dependency."""
    from globus_sdk.scopes import GCSCollectionScopes, TransferScopes

    deps = [GCSCollectionScopes(c).data_access for c in sorted(set(data_access_collections))]
    return TransferScopes.all.with_dependencies(deps) if deps else TransferScopes.all


def collections_in_scopes(scopes: Iterable[str]) -> list[str]:
    """The collection ids whose data_access scope appears in `scopes` (as Globus lists them in a consent error)."""
    return sorted(set(_DATA_ACCESS_RE.findall(" ".join(scopes))))


def data_access_collections(settings: Settings, endpoints: Iterable[str] | None = None) -> list[str]:
    """Collection ids of the (named, else all) globus endpoints marked as mapped collections."""
    names = settings.endpoints if endpoints is None else endpoints
    return sorted(
        {ep.collection_id for n in names if (ep := settings.endpoints.get(n)) is not None and ep.kind == "globus" and ep.data_access and ep.collection_id}
    )


# -- token cache ---------------------------------------------------------------------
class TokenCache:
    """Access tokens by key in a JSON file created 0600; a file others can read is refused."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self._lock = threading.Lock()

    def _load(self) -> dict:
        if not self.path.exists():
            return {}
        check_private_file(self.path, "Globus token cache")
        try:
            return json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            log.warning("ignoring unreadable Globus token cache %s; new tokens will be fetched", self.path)
            return {}

    def get(self, key: str) -> tuple[str, int] | None:
        with self._lock:
            entry = self._load().get(key)
        if not entry or entry.get("expires_at", 0) <= time.time() + 60:
            return None
        return entry["access_token"], int(entry["expires_at"])

    def put(self, key: str, access_token: str, expires_at: int) -> None:
        with self._lock:
            data = self._load()
            data[key] = {"access_token": access_token, "expires_at": int(expires_at)}
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.fchmod(fd, 0o600)  # an older temp file may have had another mode
                with os.fdopen(fd, "w") as f:
                    json.dump(data, f)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            os.replace(tmp, self.path)

    def forget(self, key: str) -> None:
        with self._lock:
            data = self._load()
        if data.pop(key, None) is not None and data:
            for k, v in data.items():
                self.put(k, v["access_token"], v["expires_at"])
        elif not data:
            self.path.unlink(missing_ok=True)


# -- identities ----------------------------------------------------------------------
class ServiceAccountIdentity:
    """A beamline's confidential client; builds TransferClients that renew their own tokens."""

    def __init__(
        self,
        beamline: str,
        account: ServiceAccount,
        *,
        token_cache: TokenCache | None,
        data_access: Iterable[str] = (),
        collection_names: dict[str, str] | None = None,
        own_endpoint: str | None = None,
    ):
        self.beamline = beamline
        self.client_id = account.client_id
        self._account = account
        self.token_cache = token_cache
        self.data_access = sorted(set(data_access))
        self.scope = str(transfer_scope(self.data_access))
        self.collection_names = dict(collection_names or {})  # collection id -> rtlib endpoint name, for messages
        self.own_endpoint = own_endpoint

    @property
    def description(self) -> str:
        return f"the service account (Globus client {self.client_id}) of beamline {self.beamline!r}"

    @property
    def cache_key(self) -> str:
        return f"{self.client_id} {self.scope}"

    def authorizer(self):
        import globus_sdk

        secret = read_client_secret(self._account, beamline=self.beamline)
        auth_client = globus_sdk.ConfidentialAppAuthClient(self.client_id, secret)
        cached = self.token_cache.get(self.cache_key) if self.token_cache is not None else None

        def remember(response) -> None:
            if self.token_cache is None:
                return
            tokens = response.by_resource_server.get(TRANSFER_RESOURCE_SERVER)
            if tokens:
                self.token_cache.put(self.cache_key, tokens["access_token"], tokens["expires_at_seconds"])

        return globus_sdk.ClientCredentialsAuthorizer(
            auth_client,
            self.scope,
            access_token=cached[0] if cached else None,
            expires_at=cached[1] if cached else None,
            on_refresh=remember,
        )

    def transfer_client(self, *, retry_config=None):
        import globus_sdk

        return globus_sdk.TransferClient(authorizer=self.authorizer(), app_name="rtlib", retry_config=retry_config)

    def login_command(self, scopes: Iterable[str]) -> str:
        return self.consent_steps(scopes)

    def consent_steps(self, scopes: Iterable[str]) -> str:
        """What to do so this confidential client holds `scopes`: it cannot consent in a browser, it consents by asking.

        A client-credentials grant consents to every scope the client requests, so a missing data_access
        consent means the config does not make it request that collection's scope (set `data_access = true`),
        or it already does and the collection does not let the client identity in (its administrator's step).
        """
        wanted = collections_in_scopes(scopes)
        steps = []
        for cid in (c for c in wanted if c not in self.data_access):
            name = self.collection_names.get(cid, "<name>")
            steps.append(
                f"set `data_access = true` under [endpoints.{name}] (collection {cid}) in the site config, so the "
                "service account requests that scope with its next token"
            )
        granted = [c for c in wanted if c in self.data_access]
        if granted or not wanted:
            colls = ", ".join(f"{self.collection_names.get(c, c)} ({c})" for c in granted) or "the collections involved"
            steps.append(
                f"the service account already requests {'that scope' if granted else 'its scopes'}; ask the administrator "
                f"of {colls} to let the client identity {self.client_id}@clients.auth.globus.org use the collection "
                "(a role or an identity mapping on the collection)"
            )
        names = [self.collection_names.get(c, "DST_ENDPOINT") for c in wanted] or ["DST_ENDPOINT"]
        src = self.own_endpoint or "SRC_ENDPOINT"
        steps.append(
            f"re-check with `rtlib transfer --beamline {self.beamline} {src}:PATH {names[0]}:DIR/` "
            "(it fails the same way until consent is in place), then `rtlib retry JOB_ID` for each failed job"
        )
        return "; then ".join(steps)


class UserIdentity:
    """A scientist logged in with `rtlib login` (native-app flow, tokens in globus-sdk's JSON storage)."""

    def __init__(self, client_id: str, token_file: Path, *, data_access: Iterable[str] = ()):
        self.client_id = client_id
        self.token_file = Path(token_file)
        self.data_access = sorted(set(data_access))

    description = "your Globus identity (from `rtlib login`)"

    def app(self, *, login_flow: bool = True):
        import globus_sdk
        from globus_sdk.globus_app.config import resolve_by_login_flow
        from globus_sdk.token_storage import JSONTokenStorage

        config = globus_sdk.GlobusAppConfig(
            token_storage=JSONTokenStorage(self.token_file),
            request_refresh_tokens=True,
            token_validation_error_handler=resolve_by_login_flow if login_flow else None,
        )
        return globus_sdk.UserApp("rtlib", client_id=self.client_id, config=config)

    def transfer_client(self, *, retry_config=None, login_flow: bool = False):
        import globus_sdk

        client = globus_sdk.TransferClient(app=self.app(login_flow=login_flow), retry_config=retry_config)
        if self.data_access:
            client.add_app_data_access_scope(self.data_access)
        return client

    def login(self, *, force: bool = False, extra_scopes: Iterable[str] = ()) -> None:
        """Run the native-app login (prints a URL, reads the code) and store the tokens."""
        from globus_sdk.scopes import Scope

        app = self.app()
        scope = transfer_scope(self.data_access)
        extra = [Scope.parse(s) for s in extra_scopes]
        app.add_scope_requirements({TRANSFER_RESOURCE_SERVER: [scope, *extra]})
        app.login(force=force)

    def login_command(self, scopes: Iterable[str]) -> str:
        args = " ".join(f"--scope '{s}'" for s in scopes)
        return f"rtlib login --force {args}".rstrip()

    def consent_steps(self, scopes: Iterable[str]) -> str:
        return f"run `{self.login_command(scopes)}` (it opens the Globus consent page), then `rtlib retry JOB_ID` for each failed job"


def token_file(settings: Settings) -> Path:
    return Path(settings.globus.token_file or settings.workspace / TOKEN_FILE_NAME)


def service_account_identity(settings: Settings, beamline: str) -> ServiceAccountIdentity:
    """The service account of `beamline`, asking for the data_access scopes of the endpoints it may use."""
    bl = settings.beamlines[beamline]
    allowed = bl.allowed_endpoints or [bl.endpoint]
    names = {ep.collection_id: n for n, ep in settings.endpoints.items() if ep.kind == "globus" and ep.collection_id}
    return ServiceAccountIdentity(
        beamline, bl.service_account, token_cache=TokenCache(token_file(settings)),
        data_access=data_access_collections(settings, allowed), collection_names=names, own_endpoint=bl.endpoint,
    )


def check_allowed_endpoints(settings: Settings, beamline: str, src: str, dst: str) -> None:
    """Refuse a transfer of `beamline` touching an endpoint outside its allowed_endpoints."""
    allowed = settings.beamlines[beamline].allowed_endpoints or []
    for name in (src, dst):
        if name not in allowed:
            raise RtlibError(
                f"beamline {beamline!r} (and its service account) may not use endpoint {name!r}; it may use: "
                f"{', '.join(allowed)}. Add {name!r} to beamlines.{beamline}.allowed_endpoints in the site config, "
                "or transfer between endpoints it may use"
            )


def _user_identity(settings: Settings, src: str, dst: str) -> UserIdentity | None:
    if not settings.globus.native_client_id:
        return None
    collections = data_access_collections(settings, [src, dst])
    return UserIdentity(settings.globus.native_client_id, settings.workspace / USER_TOKEN_FILE_NAME, data_access=collections)


def identity_for_endpoints(settings: Settings, src: str, dst: str, beamline: str | None = None):
    """The identity a transfer between two endpoints runs as.

    With `beamline` (a job's beamline, or `rtlib transfer --beamline`): that beamline's service account,
    on the endpoints it may use (`allowed_endpoints`); a beamline with no service account runs as the
    logged-in scientist. Without: the service account of the one beamline whose own `endpoint` is src
    or dst (refused when several beamlines own them: name one with --beamline); else the logged-in
    scientist (native-app client from [globus]).
    """
    if beamline is not None:
        if beamline not in settings.beamlines:
            raise RtlibError(f"unknown beamline {beamline!r}; configured: {', '.join(sorted(settings.beamlines)) or 'none'}")
        check_allowed_endpoints(settings, beamline, src, dst)
        if settings.beamlines[beamline].service_account is not None:
            return service_account_identity(settings, beamline)
        user = _user_identity(settings, src, dst)
        if user is None:
            raise RtlibError(
                f"no Globus identity for beamline {beamline!r}: give it a [beamlines.{beamline}.service_account], "
                "or set [globus] native_client_id and run `rtlib login`"
            )
        return user
    owners = sorted(n for n, bl in settings.beamlines.items() if bl.service_account is not None and bl.endpoint in (src, dst))
    if len(owners) > 1:
        raise RtlibError(
            f"a transfer between {src!r} and {dst!r} could run as the service account of beamline {', '.join(map(repr, owners))}; "
            "say which: give the job a beamline, or pass --beamline NAME to `rtlib transfer`"
        )
    if owners:
        check_allowed_endpoints(settings, owners[0], src, dst)
        return service_account_identity(settings, owners[0])
    user = _user_identity(settings, src, dst)
    if user is not None:
        return user
    raise RtlibError(
        f"no Globus identity for a transfer between {src!r} and {dst!r}: give the beamline owning one of them a "
        "[beamlines.<name>.service_account], or set [globus] native_client_id and run `rtlib login`"
    )
