"""Site config: the embedded default, TOML files, and errors a person can act on."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from rtlib import config as cfg
from rtlib.errors import ConfigError, EndpointError

REPO = Path(__file__).resolve().parents[1]

# A complete site file: a Globus scratch, PBS compute, a service account, a suballocation.
SITE_TOML = """\
workspace = "{ws}"
store_url = "postgresql+psycopg://rtlib:hunter2@db.example.org:5432/rtlib"

[facilities.aps]
title = "Advanced Photon Source"

[facilities.alcf]
title = "Argonne Leadership Computing Facility"

[endpoints.aps]
kind = "local"
root = "{ws}/aps"
facility = "aps"
link_mbps = 276

[endpoints.alcf]
kind = "globus"
collection_id = "9d6d994a-6d04-11e5-ba46-22000b92c6ec"
base_path = "/eagle/xpcs"
facility = "alcf"

[beamlines.8-id-i]
facility = "aps"
endpoint = "aps"
account = "xpcs::8-id-i"

[beamlines.8-id-i.service_account]
client_id = "0c2ad5a6-cc1c-4d0a-8e2a-8a8d6f0e6b1f"
secret_env = "RTLIB_8ID_SECRET"

[sites.polaris]
compute = "pbs"
scratch_endpoint = "alcf"
queues = [
  {{ name = "demand", max_nodes = 4, max_walltime_min = 30 }},
  {{ name = "preemptable", max_nodes = 10, max_walltime_min = 1440, preemptable = true }},
]

[accounts]
"xpcs" = {{ node_hours = 5000 }}
"xpcs::8-id-i" = {{ node_hours = 250.5 }}

