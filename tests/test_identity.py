"""Service-account secrets, the token cache, scopes, and which identity a transfer runs as."""

from __future__ import annotations

import os
import time

import pytest
import responses
from globus_sdk.testing import RegisteredResponse

from rtlib import config as cfg
from rtlib.errors import RtlibError
from rtlib.transfer.identity import (
    CredentialsError,
    ServiceAccountIdentity,
    TokenCache,
    UserIdentity,
    data_access_collections,
    identity_for_endpoints,
    read_client_secret,
    transfer_scope,
)

CLIENT_ID = "9f3a0b8e-58b2-4a5c-9a1e-0f4f4c2b7d11"
COLL = "1c6c2a8c-9d4a-4a55-8d9a-3e1f3b8b7a10"


def account(**kw) -> cfg.ServiceAccount:
    return cfg.ServiceAccount(client_id=CLIENT_ID, **kw)


def test_secret_from_environment(monkeypatch):
    monkeypatch.setenv("APS_8ID_SECRET", "from-env\n")
    assert read_client_secret(account(secret_env="APS_8ID_SECRET"), beamline="8id") == "from-env"
    monkeypatch.delenv("APS_8ID_SECRET")
    with pytest.raises(CredentialsError, match="APS_8ID_SECRET is not set"):
        read_client_secret(account(secret_env="APS_8ID_SECRET"), beamline="8id")


def test_secret_file_must_be_0600(tmp_path):
    path = tmp_path / "8id.secret"
    path.write_text("from-file\n")
    path.chmod(0o644)
    with pytest.raises(CredentialsError) as err:
        read_client_secret(account(secret_file=path), beamline="8id")
    assert f"chmod 600 {path}" in str(err.value) and "0644" in str(err.value) and "from-file" not in str(err.value)
    path.chmod(0o600)
    assert read_client_secret(account(secret_file=path), beamline="8id") == "from-file"


def test_env_wins_over_file_and_missing_everything_is_explained(tmp_path, monkeypatch):
    path = tmp_path / "s"
    path.write_text("file")
    path.chmod(0o600)
    monkeypatch.setenv("S_ENV", "env")
    assert read_client_secret(account(secret_env="S_ENV", secret_file=path), beamline="b") == "env"
    monkeypatch.delenv("S_ENV")
    assert read_client_secret(account(secret_env="S_ENV", secret_file=path), beamline="b") == "file"
    with pytest.raises(CredentialsError, match="secret_env .* or secret_file"):
        read_client_secret(account(), beamline="b")
    with pytest.raises(CredentialsError, match="does not exist"):
        read_client_secret(account(secret_file=tmp_path / "absent"), beamline="b")


def test_token_cache_is_private_and_expires(tmp_path):
    cache = TokenCache(tmp_path / "sub" / "tokens.json")
    cache.put("k", "tok", int(time.time()) + 3600)
    assert os.stat(cache.path).st_mode & 0o777 == 0o600
    assert cache.get("k")[0] == "tok"
    cache.put("old", "tok-old", int(time.time()) + 10)  # inside the renewal margin: treated as expired
    assert cache.get("old") is None and cache.get("absent") is None
    cache.path.chmod(0o644)
    with pytest.raises(CredentialsError, match=f"chmod 600 {cache.path}"):
        cache.get("k")


def test_cached_token_is_used_and_an_expired_one_renewed_and_saved(tmp_path, monkeypatch):
    monkeypatch.setenv("S", "secret")
    cache = TokenCache(tmp_path / "tokens.json")
    ident = ServiceAccountIdentity("8id", account(secret_env="S"), token_cache=cache)
    cache.put(ident.cache_key, "cached", int(time.time()) + 3600)
    responses.start()
    try:
        assert ident.authorizer().get_authorization_header() == "Bearer cached"
        assert len(responses.calls) == 0
        cache.put(ident.cache_key, "cached", int(time.time()) - 1)
        RegisteredResponse(service="auth", method="POST", path="/v2/oauth2/token", json={
            "access_token": "renewed", "expires_in": 7200, "token_type": "Bearer", "scope": ident.scope,
            "resource_server": "transfer.api.globus.org", "other_tokens": []}).add()
        assert ident.authorizer().get_authorization_header() == "Bearer renewed"
        assert "grant_type=client_credentials" in responses.calls[0].request.body
        assert cache.get(ident.cache_key)[0] == "renewed"
    finally:
        responses.stop()
        responses.reset()


def test_scopes_include_data_access_for_mapped_collections():
    assert str(transfer_scope()) == "urn:globus:auth:scope:transfer.api.globus.org:all"
    scope = str(transfer_scope([COLL, COLL]))
    assert scope == f"urn:globus:auth:scope:transfer.api.globus.org:all[https://auth.globus.org/scopes/{COLL}/data_access]"


def _settings(tmp_path, **globus):
    raw = cfg.default_config(tmp_path)
    raw["endpoints"]["aps"] = {"kind": "globus", "collection_id": "6c54cade-bde5-45c1-bdea-f4bd71dba2cc"}
    raw["endpoints"]["alcf"] = {"kind": "globus", "collection_id": COLL, "data_access": True, "root": str(tmp_path / "alcf")}
    raw["endpoints"]["als"] = {"kind": "globus", "collection_id": "2a0e2b1c-0d7e-4f3a-9b8c-7e6d5c4b3a21"}
    raw["beamlines"]["aps-demo"]["service_account"] = {"client_id": CLIENT_ID, "secret_env": "X"}
    raw["globus"] = globus
    return cfg.validate(raw)


def test_identity_is_the_beamline_service_account_else_the_logged_in_user(tmp_path):
    settings = _settings(tmp_path)
    assert data_access_collections(settings) == [COLL] and data_access_collections(settings, ["aps"]) == []
    ident = identity_for_endpoints(settings, "aps", "alcf")
    assert isinstance(ident, ServiceAccountIdentity) and ident.beamline == "aps-demo" and COLL in ident.scope
    assert ident.token_cache.path == tmp_path / "globus-tokens.json"
    with pytest.raises(RtlibError, match="native_client_id.*rtlib login"):
        identity_for_endpoints(settings, "als", "alcf")
    user = identity_for_endpoints(_settings(tmp_path, native_client_id="native-id"), "als", "alcf")
    assert isinstance(user, UserIdentity) and user.data_access == [COLL]
    assert user.login_command(["s1", "s2"]) == "rtlib login --force --scope 's1' --scope 's2'"


def test_redacted_config_hides_an_inline_secret(tmp_path):
    raw = cfg.default_config(tmp_path)
    raw["beamlines"]["aps-demo"]["service_account"] = {"client_id": CLIENT_ID, "client_secret": "inline-s3cret"}
    settings = cfg.validate(raw)
    assert "inline-s3cret" not in repr(settings) and "inline-s3cret" not in str(cfg.redacted(settings))
    assert read_client_secret(settings.beamlines["aps-demo"].service_account, beamline="aps-demo") == "inline-s3cret"
