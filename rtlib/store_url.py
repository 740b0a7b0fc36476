"""The job store's URL: checked before use, and shown only with its passwords replaced by '***'.

A PostgreSQL password can sit in the user info (`postgresql://rtlib:PASSWORD@host/db`) or in the
query string (`?password=`, `?sslpassword=`, which psycopg accepts). Neither may reach a terminal,
a log or an exception: `redact` hides both, `check` refuses a URL SQLAlchemy would split in the
wrong place (an unescaped '@' in the password puts its tail in the host name, and from there in
psycopg's "failed to resolve host" message) without echoing it, and `scrub` removes the secrets
from an exception raised while connecting.
"""

from __future__ import annotations

import contextlib
import re
from typing import Any, Iterator
from urllib.parse import unquote, unquote_plus

import sqlalchemy as sa

from .errors import ConfigError

HIDDEN = "***"
# query parameters holding a secret: password, passwd, pwd, sslpassword, passfile, token, secret ...
SECRET_QUERY_KEY = re.compile(r"pass|pwd|secret|token|credential|auth", re.IGNORECASE)
MIN_SCRUBBED_CHARS = 3  # shorter "secrets" would erase ordinary letters from a message (and guard nothing)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
SHAPE = "DIALECT[+DRIVER]://USER:PASSWORD@HOST:PORT/DATABASE (or sqlite:///PATH)"
ENCODE_HINT = ("percent-encode the user name and password: '@' as %40, ':' as %3A, '/' as %2F "
               "(urllib.parse.quote(password, safe=''))")  # fmt: skip


def _parse(url: str) -> sa.engine.URL | None:
    try:
        return sa.engine.make_url(url)
    except Exception:  # ArgumentError, or ValueError quoting a piece of the URL (a non-numeric port)
        return None


def _suspect(url: sa.engine.URL) -> bool:
    """An '@' after the user info: the password held an unescaped '@' and part of it is now host, port or database."""
    if url.password is None and url.username is None:
        return False
    return any("@" in str(part or "") for part in (url.host, url.database))


def redact(url: str) -> str:
    """`url` with the password and every secret query value replaced by '***'; never raises."""
    if not isinstance(url, str):
        return HIDDEN
    parsed = _parse(url)
    if parsed is None or _suspect(parsed):
        # SQLAlchemy cannot tell where the password ends: hide all up to the last '@' (and any query)
        scheme, sep, rest = url.partition("://")
        head, at, tail = rest.rpartition("@")
        shown = f"{HIDDEN}@{tail}" if at and "?" not in head else HIDDEN
        return _CONTROL.sub("?", f"{scheme[:40] if sep else '?'}://{shown.split('?', 1)[0]}")
    text = parsed.render_as_string(hide_password=True)
    for key in parsed.query:
        if SECRET_QUERY_KEY.search(key):
            text = re.sub(rf"([?&;]{re.escape(key)}=)[^&;#]*", rf"\g<1>{HIDDEN}", text)
    return _CONTROL.sub("?", text)


def secrets(url: str) -> list[str]:
    """Every secret `url` holds, as written and percent-decoded, longest first (for `scrub`)."""
    found: set[str] = set()
    parsed = _parse(url)
    if parsed is not None and parsed.password:
        found.add(str(parsed.password))
    # by hand as well: a malformed URL still holds its password between the first ':' and the last '@' of the user info
    rest = url.split("://", 1)[-1]
    if "@" in rest:
        userinfo = rest[: rest.rfind("@")]
        if ":" in userinfo:
            password = userinfo.split(":", 1)[1]
            found |= {password, *password.split("@")}
    for match in re.finditer(r"[?&;]([^=&;#]+)=([^&;#]*)", url):
        if SECRET_QUERY_KEY.search(match.group(1)):
            found.add(match.group(2))
    found |= {unquote(s) for s in found} | {unquote_plus(s) for s in found}
    return sorted((s for s in found if len(s) >= MIN_SCRUBBED_CHARS), key=len, reverse=True)


def scrub(text: str, url: str) -> str:
    for secret in secrets(url):
        text = text.replace(secret, HIDDEN)
    return text


def scrub_exception(err: BaseException, url: str) -> BaseException:
    """`err` (and every exception it was raised from) with the URL's secrets removed from its arguments."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        current.args = tuple(scrub(a, url) if isinstance(a, str) else a for a in current.args)
        for extra in ("orig",):  # SQLAlchemy's DBAPIError keeps the driver's exception here
            inner = getattr(current, extra, None)
            if isinstance(inner, BaseException) and id(inner) not in seen:
                inner.args = tuple(scrub(a, url) if isinstance(a, str) else a for a in inner.args)
        current = current.__cause__ or current.__context__
    return err


@contextlib.contextmanager
def scrubbed(url: str) -> Iterator[None]:
    """Exceptions leaving the block carry none of `url`'s secrets (a driver's message may quote its DSN or host)."""
    try:
        yield
    except BaseException as err:
        scrub_exception(err, url)
        raise


def check(url: Any) -> None:
    """ConfigError (which never shows the URL) when `url` is not a store URL SQLAlchemy reads as written."""
    if not isinstance(url, str) or not url:
        raise ConfigError(f"store_url must be a non-empty string of the form {SHAPE}")
    bad = _CONTROL.search(url)
    if bad:
        raise ConfigError(f"store_url holds a control character ({bad.group()!r} at position {bad.start()}); remove it")
    if "://" not in url:
        raise ConfigError(f"store_url has no '://': give {SHAPE}")
    try:
        parsed = sa.engine.make_url(url)
    except ValueError:  # int() of the port: its message quotes it, and it may be the tail of the password
        raise ConfigError(f"store_url: the port (after the host's ':') is not a number; if the password holds '@' or ':', "
                          f"{ENCODE_HINT}") from None  # fmt: skip
    except Exception:
        raise ConfigError(f"store_url cannot be parsed; give {SHAPE} and {ENCODE_HINT}") from None
    if _suspect(parsed):
        raise ConfigError(f"store_url: the user name or password holds an unescaped '@' (the host would be read from the "
                          f"password); {ENCODE_HINT}")  # fmt: skip
