"""The wheel carries the prebuilt lab extension, and JupyterLab finds it after `pip install` of the wheel alone.

The wheel is built the way a fresh clone builds it: the files git tracks or
would track (``git ls-files -co --exclude-standard``: committed and new
files, not ignored ones, so no node_modules and no prior build of the
extension) are copied to a temporary directory and ``python -m build
--wheel`` runs there, in an isolated build environment, so the
jupyter-builder hook has to install the npm packages and build the
extension itself. This needs the PyPI and npm registries (or their caches).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
import venv
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
LABEXT = "share/jupyter/labextensions/rtlib-jupyter"


def _checkout_copy(dest: Path) -> Path:
    """What a fresh clone of the working tree would hold (tracked and new files, minus ignored ones)."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True, capture_output=True).stdout
    for rel in filter(None, listed.decode().split("\0")):
        src = REPO / rel
        if not src.is_file():  # deleted in the working tree but still tracked
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)
    return dest


@pytest.fixture(scope="module")
def built_wheel(tmp_path_factory):
    base = tmp_path_factory.mktemp("wheel")
    src = _checkout_copy(base / "src")
    assert not (src / "jupyter_ext" / "node_modules").exists() and not (src / "jupyter_ext" / "labextension").exists()
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "build", "--wheel", "--outdir", str(base / "dist"), str(src)],
                          capture_output=True, text=True)
    elapsed = time.monotonic() - started
    (base / "build.log").write_text(proc.stdout + proc.stderr)
    assert proc.returncode == 0, f"wheel build failed ({elapsed:.0f}s):\n{(proc.stdout + proc.stderr)[-6000:]}"
    print(f"wheel built from a clean copy in {elapsed:.0f}s")
    (wheel,) = (base / "dist").glob("rtlib-*.whl")
    return wheel


def test_wheel_contains_the_prebuilt_lab_extension(built_wheel):
    with zipfile.ZipFile(built_wheel) as z:
        names = z.namelist()
        data = [n.split(".data/data/", 1)[1] for n in names if ".data/data/" in n]
        assert f"{LABEXT}/package.json" in data
        assert f"{LABEXT}/install.json" in data
        entries = [n for n in data if n.startswith(f"{LABEXT}/static/remoteEntry") and n.endswith(".js")]
        assert len(entries) == 1, entries
        (pkg_name,) = [n for n in names if n.endswith(f"{LABEXT}/package.json")]
        pkg = json.loads(z.read(pkg_name))
        # the build metadata JupyterLab loads the extension by, pointing at the file shipped
        assert pkg["name"] == "rtlib-jupyter"
        assert pkg["jupyterlab"]["_build"]["load"] == "static/" + entries[0].rsplit("/", 1)[1]
        assert pkg["jupyterlab"]["extension"] is True
        # sources and npm files stay out
        assert not [n for n in names if "node_modules" in n or n.endswith(".ts") or n.endswith("package-lock.json")]
        assert not [n for n in names if n.startswith("jupyter_ext/labextension/")]
        # ... while the Python side of jupyter_ext (server extension, widgets, kernelspec) goes in
        assert {"jupyter_ext/__init__.py", "jupyter_ext/widgets.py", "jupyter_ext/kernels/rtlib/kernel.json"} <= set(names)


def _venv_with_jupyterlab(where: Path) -> Path:
    """A new venv whose own site-packages comes first, with JupyterLab importable from the test's environment.

    The project's own venv has rtlib installed editable, so it cannot be the
    base; installing JupyterLab and rtlib's dependencies afresh would take
    many minutes. Instead a .pth file appends the test environment's
    site-packages to the new venv's path. Plain paths in a .pth file are not
    scanned for further .pth files, so the editable rtlib hook is not
    loaded, and Jupyter's data directories are the new venv's prefix: the
    lab extension can only come from the wheel installed there.
    """
    venv.EnvBuilder(with_pip=True, clear=True).create(where)
    python = where / "bin" / "python"
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "zz_test_environment.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def test_pip_install_of_the_wheel_alone_enables_the_lab_extension(built_wheel, tmp_path):
    python = _venv_with_jupyterlab(tmp_path / "venv")
    subprocess.run([python, "-m", "pip", "install", "--quiet", "--no-deps", str(built_wheel)], check=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("JUPYTER")}
    env["HOME"] = str(tmp_path / "home")
    # rtlib comes from the wheel, not the working tree
    where = subprocess.run([python, "-c", "import rtlib, sys; print(rtlib.__file__); print(sys.prefix)"],
                           check=True, capture_output=True, text=True, env=env, cwd=tmp_path).stdout.split()
    assert where[0].startswith(str(tmp_path / "venv")), where
    installed = tmp_path / "venv" / LABEXT
    assert (installed / "package.json").is_file()

    proc = subprocess.run([python, "-m", "jupyterlab.labextensions", "list"], capture_output=True, text=True, env=env, cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    lines = [line for line in out.splitlines() if "rtlib-jupyter" in line]
    assert lines, out
    line = lines[0]
    assert "enabled" in line and "OK" in line and "disabled" not in line, out
    assert "(python, rtlib)" in line, out  # install.json names the Python package that ships it
    # ... and it is the copy in the new venv that is listed
    section = out.split(str(tmp_path / "venv" / "share" / "jupyter" / "labextensions"))
    assert len(section) == 2 and "rtlib-jupyter" in section[1], out

    # the server extension the panel talks to is enabled by the same install
    proc = subprocess.run([python, "-m", "jupyter_server.extension.serverextension", "list"], capture_output=True, text=True, env=env, cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert re.search(r"jupyter_ext\s.*enabled", out) and re.search(r"jupyter_ext\s.*OK", out), out
