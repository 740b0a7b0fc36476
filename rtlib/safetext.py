"""The text rtlib hands to a batch scheduler or a shell: one strict pattern per kind of value.

A worker job script is built from the site config and from one job field (its account). qsub and
sbatch read its `#PBS`/`#SBATCH` lines as options and bash runs the rest, so a newline (or CR, NUL,
U+2028 ...), a space or a leading dash in such a value would add lines or options the template
never wrote. Each value is checked against its pattern where it enters (`jobs.submit`, the config
models) and again where the script is built (`compute.jobqueue`). Patterns are ASCII and matched
whole with `re.fullmatch` (a bare `$` also matches before a trailing newline).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .errors import RtlibError

MAX_SHOWN_CHARS = 60  # of a refused value in a message: a 10 MB value must not become a 10 MB error
MAX_LINE_CHARS = 4096  # of one shell or directive line from the config


class FieldError(RtlibError):
    """A job field or config value has the wrong type or text: names the field, the value and what is allowed."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True)
class Pattern:
    regex: str
    allowed: str  # what a person reads in the error

    def fullmatch(self, text: str) -> bool:
        return re.fullmatch(self.regex, text, flags=re.ASCII) is not None


_WORD = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"
NAME = Pattern(_WORD, "1-64 letters, digits, '_', '.' or '-', starting with a letter or digit")
ACCOUNT = Pattern(rf"{_WORD}(::{_WORD})?", "'project' or 'project::suballocation', each 1-64 letters, digits, '_', '.' or '-', "
                                           "starting with a letter or digit")  # fmt: skip
SCHEDULER_NAME = Pattern(r"[A-Za-z0-9_][A-Za-z0-9_.@+-]{0,127}",
                         "1-128 letters, digits, '_', '.', '@', '+' or '-', not starting with '.', '@', '+' or '-'")
# one word a shell passes on as it is: no space, quote, $, `, ;, |, &, <, >, (, ), *, ?, [, ], {, }, ~, !, #, \
WORD = Pattern(r"[A-Za-z0-9_/.][A-Za-z0-9_/.:@+=,%-]{0,1023}",
               "one word of letters, digits and _ / . : @ + = , % - (no space or shell character), not starting with '-'")
# a word of a command rtlib writes (options included): the same characters, a leading '-' allowed
ARG = Pattern(r"[A-Za-z0-9_/.:@+=,%-]{1,1024}", "one word of letters, digits and _ / . : @ + = , % - (no space or shell character)")
HOST = Pattern(r"[A-Za-z0-9_\[][A-Za-z0-9_.:\[\]-]{0,254}", "a host name, IP address or interface name (letters, digits, '_', '.', ':', '-', [ ])")
# a #PBS/#SBATCH line's options: the scheduler parses them, bash sees a comment; one line of printable ASCII
DIRECTIVE = Pattern(rf"-[\x21-\x7e][\x20-\x7e]{{0,{MAX_LINE_CHARS - 2}}}",
                    f"one line of printable ASCII (at most {MAX_LINE_CHARS} characters) starting with '-', e.g. --qos=standby")
# a shell line the operator writes (prologue, node launcher): any printable text, but one line
SHELL_LINE = Pattern(rf"[\x20-\x7e]{{1,{MAX_LINE_CHARS}}}", f"one line of printable ASCII (at most {MAX_LINE_CHARS} characters, "
                                                             "no newline, carriage return, tab or other control character)")  # fmt: skip
WALLTIME = Pattern(r"[0-9]{2,5}:[0-5][0-9]:[0-5][0-9]", "HH:MM:SS")


def shown(value: Any) -> str:
    """`value` for an error message: repr'd (control characters escaped) and cut to MAX_SHOWN_CHARS."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value) if abs(value) < 10**18 else f"an integer of {len(str(abs(value)))} digits"
    if not isinstance(value, str):
        return repr(value) if isinstance(value, (bool, float, type(None))) else f"a value of type {type(value).__name__}"
    if len(value) <= MAX_SHOWN_CHARS:
        return repr(value)
    return f"{value[:MAX_SHOWN_CHARS]!r}... ({len(value)} characters)"


def problem(value: Any, pattern: Pattern) -> str | None:
    """Why `value` is not text of `pattern`, or None when it is."""
    if not isinstance(value, str):
        return f"must be text (a string), got {shown(value)}"
    if pattern.fullmatch(value):
        return None
    return f"{shown(value)} is not allowed: give {pattern.allowed} (pattern {pattern.regex})"


def check(field: str, value: Any, pattern: Pattern) -> str:
    """`value` when it matches `pattern`; else FieldError naming `field`."""
    why = problem(value, pattern)
    if why:
        raise FieldError(field, why)
    return value


def validator(pattern: Pattern):
    """A pydantic AfterValidator function: ValueError (pydantic's way) naming the value and the pattern."""

    def _check(value: Any) -> Any:
        why = problem(str(value), pattern)  # paths arrive as Path
        if why:
            raise ValueError(why)
        return value

    return _check