[agent]
lease_s = 10
batch_bytes = 1000000
"""


@pytest.fixture
def clean_env(tmp_path, monkeypatch):
    """No RTLIB_* variables and an empty working directory."""
    for var in ("RTLIB_CONFIG", "RTLIB_WORKSPACE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def site_file(clean_env) -> Path:
    path = clean_env / "site.toml"
    path.write_text(SITE_TOML.format(ws=clean_env / "ws"))
    return path


def load_error(path: Path, text: str) -> str:
    """Write `text` to `path`, load it, and return the message of the single ConfigError it must raise."""
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        cfg.load(path)
    err = info.value
    assert err.__cause__ is None and err.__suppress_context__, "the pydantic/TOML traceback must not be chained on"
    return str(err)


# -- the embedded default ---------------------------------------------------------
def test_default_has_three_beamlines_and_the_facility_under_one_workspace(settings, tmp_path):
    ws = tmp_path / "ws"
    assert settings.workspace == ws
    assert set(settings.endpoints) == {"aps", "als", "nsls2", "alcf"}
    for name, ep in settings.endpoints.items():
        assert ep.kind == "local"
        assert ep.root == ws / "endpoints" / name
        assert ep.root.is_dir(), "ensure_workspace creates every local root"
        assert ep.facility in settings.facilities
    assert set(settings.facilities) == {"aps", "als", "nsls2", "alcf"}
    assert settings.store == f"sqlite:///{ws / 'rtlib.db'}"


def test_default_local_site_and_queues(settings):
    assert list(settings.sites) == ["local"]
    site = settings.site("local")
    assert site.compute == "local" and site.scratch_endpoint == "alcf" and site.workers >= 1
    queues = {q.name: q for q in site.queues}
    assert set(queues) == {"demand", "preemptable"}
    assert not queues["demand"].preemptable
    assert queues["preemptable"].preemptable


def test_default_accounts_have_a_suballocation_per_beamline(settings):
    assert "rtlib" in settings.accounts
    for name in ("aps", "als", "nsls2"):
        sub = f"rtlib::{name}"
        assert settings.accounts[sub].node_hours > 0
        assert settings.beamlines[f"{name}-demo"].account == sub
        assert settings.beamlines[f"{name}-demo"].endpoint == name
    subs = sum(a.node_hours for n, a in settings.accounts.items() if "::" in n)
    assert subs <= settings.accounts["rtlib"].node_hours


def test_default_agent_settings(settings):
    assert settings.agent.batch_bytes == 15 * 10**9  # Balsam's Globus sweet spot
    assert settings.agent.lease_s > 0 and settings.agent.max_attempts >= 1


def test_default_workspace_comes_from_rtlib_workspace_then_home(clean_env, monkeypatch):
    monkeypatch.setenv("RTLIB_WORKSPACE", str(clean_env / "from-env"))
    assert cfg.load().workspace == clean_env / "from-env"
    monkeypatch.delenv("RTLIB_WORKSPACE")
    monkeypatch.setenv("HOME", str(clean_env / "home"))
    assert cfg.load().workspace == clean_env / "home/.local/share/rtlib"


def test_ensure_workspace_is_idempotent(settings):
    cfg.ensure_workspace(settings)
    cfg.ensure_workspace(settings)
    assert settings.workspace.is_dir()


def test_unknown_site_and_endpoint_names_list_the_configured_ones(settings):
    with pytest.raises(ConfigError, match="polaris.*configured sites: local"):
        settings.site("polaris")
    with pytest.raises(EndpointError, match="'ssrl'.*aps"):
        settings.endpoint("ssrl")


# -- loading a file ---------------------------------------------------------------------
def test_load_a_site_file(site_file, clean_env):
    s = cfg.load(site_file)
    assert s.workspace == clean_env / "ws"
    assert s.store == "postgresql+psycopg://rtlib:hunter2@db.example.org:5432/rtlib"
    alcf = s.endpoint("alcf")
    assert (alcf.kind, alcf.collection_id, alcf.base_path) == ("globus", "9d6d994a-6d04-11e5-ba46-22000b92c6ec", "/eagle/xpcs")
    assert s.endpoint("aps").link_mbps == 276
    bl = s.beamlines["8-id-i"]
    assert bl.account == "xpcs::8-id-i"
    assert bl.service_account.client_id.startswith("0c2ad5a6") and bl.service_account.secret_env == "RTLIB_8ID_SECRET"
    site = s.site("polaris")
    assert site.compute == "pbs"
    assert [(q.name, q.max_nodes, q.preemptable) for q in site.queues] == [("demand", 4, False), ("preemptable", 10, True)]
    assert s.accounts["xpcs::8-id-i"].node_hours == 250.5
    assert (s.agent.lease_s, s.agent.batch_bytes, s.agent.transfers_in_flight) == (10, 1_000_000, 4)  # unset keys keep defaults


def test_workspace_argument_overrides_the_file(site_file, clean_env):
    assert cfg.load(site_file, workspace=clean_env / "elsewhere").workspace == clean_env / "elsewhere"


def test_file_without_workspace_gets_the_default_one(site_file, clean_env, monkeypatch):
    monkeypatch.setenv("RTLIB_WORKSPACE", str(clean_env / "env-ws"))
    site_file.write_text("\n".join(site_file.read_text().splitlines()[1:]))  # drop `workspace = ...`
    assert cfg.load(site_file).workspace == clean_env / "env-ws"


def test_the_example_in_docs_config_md_is_valid(clean_env):
    doc = (REPO / "docs" / "config.md").read_text()
    blocks = re.findall(r"```toml\n(.*?)```", doc, flags=re.S)
    assert blocks, "docs/config.md has no ```toml example"
    path = clean_env / "doc-example.toml"
    path.write_text(blocks[0])
    cfg.load(path)


def test_rtlib_config_env_var_is_honoured(site_file, clean_env, monkeypatch):
    assert "polaris" not in cfg.load().sites  # the default
    monkeypatch.setenv("RTLIB_CONFIG", str(site_file))
    assert cfg.config_path() == site_file
    assert "polaris" in cfg.load().sites


def test_lookup_order_explicit_then_env_then_cwd(site_file, clean_env, monkeypatch):
    local = clean_env / "rtlib.toml"
    local.write_text(SITE_TOML.format(ws=clean_env / "ws").replace("[sites.polaris]", "[sites.from-cwd]"))
    assert cfg.config_path() == Path("rtlib.toml")
    assert "from-cwd" in cfg.load().sites
    monkeypatch.setenv("RTLIB_CONFIG", str(site_file))
    assert "polaris" in cfg.load().sites
    other = clean_env / "explicit.toml"
    other.write_text(SITE_TOML.format(ws=clean_env / "ws").replace("[sites.polaris]", "[sites.explicit]"))
    assert "explicit" in cfg.load(other).sites


def test_missing_file_named_by_rtlib_config(clean_env, monkeypatch):
    monkeypatch.setenv("RTLIB_CONFIG", str(clean_env / "nope.toml"))
    with pytest.raises(ConfigError) as info:
        cfg.load()
    assert "nope.toml" in str(info.value) and "RTLIB_CONFIG" in str(info.value)


# -- invalid files: one ConfigError naming the file, the key and what is allowed -------------
INVALID = {
    "bad kind literal": (
        ('kind = "globus"', 'kind = "ftp"'),
        ["endpoints.alcf.kind", "'ftp'", "'local' or 'globus'"],
    ),
    "bad compute literal": (
        ('compute = "pbs"', 'compute = "lsf"'),
        ["sites.polaris.compute", "'lsf'", "'local', 'pbs' or 'slurm'"],
    ),
    "unknown key": (
        ('base_path = "/eagle/xpcs"', 'base_path = "/eagle/xpcs"\nbasepath = "/eagle"'),
        ["endpoints.alcf.basepath", "unknown key", "docs/config.md"],
    ),
    "unknown top-level key": (
        ("[agent]", "[agents]"),
        ["agents", "unknown key"],
    ),
    "bad account name": (
        ('"xpcs::8-id-i" = {', '"xpcs:8-id-i" = {'),
        ["accounts", "'xpcs:8-id-i'", "'project' or 'project::suballocation'"],
    ),
    "bad beamline account name": (
        ('account = "xpcs::8-id-i"', 'account = "xpcs::8-id-i::extra"'),
        ["beamlines.8-id-i.account", "'xpcs::8-id-i::extra'", "'project::suballocation'"],
    ),
    "unlisted beamline account": (
        ('account = "xpcs::8-id-i"', 'account = "xpcs::9-id"'),
        ["beamlines.8-id-i.account", "unknown account 'xpcs::9-id'", "known: xpcs, xpcs::8-id-i"],
    ),
    "unknown endpoint of a beamline": (
        ('endpoint = "aps"', 'endpoint = "apss"'),
        ["beamlines.8-id-i.endpoint", "unknown endpoint 'apss'", "known: alcf, aps"],
    ),
    "unknown scratch endpoint": (
        ('scratch_endpoint = "alcf"', 'scratch_endpoint = "theta"'),
        ["sites.polaris.scratch_endpoint", "unknown endpoint 'theta'", "known: alcf, aps"],
    ),
    "unknown facility": (
        ('facility = "aps"\nendpoint', 'facility = "apx"\nendpoint'),
        ["beamlines.8-id-i.facility", "unknown facility 'apx'", "known: alcf, aps"],
    ),
    "local endpoint without root": (
        ('root = "{ws}/aps"\n', ""),
        ["endpoints.aps", "needs `root`"],
    ),
    "globus endpoint without collection": (
        ('collection_id = "9d6d994a-6d04-11e5-ba46-22000b92c6ec"\n', ""),
        ["endpoints.alcf", "needs `collection_id`"],
    ),
    "out of range": (
        ("max_nodes = 4,", "max_nodes = 0,"),
        ["sites.polaris.queues.0.max_nodes", "greater than or equal to 1"],
    ),
    "wrong type": (
        ("lease_s = 10", 'lease_s = "ten"'),
        ["agent.lease_s", "number"],
    ),
    "malformed TOML": (
        ("[sites.polaris]", "[sites.polaris"),
        ["not valid TOML", f"line {SITE_TOML.splitlines().index('[sites.polaris]') + 1}"],
    ),
}


@pytest.mark.parametrize("case", list(INVALID))
def test_invalid_config_gives_one_actionable_error(case, clean_env):
    (old, new), expected = INVALID[case]
    text = SITE_TOML.replace(old, new).format(ws=clean_env / "ws")
    assert text != SITE_TOML.format(ws=clean_env / "ws"), f"case {case!r} did not change the file"
    path = clean_env / "bad.toml"
    msg = load_error(path, text)
    assert str(path) in msg
    for fragment in expected:
        assert fragment in msg, f"{fragment!r} not in:\n{msg}"


def test_every_problem_is_listed_in_the_one_error(clean_env):
    text = (
        SITE_TOML.replace('kind = "globus"', 'kind = "ftp"')
        .replace("[agent]", "[agent]\nspeed = 1")
        .replace("max_nodes = 4,", "max_nodes = -1,")
        .format(ws=clean_env / "ws")
    )
    path = clean_env / "bad.toml"
    msg = load_error(path, text)
    problems = msg.splitlines()[1:]
    assert len(problems) == 3, msg
    assert all(line.startswith(f"{path}: ") for line in problems)
    assert {"endpoints.alcf.kind", "agent.speed", "sites.polaris.queues.0.max_nodes"} == {line.split(": ")[1] for line in problems}


def test_every_dangling_reference_is_listed(clean_env):
    text = (
        SITE_TOML.replace('endpoint = "aps"', 'endpoint = "apss"')
        .replace('scratch_endpoint = "alcf"', 'scratch_endpoint = "theta"')
        .format(ws=clean_env / "ws")
    )
    path = clean_env / "bad.toml"
    msg = load_error(path, text)
    assert f"{path}: beamlines.8-id-i.endpoint: unknown endpoint 'apss'" in msg
    assert f"{path}: sites.polaris.scratch_endpoint: unknown endpoint 'theta'" in msg


def test_invalid_embedded_default_names_its_source():
    raw = cfg.default_config("/tmp/rtlib-never-created")
    raw["sites"]["local"]["compute"] = "k8s"
    with pytest.raises(ConfigError, match=r"<embedded default>: sites.local.compute: got 'k8s'"):
        cfg.validate(raw)


# -- secrets --------------------------------------------------------------------------------
def test_redacted_hides_client_secret_and_store_password(site_file, clean_env):
    text = site_file.read_text().replace('secret_env = "RTLIB_8ID_SECRET"', 'client_secret = "s3cr3t-client-value"')
    site_file.write_text(text)
    s = cfg.load(site_file)
    assert s.beamlines["8-id-i"].service_account.client_secret.get_secret_value() == "s3cr3t-client-value"
    assert "s3cr3t" not in repr(s) and "s3cr3t" not in str(s.model_dump())

    data = cfg.redacted(s)
    dumped = json.dumps(data)
    assert "s3cr3t-client-value" not in dumped
    assert "hunter2" not in dumped
    assert data["beamlines"]["8-id-i"]["service_account"]["client_secret"] == "***"
    assert data["store_url"] == "postgresql+psycopg://rtlib:***@db.example.org:5432/rtlib"
    # everything else is still there
    assert data["beamlines"]["8-id-i"]["service_account"]["client_id"].startswith("0c2ad5a6")
    assert data["sites"]["polaris"]["compute"] == "pbs"
    # redacting a copy leaves the live settings usable
    assert s.store.endswith(":hunter2@db.example.org:5432/rtlib")


@pytest.mark.parametrize(
    "url,hidden",
    [
        ("postgresql+psycopg://rtlib:pw@db/rtlib", "pw@"),
        ("postgresql+psycopg://:pw@db/rtlib", "pw@"),  # a password without a user name
        ("postgresql+psycopg://rtlib:p@ss@db/rtlib", "ss@"),  # an unescaped '@' in the password
        ("postgresql+psycopg://rtlib:pw@db:5432/rtlib?sslmode=require", "pw@"),
    ],
)
def test_redacted_store_url_variants(settings, url, hidden):
    s = settings.model_copy(update={"store_url": url})
    shown = cfg.redacted(s)["store_url"]
    assert hidden not in shown and "***@" in shown
    assert shown.endswith(url.rsplit("@", 1)[1])


def test_redacted_leaves_a_passwordless_url_alone(settings):
    url = "postgresql+psycopg://rtlib@db:5432/rtlib"
    assert cfg.redacted(settings.model_copy(update={"store_url": url}))["store_url"] == url


def test_default_config_has_no_secrets_to_hide(settings):
    assert cfg.redacted(settings) == settings.model_dump(mode="json")
