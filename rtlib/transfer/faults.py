"""Fault injection for transfers: simulated link failures and corrupted copies.

Used by tests, the demo and ``--faults`` / ``$RTLIB_FAULTS`` to show that the
retry and checksum machinery really delivers every file intact. A backend asks
``next_fault()`` once per copy attempt and then applies what it was told:
``failure()`` to raise mid-copy, ``corrupt(path)`` to flip bytes of the
temporary copy after it is written, so that only the checksum check can catch it.
"""

from __future__ import annotations

import enum
import math
import os
import random
import threading
from pathlib import Path

from ..errors import ConfigError, TransferError

ENV_VAR = "RTLIB_FAULTS"
SPEC_EXAMPLE = "fail=0.2,corrupt=0.1,seed=3"


class Fault(enum.Enum):
    NONE = "none"
    FAIL = "fail"
    CORRUPT = "corrupt"


def _rate(name: str, value: float) -> float:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ValueError(f"{name} must be a probability between 0 and 1, got {value!r}")
    return float(value)


class FaultInjector:
    """Decides, per copy attempt, to fail it (probability `fail_rate`), corrupt it (`corrupt_rate`), or not.

    The two faults are exclusive per attempt, so fail_rate + corrupt_rate must be <= 1.
    Counters count faults actually applied; they are safe to read from any thread.
    """

    def __init__(self, fail_rate: float = 0.0, corrupt_rate: float = 0.0, seed: int | None = None):
        self.fail_rate = _rate("fail_rate", fail_rate)
        self.corrupt_rate = _rate("corrupt_rate", corrupt_rate)
        if self.fail_rate + self.corrupt_rate > 1.0 + 1e-12:
            raise ValueError(f"fail_rate + corrupt_rate must be <= 1 (one fault per attempt), got {fail_rate} + {corrupt_rate}")
        self.seed = seed
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._attempts = 0
        self._failures = 0
        self._corruptions = 0

    # -- counters -------------------------------------------------------------
    @property
    def attempts_seen(self) -> int:
        with self._lock:
            return self._attempts

    @property
    def failures_injected(self) -> int:
        with self._lock:
            return self._failures

    @property
    def corruptions_injected(self) -> int:
        with self._lock:
            return self._corruptions

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {"attempts": self._attempts, "failures": self._failures, "corruptions": self._corruptions}

    # -- decisions --------------------------------------------------------------
    def next_fault(self) -> Fault:
        with self._lock:
            self._attempts += 1
            r = self._rng.random()
        if r < self.fail_rate:
            return Fault.FAIL
        if r < self.fail_rate + self.corrupt_rate:
            return Fault.CORRUPT
        return Fault.NONE

    def failure(self, what: str) -> TransferError:
        """The transient error to raise for an injected link failure (counted here)."""
        with self._lock:
            self._failures += 1
        return TransferError(
            f"injected link failure while copying {what} (fault injection {self.spec}; "
            f"unset ${ENV_VAR} / --faults to turn it off)",
            permanent=False,
        )

    def corrupt(self, path: str | os.PathLike) -> None:
        """Flip a few bytes of `path` in place (an empty file gets one byte appended), counted here."""
        size = Path(path).stat().st_size
        with self._lock:
            self._corruptions += 1
            offsets = sorted({self._rng.randrange(size) for _ in range(min(4, size))}) if size else []
        with open(path, "r+b") as f:
            if not offsets:
                f.seek(0, os.SEEK_END)
                f.write(b"\0")
            for off in offsets:
                f.seek(off)
                byte = f.read(1)
                f.seek(off)
                f.write(bytes([byte[0] ^ 0xFF]))

    # -- spec strings (CLI / environment) -----------------------------------------
    @property
    def spec(self) -> str:
        parts = [f"fail={self.fail_rate:g}", f"corrupt={self.corrupt_rate:g}"]
        if self.seed is not None:
            parts.append(f"seed={self.seed}")
        return ",".join(parts)

    @classmethod
    def from_spec(cls, spec: str) -> "FaultInjector":
        """Parse 'fail=0.2,corrupt=0.1,seed=3' (every key optional). Raises ConfigError naming the bad part."""
        where = f"fault spec {spec!r} (--faults / ${ENV_VAR})"
        kwargs: dict[str, float | int] = {}
        for part in (p.strip() for p in spec.split(",")):
            if not part:
                continue
            key, sep, value = (s.strip() for s in part.partition("="))
            if not sep or not value:
                raise ConfigError(f"{where}: {part!r} is not key=value; write it like {SPEC_EXAMPLE!r}")
            if key not in ("fail", "corrupt", "seed"):
                raise ConfigError(f"{where}: unknown key {key!r}; allowed keys: fail, corrupt, seed (e.g. {SPEC_EXAMPLE!r})")
            try:
                kwargs[key] = int(value) if key == "seed" else float(value)
            except ValueError:
                kind = "an integer" if key == "seed" else "a probability between 0 and 1"
                raise ConfigError(f"{where}: {key}={value!r} must be {kind}") from None
        try:
            return cls(fail_rate=kwargs.get("fail", 0.0), corrupt_rate=kwargs.get("corrupt", 0.0), seed=kwargs.get("seed"))
        except ValueError as err:
            raise ConfigError(f"{where}: {err}") from None

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> "FaultInjector | None":
        """The injector described by $RTLIB_FAULTS, or None when it is unset or empty."""
        spec = (environ if environ is not None else os.environ).get(ENV_VAR, "").strip()
        return cls.from_spec(spec) if spec else None

    def __repr__(self) -> str:
        return f"FaultInjector({self.spec})"
