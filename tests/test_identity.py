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


# -- beamline -> service account -> allowed endpoints -> suballocation ----------------------
def _shared(tmp_path, **bl9):
    """Two APS beamlines on one collection, each with its own service account and suballocation."""
    raw = cfg.default_config(tmp_path)
    raw["endpoints"]["aps"] = {"kind": "globus", "collection_id": "6c54cade-bde5-45c1-bdea-f4bd71dba2cc"}
    raw["endpoints"]["alcf"] = {"kind": "globus", "collection_id": COLL, "data_access": True, "root": str(tmp_path / "alcf")}
    raw["beamlines"]["aps-demo"]["service_account"] = {"client_id": CLIENT_ID, "secret_env": "X"}
    raw["beamlines"]["aps-9id"] = {"facility": "aps", "endpoint": "aps", "account": "rtlib::aps",
                                   "service_account": {"client_id": OTHER_ID, "secret_env": "Y"}, **bl9}
    return cfg.validate(raw)


OTHER_ID = "0d1e2f3a-4b5c-4d6e-8f70-8192a3b4c5d6"


def test_allowed_endpoints_default_to_the_own_endpoint_and_the_site_scratch(tmp_path):
    settings = cfg.validate(cfg.default_config(tmp_path))
    assert {n: bl.allowed_endpoints for n, bl in settings.beamlines.items()} == {
        "aps-demo": ["aps", "alcf"], "als-demo": ["als", "alcf"], "nsls2-demo": ["nsls2", "alcf"]}
    # an explicit list: the own endpoint is always allowed (and listed first); the scratch is not added
    assert _shared(tmp_path, allowed_endpoints=["als"]).beamlines["aps-9id"].allowed_endpoints == ["aps", "als"]
    shown = cfg.redacted(settings)  # what `rtlib config show` prints
    assert shown["beamlines"]["aps-demo"]["allowed_endpoints"] == ["aps", "alcf"]


def test_an_unknown_allowed_endpoint_is_one_config_error_naming_the_key(tmp_path):
    raw = cfg.default_config(tmp_path)
    raw["beamlines"]["aps-demo"]["allowed_endpoints"] = ["alcf", "alfc"]
    with pytest.raises(cfg.ConfigError) as err:
        cfg.validate(raw, source="site.toml")
    msg = str(err.value)
    assert "site.toml: beamlines.aps-demo.allowed_endpoints[1]: unknown endpoint 'alfc'; known: alcf, als, aps, nsls2" in msg
    assert msg.count("unknown endpoint") == 1


def test_submit_refuses_an_endpoint_the_beamline_may_not_use(tmp_path):
    from rtlib import jobs as jobops
    from rtlib.store import JobStore

    settings = cfg.validate(cfg.default_config(tmp_path))
    store = JobStore(f"sqlite:///{tmp_path / 'jobs.db'}")
    try:
        with pytest.raises(cfg.ConfigError) as err:  # another beamline's data
            jobops.submit(store, settings, "noop", source_endpoint="als", inputs=["raw/x.h5"], beamline="aps-demo")
        assert str(err.value) == (
            "beamline 'aps-demo' may not use endpoint 'als' (the job's source endpoint); it may use: aps, alcf. "
            "Use one of those, or add 'als' to beamlines.aps-demo.allowed_endpoints in the site config")
        with pytest.raises(cfg.ConfigError, match="endpoint 'nsls2' \\(the job's destination endpoint\\).*beamlines.aps-demo.allowed_endpoints"):
            jobops.submit(store, settings, "noop", source_endpoint="aps", dest_endpoint="nsls2", inputs=["raw/x.h5"], beamline="aps-demo")
        assert store.list_jobs() == []  # nothing was recorded
        # without a beamline, or on its allowed endpoints, the job is accepted; its suballocation is charged
        jid = jobops.submit(store, settings, "noop", source_endpoint="aps", inputs=["raw/x.h5"], beamline="aps-demo")
        assert store.get_job(jid).account == "rtlib::aps"
        jobops.submit(store, settings, "noop", source_endpoint="als", inputs=["raw/x.h5"])
        # allowing it in the config lets the same job in
        raw = cfg.default_config(tmp_path)
        raw["beamlines"]["aps-demo"]["allowed_endpoints"] = ["alcf", "als"]
        jobops.submit(store, cfg.validate(raw), "noop", source_endpoint="als", inputs=["raw/x.h5"], beamline="aps-demo")
        assert len(store.list_jobs()) == 3
    finally:
        store.close() if hasattr(store, "close") else None


def test_submit_refuses_a_site_scratch_the_beamline_may_not_use(tmp_path):
    from rtlib import jobs as jobops
    from rtlib.store import JobStore

    raw = cfg.default_config(tmp_path)
    raw["beamlines"]["aps-demo"]["allowed_endpoints"] = []  # its own endpoint only
    store = JobStore(f"sqlite:///{tmp_path / 'jobs.db'}")
    try:
        with pytest.raises(cfg.ConfigError, match="may not use endpoint 'alcf' \\(the job's site 'local' scratch endpoint\\)"):
            jobops.submit(store, cfg.validate(raw), "noop", source_endpoint="aps", inputs=["raw/x.h5"], beamline="aps-demo")
    finally:
        store.close() if hasattr(store, "close") else None


def test_the_identity_is_the_job_beamline_service_account(tmp_path):
    settings = _shared(tmp_path)
    # two beamlines own the aps collection: the job's beamline decides, never the alphabetical first
    for beamline, client in (("aps-demo", CLIENT_ID), ("aps-9id", OTHER_ID)):
        ident = identity_for_endpoints(settings, "aps", "alcf", beamline=beamline)
        assert isinstance(ident, ServiceAccountIdentity) and (ident.beamline, ident.client_id) == (beamline, client)
        assert ident.data_access == [COLL] and ident.collection_names[COLL] == "alcf" and ident.own_endpoint == "aps"
    # with no beamline, the endpoint rule refuses to guess between them
    with pytest.raises(RtlibError, match="'aps-9id', 'aps-demo'.*give the job a beamline, or pass --beamline"):
        identity_for_endpoints(settings, "aps", "alcf")
    # the service account is used on its beamline's allowed endpoints only
    with pytest.raises(RtlibError, match="beamline 'aps-demo' .* may not use endpoint 'als'.*beamlines.aps-demo.allowed_endpoints"):
        identity_for_endpoints(settings, "aps", "als", beamline="aps-demo")
    with pytest.raises(RtlibError, match="unknown beamline 'aps-8id'"):
        identity_for_endpoints(settings, "aps", "alcf", beamline="aps-8id")


def test_a_beamline_without_a_service_account_runs_as_the_logged_in_user(tmp_path):
    settings = _settings(tmp_path)
    with pytest.raises(RtlibError, match=r"no Globus identity for beamline 'als-demo': give it a \[beamlines.als-demo.service_account\]"):
        identity_for_endpoints(settings, "als", "alcf", beamline="als-demo")
    user = identity_for_endpoints(_settings(tmp_path, native_client_id="native-id"), "als", "alcf", beamline="als-demo")
    assert isinstance(user, UserIdentity) and user.client_id == "native-id"
    assert "`rtlib login --force --scope 's1'`" in user.consent_steps(["s1"]) and "rtlib retry JOB_ID" in user.consent_steps(["s1"])
