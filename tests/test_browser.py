"""The lab extension in a real browser: a real `jupyter lab`, a real rtlib agent, system chromium.

These tests need /usr/bin/chromium and npm (to build the extension when its
build is missing or older than its sources); without them they fail with
the command that installs them.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from labserver import LabServer, launch_chromium

pytestmark = pytest.mark.slow

JOB_TIMEOUT_MS = 120_000


def write_saxs_input(ws: Path, rel: str = "raw/scan-000.h5") -> str:
    from rtlib.synth.detector import write_detector_file

    path = ws / "endpoints" / "aps" / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    write_detector_file(path, frames=8, height=64, width=64, seed=3)
    return rel


@pytest.fixture
def lab(tmp_path):
    server = LabServer(tmp_path / "lab")
    with server:
        yield server
    # on failure the logs are in the test's tmp_path (printed below when an assertion fails)


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = launch_chromium(p)
        try:
            yield b
        finally:
            b.close()


def open_lab(browser, lab: LabServer, tmp_path: Path):
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.on("console", lambda m: (tmp_path / "console.log").open("a").write(f"{m.type}: {m.text}\n"))
    page.goto(lab.lab_url(), wait_until="domcontentloaded")
    page.locator("#jp-main-dock-panel").wait_for(timeout=60_000)
    page.locator("#jupyterlab-splash").wait_for(state="detached", timeout=60_000)
    # the extension's icon is in the left side bar once the plugin has activated
    page.locator('.jp-SideBar [data-id="rtlib-jobs"]').wait_for(timeout=60_000)
    return context, page


def run_command(page, label: str) -> None:
    """Run a command through the command palette, as a person would.

    The palette is a modal that closes when its input loses focus, which a
    headless page can do at start-up: open it again until it stays.
    """
    search = page.locator("#command-palette .lm-CommandPalette-input")
    exact = page.locator(".lm-CommandPalette-itemLabel", has_text=re.compile(f"^{re.escape(label)}$"))
    item = page.locator("#command-palette .lm-CommandPalette-item", has=exact).first
    page.bring_to_front()
    for attempt in range(8):
        if not search.is_visible():
            page.locator(".lm-MenuBar-itemLabel", has_text=re.compile("^View$")).click()
            page.locator(".lm-Menu-itemLabel", has_text=re.compile("^Activate Command Palette$")).click()
        try:
            search.wait_for(state="visible", timeout=3_000)
            search.fill(label, timeout=3_000)
            item.click(timeout=5_000)
            return
        except Exception:
            if attempt == 7:
                raise
            page.keyboard.press("Escape")
            page.wait_for_timeout(500)


def row(page, job_id: int):
    return page.locator(f'#rtlib-jobs tr.rtlib-JobRow[data-job-id="{job_id}"]')


def wait_state(page, job_id: int, state: str, timeout_ms: int = JOB_TIMEOUT_MS) -> None:
    page.locator(f'#rtlib-jobs tr.rtlib-JobRow[data-job-id="{job_id}"][data-state="{state}"]').wait_for(timeout=timeout_ms)


def test_panel_launches_saxs_job_watches_it_to_done_and_opens_result(lab, browser, tmp_path):
    rel = write_saxs_input(lab.workspace)
    context, page = open_lab(browser, lab, tmp_path)
    try:
        run_command(page, "rtlib: Show real-time jobs")
        panel = page.locator("#rtlib-jobs")
        panel.wait_for(state="visible")
        # the event stream connects: the panel is live, not polling
        page.locator('#rtlib-jobs .rtlib-StreamBadge[data-mode="live"]').wait_for(timeout=20_000)
        assert panel.locator(".rtlib-JobsPanel-empty").is_visible()

        run_command(page, "rtlib: Launch analysis")
        dialog = page.locator(".rtlib-LaunchDialog")
        dialog.wait_for()
        dialog.locator('select[name="workload"]').select_option("saxs")
        # the form is generated from the saxs JSON Schema
        q_bins = dialog.locator('input[name="params.num_q_bins"]')
        assert q_bins.get_attribute("type") == "number"
        assert q_bins.input_value() == "200"  # the schema's default
        assert q_bins.get_attribute("min") == "2"
        assert dialog.locator('input[name="params.dataset_path"]').input_value() == "/entry/data/data"
        # queues and accounts come from the site
        queues = dialog.locator('select[name="queue"] option').all_text_contents()
        assert any(q.startswith("demand") for q in queues) and any("preemptable" in q for q in queues)
        assert "rtlib::aps" in " ".join(dialog.locator('select[name="account"] option').all_text_contents())

        # the input endpoint is a choice among the server's endpoints (GET endpoints), scratch left out
        endpoint = dialog.locator('select[name="endpoint"]')
        status, listed = lab.api("endpoints")
        assert status == 200
        offered = endpoint.locator("option").evaluate_all("options => options.map(o => o.value)")
        assert offered == [e["name"] for e in listed["endpoints"] if not e["scratch"]] and set(offered) == {"aps", "als", "nsls2"}, offered
        assert "aps-demo" in endpoint.locator('option[value="aps"]').text_content()
        endpoint.select_option("als")
        # naming a beamline picks the endpoint its data is on
        dialog.locator('input[name="beamline"]').fill("aps-demo")
        dialog.locator('input[name="beamline"]').dispatch_event("change")
        assert endpoint.input_value() == "aps"
        dialog.locator('input[name="input"]').fill(rel)

        # an invalid value: the server's 400 message appears next to that field, the dialog stays
        q_bins.fill("1")
        dialog.locator("button.jp-mod-accept").click()
        message = dialog.locator('.rtlib-Field[data-field="params.num_q_bins"] .rtlib-Field-message')
        message.wait_for(timeout=10_000)
        assert re.search(r"num_q_bins.*(greater than or equal to 2)", message.text_content()), message.text_content()
        assert q_bins.get_attribute("aria-invalid") == "true"
        assert dialog.is_visible()
        status, jobs = lab.api("jobs")
        assert status == 200 and jobs["jobs"] == []  # nothing was recorded

        # a bad path is named at the input field
        dialog.locator('input[name="input"]').fill("raw/../../etc/passwd")
        q_bins.fill("50")
        dialog.locator("button.jp-mod-accept").click()
        path_message = dialog.locator('.rtlib-Field[data-field="input"] .rtlib-Field-message')
        path_message.wait_for(timeout=10_000)
        assert ".." in path_message.text_content()
        assert message.text_content() == ""  # the earlier message is gone

        dialog.locator('input[name="input"]').fill(rel)
        dialog.locator("button.jp-mod-accept").click()
        dialog.wait_for(state="detached", timeout=10_000)

        # the job appears and goes to DONE live, without anyone pressing Refresh
        r = row(page, 1)
        r.wait_for(timeout=10_000)
        assert "saxs" in r.locator(".rtlib-JobRow-workload").text_content()
        assert "aps-demo" in r.locator(".rtlib-JobRow-beamline").text_content()
        seen = set()
        deadline = time.monotonic() + JOB_TIMEOUT_MS / 1000
        while time.monotonic() < deadline:
            state = r.get_attribute("data-state")
            seen.add(state)
            if state == "DONE":
                break
            if state in ("FAILED", "CANCELLED"):
                pytest.fail(f"job ended {state}: {lab.api('jobs/1')}\n{lab.logs()}")
            page.wait_for_timeout(100)
        assert r.get_attribute("data-state") == "DONE", f"{seen}\n{lab.logs()}"
        assert len(seen) >= 2, seen  # it was watched moving, not found finished
        status, job = lab.api("jobs/1")
        assert job["state"] == "DONE" and job["params"]["num_q_bins"] == 50 and job["beamline"] == "aps-demo"

        # the finished job's stage bar is full and its rate is known (bytes staged in over wall time)
        assert r.locator(".rtlib-StageBar").get_attribute("aria-valuenow") == "100"
        page.wait_for_function(
            "() => /B\\/s$/.test(document.querySelector('#rtlib-jobs tr[data-job-id=\"1\"] .rtlib-JobRow-rate').textContent)",
            timeout=10_000,
        )
        assert r.locator(".rtlib-CancelButton").count() == 0

        # the details row shows the events and the summary
        r.locator(".rtlib-JobRow-workload").click()
        details = page.locator('#rtlib-jobs tr.rtlib-JobDetail[data-job-id="1"]')
        details.wait_for()
        page.wait_for_function(
            "() => document.querySelectorAll('#rtlib-jobs tr.rtlib-JobDetail .rtlib-JobDetail-events li').length >= 5",
            timeout=10_000,
        )
        assert "num_q_bins=50" in details.text_content()

        page.locator("#rtlib-jobs").screenshot(path=str(tmp_path / "jobs_panel.png"))

        # the dark theme: the panel follows it (it is styled with the theme's variables only)
        colors = "() => { const s = getComputedStyle(document.querySelector('#rtlib-jobs')); return [s.backgroundColor, s.color]; }"
        light = page.evaluate(colors)
        page.locator(".lm-MenuBar-itemLabel", has_text=re.compile("^Settings$")).click()
        page.locator(".lm-Menu-itemLabel", has_text=re.compile("^Theme$")).hover()
        page.locator(".lm-Menu-itemLabel", has_text=re.compile("^JupyterLab Dark$")).click()
        page.wait_for_function("() => document.body.dataset.jpThemeLight === 'false'", timeout=20_000)
        page.wait_for_function(f"() => JSON.stringify(({colors})()) !== {json.dumps(json.dumps(light))}", timeout=20_000)
        dark = page.evaluate(colors)
        expected = page.evaluate("() => { const s = getComputedStyle(document.body); "
                                 "const probe = document.createElement('div'); probe.style.background = 'var(--jp-layout-color1)'; "
                                 "probe.style.color = 'var(--jp-ui-font-color1)'; document.body.append(probe); "
                                 "const c = getComputedStyle(probe); const out = [c.backgroundColor, c.color]; probe.remove(); return out; }")
        assert dark == expected and dark != light, (light, dark, expected)
        page.locator("#rtlib-jobs").screenshot(path=str(tmp_path / "jobs_panel_dark.png"))

        # Open: the result opens in JupyterLab through the document manager
        r.locator(".rtlib-OpenButton").click()
        tab = page.locator(".lm-DockPanel-tabBar .lm-TabBar-tabLabel", has_text="saxs_iq.csv")
        tab.wait_for(timeout=20_000)
        page.locator(".jp-MainAreaWidget:visible").first.wait_for()
        page.screenshot(path=str(tmp_path / "lab_with_result.png"))
    except Exception:
        page.screenshot(path=str(tmp_path / "failure.png"))
        print(lab.logs())
        raise
    finally:
        context.close()


def test_panel_cancel_retry_and_filter(lab, browser, tmp_path):
    rel = write_saxs_input(lab.workspace)
    # a long noop job to act on, and a saxs job that finishes
    status, slow = lab.api("jobs", {"workload": "noop", "input": {"endpoint": "aps", "path": rel}, "params": {"sleep_s": 120}, "beamline": "aps-demo"})
    assert status == 201, slow
    status, quick = lab.api("jobs", {"workload": "saxs", "input": {"endpoint": "aps", "path": rel}, "params": {"num_q_bins": 20}})
    assert status == 201, quick
    context, page = open_lab(browser, lab, tmp_path)
    try:
        page.locator('.jp-SideBar [data-id="rtlib-jobs"]').click()
        wait_state(page, quick["id"], "DONE")
        wait_state(page, slow["id"], "RUNNING")

        row(page, slow["id"]).locator(".rtlib-CancelButton").click()
        wait_state(page, slow["id"], "CANCELLED", 20_000)
        status, job = lab.api(f"jobs/{slow['id']}")
        assert job["state"] == "CANCELLED"

        row(page, slow["id"]).locator(".rtlib-RetryButton").click()
        page.locator(f'#rtlib-jobs tr.rtlib-JobRow[data-job-id="{slow["id"]}"]:not([data-state="CANCELLED"])').wait_for(timeout=20_000)
        assert lab.api(f"jobs/{slow['id']}")[1]["attempts"] <= 1

        # every state can be filtered on, HELD (waiting for node-hours) included
        states = page.locator('#rtlib-jobs select[data-filter="state"] option').evaluate_all("options => options.map(o => o.value)")
        assert set(states) >= {"", "CREATED", "RUNNING", "HELD", "PREEMPTED", "DONE", "FAILED", "CANCELLED"}, states
        # filters go to the server: only DONE jobs, then only noop jobs
        page.locator('#rtlib-jobs select[data-filter="state"]').select_option("DONE")
        page.wait_for_function("() => document.querySelectorAll('#rtlib-jobs tr.rtlib-JobRow').length === 1", timeout=10_000)
        assert row(page, quick["id"]).count() == 1
        page.locator('#rtlib-jobs select[data-filter="state"]').select_option("")
        page.locator('#rtlib-jobs select[data-filter="workload"]').select_option("noop")
        page.wait_for_function("() => document.querySelectorAll('#rtlib-jobs tr.rtlib-JobRow').length === 1", timeout=10_000)
        assert row(page, slow["id"]).count() == 1
        page.locator('#rtlib-jobs select[data-filter="workload"]').select_option("")
        page.locator('#rtlib-jobs select[data-filter="beamline"]').select_option("aps-demo")
        page.wait_for_function("() => document.querySelectorAll('#rtlib-jobs tr.rtlib-JobRow').length === 1", timeout=10_000)

        lab.api(f"jobs/{slow['id']}/cancel", {})
    except Exception:
        page.screenshot(path=str(tmp_path / "failure.png"))
        print(lab.logs())
        raise
    finally:
        context.close()


def test_panel_polls_when_the_event_stream_is_unreachable(lab, browser, tmp_path):
    rel = write_saxs_input(lab.workspace)
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    # The event stream is refused; everything else goes through.
    context.route(re.compile(r".*/rtlib/api/events.*"), lambda route: route.abort())
    page = context.new_page()
    try:
        page.goto(lab.lab_url(), wait_until="domcontentloaded")
        page.locator('.jp-SideBar [data-id="rtlib-jobs"]').click(timeout=60_000)
        page.locator('#rtlib-jobs .rtlib-StreamBadge[data-mode="polling"]').wait_for(timeout=30_000)
        status, job = lab.api("jobs", {"workload": "saxs", "input": {"endpoint": "aps", "path": rel}, "params": {"num_q_bins": 20}})
        assert status == 201, job
        row(page, job["id"]).wait_for(timeout=15_000)
        wait_state(page, job["id"], "DONE")
        assert page.locator("#rtlib-jobs .rtlib-StreamBadge").get_attribute("data-mode") == "polling"
    except Exception:
        page.screenshot(path=str(tmp_path / "failure.png"))
        print(lab.logs())
        raise
    finally:
        context.close()


def widget_row(page, label: str):
    """The ipywidgets control whose description is exactly `label`."""
    exact = page.locator("label.widget-label", has_text=re.compile(f"^{re.escape(label)}$"))
    return page.locator(".widget-inline-hbox", has=exact).first


def write_widgets_notebook(path: Path) -> None:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [
        nbformat.v4.new_code_cell("from jupyter_ext.widgets import LaunchWidget, TransferWidget\nlaunch = LaunchWidget()\nlaunch"),
        nbformat.v4.new_code_cell("transfer = TransferWidget()\ntransfer"),
    ]
    nbformat.write(nb, path)


def test_notebook_widgets_launch_and_transfer_in_the_browser(lab, browser, tmp_path):
    """The LaunchWidget and TransferWidget of jupyter_ext.widgets, rendered and used in a notebook."""
    rel = write_saxs_input(lab.workspace)
    write_widgets_notebook(lab.root_dir / "widgets.ipynb")
    context, page = open_lab(browser, lab, tmp_path)
    try:
        page.goto(lab.lab_url("lab/tree/widgets.ipynb"), wait_until="domcontentloaded")
        page.locator(".jp-Notebook").wait_for(timeout=60_000)
        page.locator("#jupyterlab-splash").wait_for(state="detached", timeout=60_000)
        kernel_dialog = page.locator(".jp-Dialog", has_text="Select Kernel")
        try:  # JupyterLab may ask which kernel to start; the notebook names python3
            kernel_dialog.wait_for(timeout=5_000)
            kernel_dialog.locator("button.jp-mod-accept").click()
            kernel_dialog.wait_for(state="detached")
        except Exception:
            pass
        # Run > Run All Cells, from the menu bar
        page.locator(".lm-MenuBar-itemLabel", has_text=re.compile("^Run$")).click()
        page.locator(".lm-Menu-itemLabel", has_text=re.compile("^Run All Cells$")).click()
        submit = page.locator(".jp-OutputArea button.jupyter-button", has_text="Submit")
        submit.wait_for(timeout=90_000)  # the kernel started and the widget rendered

        widget_row(page, "workload").locator("select").select_option("saxs")
        widget_row(page, "num_q_bins").locator("input").wait_for()
        widget_row(page, "input endpoint").locator("select").select_option("aps")
        widget_row(page, "input path").locator("input").fill(rel)
        q_bins = widget_row(page, "num_q_bins").locator("input")
        q_bins.fill("1")
        q_bins.press("Enter")
        submit.click()
        # the refusal is shown next to the parameter's control
        refusal = page.locator(".jp-OutputArea .widget-hbox", has=page.locator("label.widget-label", has_text=re.compile("^num_q_bins$")))
        page.wait_for_function(
            "() => [...document.querySelectorAll('.jp-OutputArea .widget-html')].some(e => /greater than or equal to 2/.test(e.textContent))",
            timeout=20_000,
        )
        assert "greater than or equal to 2" in refusal.first.text_content()
        assert lab.api("jobs")[1]["jobs"] == []

        q_bins.fill("40")
        q_bins.press("Enter")
        submit.click()
        page.locator(".jp-OutputArea .widget-html", has_text=re.compile(r"submitted job 1\b")).wait_for(timeout=20_000)
        status, job = lab.api("jobs/1")
        assert job["workload"] == "saxs" and job["params"]["num_q_bins"] == 40

        # the job the widget made shows in the panel and is done by the agent
        page.locator('.jp-SideBar [data-id="rtlib-jobs"]').click()
        wait_state(page, 1, "DONE")

        # TransferWidget: copy the input to another endpoint; the bar reaches 100 %
        widget_row(page, "from endpoint").locator("select").select_option("aps")
        widget_row(page, "from path").locator("input").fill(rel)
        widget_row(page, "to endpoint").locator("select").select_option("als")
        widget_row(page, "to path").locator("input").fill("incoming/")
        page.locator(".jp-OutputArea button.jupyter-button", has_text="Start").click()
        page.locator(".jp-OutputArea .widget-html", has_text=re.compile(r"succeeded: 1/1 file")).wait_for(timeout=60_000)
        assert page.locator(".jp-OutputArea .widget-progress", has_text="100 %").count() or \
            page.locator(".jp-OutputArea .widget-inline-hbox", has_text="100 %").count()
        copied = lab.workspace / "endpoints" / "als" / "incoming" / Path(rel).name
        assert copied.exists() and copied.read_bytes() == (lab.workspace / "endpoints" / "aps" / rel).read_bytes()
        page.screenshot(path=str(tmp_path / "widgets.png"))
    except Exception:
        page.screenshot(path=str(tmp_path / "failure.png"))
        print(lab.logs())
        raise
    finally:
        context.close()


def test_styles_use_theme_variables_only():
    """No colour of our own: every colour comes from a --jp-* variable, so every theme looks native."""
    from labserver import EXT_DIR

    css = (EXT_DIR / "style" / "base.css").read_text()
    body = re.sub(r"/\*.*?\*/", "", css, flags=re.S)
    assert not re.findall(r"#[0-9a-fA-F]{3,8}\b|\brgba?\(|\bhsla?\(", body)
    for prop, value in re.findall(r"(?:^|[;{\s])(background(?:-color)?|color|border(?:-(?:top|right|bottom|left))?(?:-color)?|outline(?:-color)?|fill)\s*:\s*([^;]+);", body):
        for word in re.findall(r"\b[a-z]+\b", re.sub(r"var\([^)]*\)", "", value)):
            assert word in {"solid", "none", "transparent", "inherit", "px"}, f"{prop}: {value}"
