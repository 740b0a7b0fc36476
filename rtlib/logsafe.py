"""Log lines that user text cannot forge.

Parameters, paths and exception messages come from beamline users; a newline
in one would start a line of its own in the agent's log ("INFO job 7 DONE"),
and an ANSI escape would rewrite what a terminal shows. The filter here
escapes every control character of a record's formatted message (tab kept)
before any handler writes it, so one record is always one line.
"""

from __future__ import annotations

import logging
import re

_UNSAFE = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r"}


def escape_controls(text: str) -> str:
    """`text` with each control character written as an escape (\\n, \\r, \\x1b, \\u2028); idempotent."""

    def one(m: re.Match) -> str:
        c = m.group()
        return _NAMED.get(c) or (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")

    return _UNSAFE.sub(one, text)


class EscapeControls(logging.Filter):
    """Replaces a record's message by its escaped, already formatted form (tracebacks are left to the handler)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: let the handler report it as usual
            return True
        safe = escape_controls(message)
        if safe != message:
            record.msg, record.args = safe, None
        return True


ESCAPE = EscapeControls()


def protect(logger: logging.Logger | logging.Handler) -> None:
    """Install the filter once on a logger (its own records) or a handler (every record it writes)."""
    if not any(isinstance(f, EscapeControls) for f in logger.filters):
        logger.addFilter(ESCAPE)


def protect_root_handlers() -> None:
    """Escape every record the process's root handlers write (the agent's log, whichever module logs)."""
    for handler in logging.getLogger().handlers:
        protect(handler)
