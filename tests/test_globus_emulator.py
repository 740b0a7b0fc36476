"""The real globus-sdk client and the Globus backend against the loopback emulator: tokens renewed after revocation."""

from __future__ import annotations

import uuid

import pytest

from rtlib import config as cfg
from rtlib.transfer.base import TransferRequest
from rtlib.transfer.factory import make_globus_backend
from rtlib.transfer.globus_emulator import GlobusEmulator, use_emulated_globus

CLIENT_ID = str(uuid.UUID(int=7))
SECRET = "emulator-secret-do-not-leak"


@pytest.fixture
def emulated(tmp_path, monkeypatch):
    raw = cfg.default_config(tmp_path / "ws")
    collections = use_emulated_globus(raw, ("als", "alcf"), beamline="als-demo", client_id=CLIENT_ID, secret_env="RTLIB_TEST_EMU_SECRET")
    settings = cfg.validate(raw)
    cfg.ensure_workspace(settings)
    monkeypatch.setenv("RTLIB_TEST_EMU_SECRET", SECRET)
    with GlobusEmulator(collections, {CLIENT_ID: SECRET}) as emu:
        for k, v in emu.sdk_environment().items():
            monkeypatch.setenv(k, v)
        yield settings, emu


def _copy(backend, settings, name: str, item_id: int):
    src = settings.endpoints["als"].root / "raw" / name
    src.parent.mkdir(parents=True, exist_ok=True)
    src.write_bytes(name.encode() * 1000)
    req = TransferRequest(item_id, "als", f"raw/{name}", "alcf", f"in/{name}", src.stat().st_size)
    return backend.transfer_batch([req])[0]


def test_transfers_go_through_globus_sdk_and_survive_a_revoked_token(emulated):
    settings, emu = emulated
    backend = make_globus_backend(settings)
    try:
        first = _copy(backend, settings, "a.h5", 1)
        assert first.ok, first.error
        assert (settings.endpoints["alcf"].root / "in/a.h5").read_bytes() == b"a.h5" * 1000
        assert emu.counts["token_grants"] == 1 and emu.counts["tasks"] == 1

        emu.expire_tokens()
        second = _copy(backend, settings, "b.h5", 2)
        assert second.ok, second.error
        assert emu.counts["rejected_401"] >= 1  # the old token was refused ...
        assert emu.counts["token_grants"] == 2  # ... and the service account re-authenticated once
        assert (settings.endpoints["alcf"].root / "in/b.h5").exists()
    finally:
        backend.close()


def test_a_wrong_secret_fails_the_item_with_a_reason_and_no_secret(emulated, monkeypatch):
    settings, emu = emulated
    monkeypatch.setenv("RTLIB_TEST_EMU_SECRET", "not-the-secret")
    backend = make_globus_backend(settings)
    try:
        out = _copy(backend, settings, "c.h5", 3)
    finally:
        backend.close()
    assert not out.ok and out.permanent
    assert CLIENT_ID in out.error and "not-the-secret" not in out.error and SECRET not in out.error
    assert emu.counts["files"] == 0


def test_a_missing_source_file_is_reported_per_file(emulated):
    settings, emu = emulated
    backend = make_globus_backend(settings)
    try:
        req = TransferRequest(9, "als", "raw/never-written.h5", "alcf", "in/x.h5", 10)
        out = backend.transfer_batch([req])[0]
    finally:
        backend.close()
    assert not out.ok and out.permanent and "FILE_NOT_FOUND" in out.error and "raw/never-written.h5" in out.error
