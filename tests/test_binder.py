"""binder/postBuild, run for real in a fresh virtual environment: afterwards `jupyter kernelspec list` shows rtlib.

To stay cheap the fresh venv sees the dependencies already installed in the test interpreter's
environment (through a .pth line, so the checkout's editable rtlib is NOT visible) and postBuild
is told --no-deps; everything else (building the wheel from this checkout, installing it, the
kernelspec, the server extension's config) is what Binder runs.
"""

from __future__ import annotations

import json
import os
import site
import subprocess
import sys
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_postbuild_installs_rtlib_and_its_kernelspec(tmp_path):
    env_dir = tmp_path / "binder-venv"
    venv.EnvBuilder(with_pip=False, symlinks=True).create(env_dir)
    python = env_dir / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    (Path(purelib) / "_outer_deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")

    env = {k: v for k, v in os.environ.items() if not k.startswith(("RTLIB_", "JUPYTER", "VIRTUAL_ENV", "PYTHON"))}
    env.update(
        PATH=os.pathsep.join([str(env_dir / "bin")] + [p for p in env.get("PATH", "").split(os.pathsep)
                                                        if p and Path(p).resolve() != Path(sys.executable).parent.resolve()]),
        VIRTUAL_ENV=str(env_dir),
        HOME=str(tmp_path / "home"),  # no user-level kernelspec can make the check pass
        JUPYTER_DATA_DIR=str(tmp_path / "home" / "jupyter-data"),
        RTLIB_PIP_INSTALL_OPTIONS="--no-deps",
    )
    if (REPO / "jupyter_ext" / "labextension" / "package.json").is_file():
        env["HATCH_BUILD_NO_HOOKS"] = "true"  # the lab extension is already built: ship it as it is
    proc = subprocess.run(["bash", str(REPO / "binder" / "postBuild")], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    # `jupyter kernelspec list`, run by the fresh environment's own interpreter (`jupyter` would find the
    # outer environment's jupyter-kernelspec script on PATH: the fresh one has no scripts of its deps)
    listed = subprocess.run([str(python), "-m", "jupyter_client.kernelspecapp", "list", "--json"], env=env, capture_output=True,
                            text=True, check=True)
    specs = json.loads(listed.stdout)["kernelspecs"]
    assert "rtlib" in specs, specs
    rtlib_spec = specs["rtlib"]
    assert Path(rtlib_spec["resource_dir"]).is_relative_to(env_dir)
    assert rtlib_spec["spec"]["display_name"] == "Python 3 (rtlib)"
    assert rtlib_spec["spec"]["argv"][0] == str(python) or Path(rtlib_spec["spec"]["argv"][0]).parent == python.parent
    assert "--ext=jupyter_ext" in rtlib_spec["spec"]["argv"]

    # the installed package, not the checkout, is what the environment imports
    where = subprocess.run([str(python), "-c", "import jupyter_ext, rtlib; print(jupyter_ext.__file__); print(rtlib.__file__)"],
                           env=env, cwd=tmp_path, capture_output=True, text=True, check=True).stdout.split()
    assert all(Path(p).is_relative_to(env_dir) for p in where), where
    assert (env_dir / "etc" / "jupyter" / "jupyter_server_config.d" / "rtlib.json").is_file()
    assert (env_dir / "share" / "jupyter" / "labextensions" / "rtlib-jupyter" / "package.json").is_file()
