"""Every workflow in workflows/*.json, and every node of this pack, in a real browser with the real ComfyUI client.

Headless Chromium (playwright, tests/browser.py) opens the frontend that the session's ComfyUI host serves
(comfyui-frontend-package), loads each workflow with `app.loadGraphData` as a drop on the canvas does, and checks:
the frontend knows every node type (its own missing-nodes list, `LiteGraph.registered_node_types`, nodes flagged
`has_errors`, no dialog or toast), no page error or failed request happens while the graph loads, the layout is
readable (no overlaps, the whole graph fits the 1600x1000 view), the UI saves back the same widget values and
links, `app.graphToPrompt()` gives the prompt that scripts/demo.py's `workflow_to_api` builds, and the host's
POST /prompt validation accepts it. The demo workflow is queued from the UI and runs (1 video, 3 steps). Every
Titan* node's widgets show a tooltip, its defaults and the /object_info ranges.

A screenshot per workflow goes to a temporary folder; TITAN_UPDATE_SCREENSHOTS=1 copies them to
docs/workflows/<name>.png (shown in the README) once all checks of that workflow pass.
"""

from __future__ import annotations

import json
import math
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image, ImageSequence
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError
from playwright.sync_api import sync_playwright

from browser import (APP_READY_JS, FRONTEND_SETTINGS, IMAGES_LOADED_JS, LOAD_WORKFLOW_JS, NODE_WIDGETS_JS,
                     SCREENSHOT_DIR, SETUP_JS, TOOLTIP_TEXT_JS, VIEWPORT, WIDGET_POINT_JS, PageLog, find_chromium,
                     publish_screenshot, update_screenshots_requested, wait_until)
from testing.comfy_host import DEFAULT_HOST, HOST_DIRS, HOST_VERSION, REPO_ROOT, workflow_files
from test_workflows import file_combo_values, write_placeholder

sys.path.insert(0, str(REPO_ROOT / "scripts"))
import demo  # noqa: E402

WORKFLOW_FILES = workflow_files()  # on the floor host: those whose nodes and values it has
DEMO_WORKFLOW = REPO_ROOT / "workflows" / "demo_embedded.json"
FRONTEND_ONLY_NODE_TYPES = ("Note", "MarkdownNote")
WIDGET_KINDS = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
CONTROL_VALUES = ("fixed", "increment", "decrement", "randomize")
# Widgets the frontend adds to a node by itself and sends in its prompt although the server declares no such input
# (the server ignores them): PreviewAny's text preview, LoadAudio's player (extension Comfy.AudioWidget).
FRONTEND_ONLY_PROMPT_INPUTS = {"PreviewAny": {"preview"}, "LoadAudio": {"audioUI"}}
# Page events that fail a workflow's check when they happen while it loads (console warnings only when they name
# the pack: the frontend warns about unrelated things, e.g. deprecated settings).
ERROR_KINDS = ("pageerror", "console.error", "http", "requestfailed")
# What the default host's frontend (1.49.6) exports of each workflow, for the floor host's frontend to open.
FRONTEND_SAVED_DIR = REPO_ROOT / HOST_DIRS[DEFAULT_HOST] / "frontend-saved"
# Below this zoom the screenshot's 14 px node text is under 8 px: unreadable.
MIN_READABLE_SCALE = 0.55
# The demo from the UI, kept small: 1 video of 16 frames, 3 sampler steps.
DEMO_OVERRIDES = {"TitanEmbeddedEmptyLatent": {"videos": 1}, "TitanGuideSampler": {"steps": 3}}
DEMO_FRAMES = 16

SET_WIDGETS_JS = """(overrides) => {
  for (const node of app.graph.nodes) {
    for (const [name, value] of Object.entries(overrides[node.type] || {})) {
      const widget = node.widgets.find(w => w.name === name);
      widget.value = value;
      widget.callback?.(value, app.canvas, node);
    }
  }
}"""


VISIBLE_TEXT_JS = """(selector) => [...document.querySelectorAll(selector)]
  .filter(e => e.offsetParent !== null).map(e => e.innerText.trim().slice(0, 400))"""


def close_dialogs_and_toasts(page) -> None:
    """Dismiss what an earlier check may have left open (a dialog, toasts) so every check starts clean."""
    page.evaluate("() => app.extensionManager.toast.removeAll()")
    for _ in range(5):
        if not page.evaluate(VISIBLE_TEXT_JS, ".p-dialog"):
            return
        page.keyboard.press("Escape")
        page.wait_for_timeout(200)
    raise AssertionError(f"a dialog stays open: {page.evaluate(VISIBLE_TEXT_JS, '.p-dialog')}")


def load(path: Path) -> dict:
    """A workflow file as JSON."""
    return json.loads(path.read_text(encoding="utf-8"))


@dataclass
class Frontend:
    """The open ComfyUI page, its event log and the host serving it."""

    page: object
    log: PageLog
    host: object
    browser_version: str


@pytest.fixture(scope="module")
def host_with_workflow_files(comfy_host):
    """The session host, with a placeholder for every model / input file a workflow picks (removed afterwards)."""
    created = []
    for folder, name in sorted(file_combo_values(WORKFLOW_FILES)):
        path = (comfy_host.input_dir if folder == "input" else comfy_host.models_dir / folder) / name
        if not path.exists():
            write_placeholder(path)
            created.append(path)
    yield comfy_host
    for path in created:
        path.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def object_info(host_with_workflow_files) -> dict:
    """/object_info of the host (with the placeholders in its file lists)."""
    return host_with_workflow_files.object_info()


@pytest.fixture(scope="module")
def frontend(host_with_workflow_files):
    """The ComfyUI frontend in headless Chromium, opened on the host (settings for clean screenshots applied)."""
    host = host_with_workflow_files
    status, body = host._request("POST", "/settings", FRONTEND_SETTINGS)
    assert status == 200, f"POST /settings answered {status}: {body}"
    with sync_playwright() as playwright:
        # --no-sandbox: Chromium's sandbox needs user namespaces, which containers and root sessions lack; the page
        # is the local ComfyUI only.
        browser = playwright.chromium.launch(executable_path=find_chromium(), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport=VIEWPORT)
            log = PageLog(page)
            page.goto(host.url)
            page.wait_for_function(APP_READY_JS, timeout=120_000)
            try:  # the app's start-up fetches (templates, user data) end before a test loads a graph and aborts them
                page.wait_for_load_state("networkidle", timeout=30_000)
            except PlaywrightTimeoutError:
                pass
            page.evaluate(SETUP_JS)
            yield Frontend(page, log, host, browser.version)
        finally:
            browser.close()


@pytest.fixture(scope="module")
def screenshot_dir(tmp_path_factory) -> Path:
    """Where this run's screenshots go."""
    return tmp_path_factory.mktemp("workflow_screenshots")


def declared_widgets(info: dict) -> list:
    """[(name, spec)] of a node type's widget inputs in the order the frontend builds them."""
    order = info.get("input_order", {})
    specs = {**info["input"].get("required", {}), **info["input"].get("optional", {})}
    names = list(order.get("required", [])) + list(order.get("optional", []))
    return [(name, specs[name]) for name in names
            if isinstance(specs[name][0], list) or specs[name][0] in WIDGET_KINDS
            or spec_options(specs[name]).get("widgetType") in WIDGET_KINDS]  # a multi-type input's widget


def spec_options(spec: list) -> dict:
    """The options dict of an input spec ({} when absent)."""
    return spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}


def strip_meta(output: dict) -> dict:
    """The frontend's prompt without its `_meta` titles (the server ignores them)."""
    return {node_id: {"class_type": node["class_type"], "inputs": node["inputs"]} for node_id, node in output.items()}


def assert_prompt_matches_converter(browser_output: dict, converted: dict, object_info: dict, where: str) -> None:
    """The UI's prompt = workflow_to_api's, except inputs the frontend adds on its own (FRONTEND_ONLY_PROMPT_INPUTS)."""
    browser_prompt = strip_meta(browser_output)
    assert sorted(browser_prompt, key=int) == sorted(converted, key=int), f"{where}: node ids differ"
    for node_id, node in browser_prompt.items():
        ours = converted[node_id]
        assert node["class_type"] == ours["class_type"], f"{where}: node {node_id}"
        info = object_info[node["class_type"]]["input"]
        declared = {**info.get("required", {}), **info.get("optional", {})}
        shared = {name: value for name, value in node["inputs"].items() if name in declared}
        assert shared == ours["inputs"], (f"{where}: node {node_id} ({node['class_type']}): "
                                          f"UI {shared} vs ours {ours['inputs']}")
        extra = set(node["inputs"]) - set(declared)
        allowed = FRONTEND_ONLY_PROMPT_INPUTS.get(node["class_type"], set())
        assert extra <= allowed, f"{where}: node {node_id} ({node['class_type']}) sends undeclared {extra - allowed}"


def client_payload(output: dict, workflow: dict) -> dict:
    """The body of POST /prompt as the frontend's api.queuePrompt sends it."""
    return {"client_id": uuid.uuid4().hex, "prompt": output, "extra_data": {"extra_pnginfo": {"workflow": workflow}}}


def validate_without_running(host, payload: dict):
    """POST /prompt, then take the prompt off the queue and interrupt it: nothing heavy runs. Returns (status, body)."""
    status, body = host._request("POST", "/prompt", payload)
    prompt_id = body.get("prompt_id") if isinstance(body, dict) else None
    if prompt_id:
        def settled():
            host._request("POST", "/queue", {"delete": [prompt_id]})
            host._request("POST", "/interrupt", {"prompt_id": prompt_id})
            queue = host.get_json("/queue")
            return not any(item[1] == prompt_id for item in queue["queue_running"] + queue["queue_pending"])
        wait_until(settled, 60, f"prompt {prompt_id} to leave the queue")
    return status, body


def distinct_colours(path: Path) -> int:
    """Number of distinct RGB colours of an image (a blank canvas has a handful)."""
    with Image.open(path) as image:
        return len(image.convert("RGB").getcolors(maxcolors=1 << 24))


def test_every_pack_node_type_is_registered_in_the_frontend(frontend, object_info):
    registered = frontend.page.evaluate("() => Object.keys(LiteGraph.registered_node_types)")
    pack_types = sorted(name for name in object_info if name.startswith("Titan"))
    assert len(pack_types) >= 10, pack_types
    assert not set(pack_types) - set(registered), f"not registered by the frontend: {set(pack_types) - set(registered)}"
    frontend_version = frontend.page.evaluate("() => window.__COMFYUI_FRONTEND_VERSION__ ?? ''")
    print(f"\nChromium {frontend.browser_version}, ComfyUI frontend {frontend_version}; page events during start-up "
          "(none names this pack):\n" + "\n".join(f"  {event}" for event in frontend.log.during("startup")))
    assert not frontend.log.mentioning_pack(), "\n".join(map(str, frontend.log.mentioning_pack()))


@pytest.mark.parametrize("path", WORKFLOW_FILES, ids=lambda p: p.name)
def test_workflow_in_the_browser(path, frontend, object_info, screenshot_dir):
    page, log = frontend.page, frontend.log
    log.phase = f"load {path.name}"
    close_dialogs_and_toasts(page)
    workflow = load(path)
    result = page.evaluate(LOAD_WORKFLOW_JS, workflow)
    page.wait_for_function(IMAGES_LOADED_JS, timeout=15_000)
    page.evaluate("() => new Promise(r => { app.canvas.setDirty(true, true); requestAnimationFrame(() => r()); })")
    screenshot = screenshot_dir / f"{path.stem}.png"
    page.screenshot(path=str(screenshot))

    # The frontend knows every node: its own missing-nodes report, the registry, error flags, no dialog / toast.
    assert result["hookCalls"] == 1, "the frontend did not call afterConfigureGraph: its missing-node report is unread"
    assert result["missingNodeTypes"] == [], f"the frontend reports missing node types {result['missingNodeTypes']}"
    assert result["unregistered"] == [] and result["withErrors"] == [], (result["unregistered"], result["withErrors"])
    assert result["dialogs"] == [] and result["toasts"] == [], (result["dialogs"], result["toasts"])
    assert result["badValues"] == [], "\n".join(result["badValues"])
    errors = log.during(log.phase, ERROR_KINDS) + [event for event in log.mentioning_pack() if event.phase == log.phase]
    assert not errors, "\n".join(map(str, errors))

    # A readable picture: nothing overlaps, everything is in view, text large enough, not a blank canvas.
    assert result["layout"] == [], "\n".join(result["layout"])
    assert result["offscreen"] == [], f"nodes outside the view: {result['offscreen']}"
    assert result["scale"] >= MIN_READABLE_SCALE, f"the graph fits only at zoom {result['scale']:.2f}"
    assert distinct_colours(screenshot) > 2000, f"{screenshot} looks blank"

    # The UI saves back what the file says (plus the values of the widgets it adds itself) and the same links.
    saved = {node["id"]: node for node in result["workflow"]["nodes"]}
    assert set(saved) == {node["id"] for node in workflow["nodes"]}
    for node in workflow["nodes"]:
        ui_values, file_values = saved[node["id"]].get("widgets_values", []), node["widgets_values"]
        extras = ([] if node["type"] in FRONTEND_ONLY_NODE_TYPES
                  else demo.frontend_only_widgets(node["type"], object_info[node["type"]]))
        assert ui_values[:len(file_values)] == file_values, f"node {node['id']} ({node['type']}): {ui_values}"
        assert len(ui_values) == len(file_values) + len(extras), (
            f"node {node['id']} ({node['type']}): the UI saves {ui_values}; expected {file_values} + {extras}")
    assert sorted(map(tuple, result["workflow"]["links"])) == sorted(map(tuple, workflow["links"]))
    if HOST_VERSION == DEFAULT_HOST:  # the floor host's frontend opens this export (test below)
        FRONTEND_SAVED_DIR.mkdir(parents=True, exist_ok=True)
        (FRONTEND_SAVED_DIR / path.name).write_text(result["exported"], encoding="utf-8")

    # The prompt the UI would queue is the one our converter builds, from the file and from the UI's own save.
    converted = demo.workflow_to_api(workflow, object_info)
    assert_prompt_matches_converter(result["output"], converted, object_info, path.name)
    assert demo.workflow_to_api(result["workflow"], object_info) == converted

    # The host accepts every node and widget value of the UI's prompt.
    status, body = validate_without_running(frontend.host, client_payload(result["output"], result["workflow"]))
    assert status == 200, json.dumps(body, indent=1)[:4000]
    assert not body.get("node_errors"), body["node_errors"]
    errors = log.during(log.phase, ERROR_KINDS)
    assert not errors, "\n".join(map(str, errors))

    if update_screenshots_requested():
        publish_screenshot(screenshot, screenshot.name)


@pytest.mark.host_compat
@pytest.mark.parametrize("path", WORKFLOW_FILES, ids=lambda p: p.name)
def test_workflow_saved_by_the_default_hosts_frontend_opens_in_this_frontend(path, frontend, object_info):
    """A workflow as the 0.33.0 frontend exports it opens in the floor host's own frontend (0.3.64: 1.27.10): every
    node known, no error, dialog or schema alert, same widget values and links, and that host accepts the prompt
    its UI builds."""
    if HOST_VERSION == DEFAULT_HOST:
        pytest.skip("checks the floor host (TITAN_HOST=0.3.64); the default host exports the files it opens")
    saved = FRONTEND_SAVED_DIR / path.name
    assert saved.is_file(), (f"{saved} is missing: run `.venv/bin/python -m pytest tests/browser` on the "
                             "default host first (it saves what its frontend exports there)")
    pinned = next(line.split("==")[1].strip() for line in
                  (frontend.host.comfyui_dir / "requirements.txt").read_text(encoding="utf-8").splitlines()
                  if line.startswith("comfyui-frontend-package=="))
    assert f"ComfyUI frontend version: {pinned}" in frontend.host.log_text(), "not the host's own frontend"
    page, log = frontend.page, frontend.log
    log.phase = f"load saved {path.name}"
    close_dialogs_and_toasts(page)
    workflow = json.loads(saved.read_text(encoding="utf-8"))
    result = page.evaluate(LOAD_WORKFLOW_JS, workflow)
    assert result["missingNodeTypes"] == [], f"the frontend reports missing node types {result['missingNodeTypes']}"
    assert result["unregistered"] == [] and result["withErrors"] == [], (result["unregistered"], result["withErrors"])
    assert result["dialogs"] == [] and result["toasts"] == [], (result["dialogs"], result["toasts"])
    assert result["badValues"] == [], "\n".join(result["badValues"])
    errors = log.during(log.phase, ERROR_KINDS) + [event for event in log.mentioning_pack() if event.phase == log.phase]
    # 1.27.10 cancels its own fetch of the user's node templates when it rebuilds LoadAudio's audio player from the
    # 1.49.6 save (seen only there): a request the page aborts itself (net::ERR_ABORTED), nothing a user sees.
    errors = [event for event in errors if not (event.kind == "requestfailed" and "/api/userdata/" in event.text
                                                and event.text.endswith("(net::ERR_ABORTED)"))]
    assert not errors, "\n".join(map(str, errors))
    resaved = {node["id"]: node for node in result["workflow"]["nodes"]}
    for node in workflow["nodes"]:  # the node's own widgets (frontend-only ones, e.g. an upload button, may differ)
        values, again = node.get("widgets_values") or [], resaved[node["id"]].get("widgets_values") or []
        extras = ([] if node["type"] in FRONTEND_ONLY_NODE_TYPES
                  else demo.frontend_only_widgets(node["type"], object_info[node["type"]]))
        declared = len(values) - len(extras)
        assert again[:declared] == values[:declared], (node["id"], node["type"], again, values)
    assert sorted(map(tuple, result["workflow"]["links"])) == sorted(map(tuple, workflow["links"]))
    status, body = validate_without_running(frontend.host, client_payload(result["output"], result["workflow"]))
    assert status == 200 and not body.get("node_errors"), json.dumps(body, indent=1)[:4000]


def read_webp_frames(path: Path) -> list:
    """The frames of an animated WEBP as RGB images."""
    with Image.open(path) as image:
        return [frame.convert("RGB") for frame in ImageSequence.Iterator(image)]


def test_demo_workflow_runs_from_the_ui_queue(frontend):
    page, log, host = frontend.page, frontend.log, frontend.host
    log.phase = "queue demo_embedded.json"
    close_dialogs_and_toasts(page)
    result = page.evaluate(LOAD_WORKFLOW_JS, load(DEMO_WORKFLOW))
    assert result["missingNodeTypes"] == [] and result["withErrors"] == []
    page.evaluate(SET_WIDGETS_JS, DEMO_OVERRIDES)
    prompt = page.evaluate("async () => (await app.graphToPrompt()).output")
    for node in prompt.values():
        for name, value in DEMO_OVERRIDES.get(node["class_type"], {}).items():
            assert node["inputs"][name] == value, (node["class_type"], name, node["inputs"][name])

    known = set(host.get_json("/history"))
    started = time.monotonic()
    page.evaluate("async () => { await app.queuePrompt(0, 1); }")  # what the Queue button does

    def new_prompt_id():
        queue = host.get_json("/queue")
        ids = {item[1] for item in queue["queue_running"] + queue["queue_pending"]} | set(host.get_json("/history"))
        return next(iter(ids - known), None)

    try:
        prompt_id = wait_until(new_prompt_id, 15, "the UI's prompt to reach the host's queue")
    except AssertionError as error:
        shown = page.evaluate(VISIBLE_TEXT_JS, ".p-dialog, .p-toast-message")
        raise AssertionError(f"{error}; the page shows: {shown}") from None
    outputs = host.wait(prompt_id, timeout=150)
    seconds = time.monotonic() - started
    assert strip_meta(host.history(prompt_id)["prompt"][2]) == strip_meta(prompt), "the host ran another prompt"

    (unguided,) = host.output_files({"8": outputs["8"]})
    (guided,) = host.output_files({"9": outputs["9"]})
    (loss_plot,) = host.output_files({"10": outputs["10"]})
    unguided_frames, guided_frames = read_webp_frames(unguided), read_webp_frames(guided)
    assert len(unguided_frames) == len(guided_frames) == DEMO_FRAMES
    assert unguided_frames[0].size == guided_frames[0].size == (32, 32)
    difference = sum(abs(a - b) for u, g in zip(unguided_frames, guided_frames)
                     for a, b in zip(u.tobytes(), g.tobytes())) / (DEMO_FRAMES * 32 * 32 * 3)
    assert difference > 1.0, f"guided and unguided videos of the same seed barely differ ({difference:.3f} / 255)"
    with Image.open(loss_plot) as plot:
        assert plot.width > 100 and plot.height > 100
    guided_report, unguided_report = outputs["11"]["text"][0], outputs["12"]["text"][0]
    assert "loss" in guided_report.lower() and "loss" in unguided_report.lower(), guided_report[:500]
    print(f"\ndemo from the UI queue: {seconds:.1f} s, mean |guided - unguided| = {difference:.1f} / 255")
    errors = log.during(log.phase, ERROR_KINDS) + [event for event in log.mentioning_pack() if event.phase == log.phase]
    assert not errors, "\n".join(map(str, errors))


def test_pack_widgets_show_tooltips_defaults_and_ranges(frontend, object_info):
    page, log = frontend.page, frontend.log
    log.phase = "pack nodes"
    close_dialogs_and_toasts(page)
    pack_types = sorted(name for name in object_info if name.startswith("Titan"))
    result = page.evaluate(NODE_WIDGETS_JS, pack_types)
    problems = []
    for node_type in pack_types:
        node = result["report"][node_type]
        assert node is not None, f"LiteGraph.createNode({node_type!r}) failed"
        if not node["description"].strip():
            problems.append(f"{node_type}: no description (the tooltip of its title)")
        widgets = list(node["widgets"])
        for name, spec in declared_widgets(object_info[node_type]):
            where = f"{node_type}.{name}"
            widget = widgets.pop(0) if widgets else None
            if widget is None or widget["name"] != name:
                problems.append(f"{where}: the frontend built {widget and widget['name']!r} here")
                break
            options = spec_options(spec)
            if not widget["tooltip"].strip():
                problems.append(f"{where}: no tooltip")
            kind = "COMBO" if isinstance(spec[0], list) else spec[0]
            if kind == "COMBO":
                choices = spec[0] if isinstance(spec[0], list) else options.get("options", [])
                if widget["values"] != choices:
                    problems.append(f"{where}: combo values {widget['values']} != {choices}")
                default = options.get("default", choices[0] if choices else None)
            else:
                default = options.get("default")
            if kind in ("INT", "FLOAT"):
                for key in ("min", "max"):
                    if key not in options:
                        problems.append(f"{where}: /object_info declares no {key}")
                    elif widget[key] is None or not math.isclose(float(widget[key]), float(options[key])):
                        problems.append(f"{where}: {key} {widget[key]} in the UI, {options[key]} declared")
                if kind == "FLOAT" and "step" not in options:
                    problems.append(f"{where}: /object_info declares no step (the UI would use its own)")
                step = options.get("step", 1)
                if widget["step"] is None or not math.isclose(float(widget["step"]), float(step)):
                    problems.append(f"{where}: step {widget['step']} in the UI, {step} declared")
            if default is None:
                problems.append(f"{where}: /object_info declares no default")
            elif not (widget["value"] == default or (kind == "FLOAT" and math.isclose(widget["value"], default))):
                problems.append(f"{where}: a new node shows {widget['value']!r}, the default is {default!r}")
            if options.get("control_after_generate"):
                control = widgets.pop(0) if widgets else None
                if (control is None or control["name"] != "control_after_generate" or not control["tooltip"].strip()
                        or control["value"] not in CONTROL_VALUES):
                    problems.append(f"{where}: no control_after_generate widget with a tooltip after it")
        if [w["name"] for w in widgets]:
            problems.append(f"{node_type}: widgets the node does not declare: {[w['name'] for w in widgets]}")
    assert not problems, "\n".join(problems)

    # The prompt of a graph of every pack node, as the UI builds it, is what workflow_to_api makes of the UI's save.
    assert_prompt_matches_converter(result["output"], demo.workflow_to_api(result["workflow"], object_info),
                                    object_info, "pack nodes")

    # Hovering a widget shows its tooltip (the first widget of every node type that has one).
    for node_type in pack_types:
        node = result["report"][node_type]
        if not node["widgets"]:
            continue
        widget = node["widgets"][0]
        x, y = page.evaluate(WIDGET_POINT_JS, [node["id"], widget["name"]])
        page.mouse.move(x - 20, y)
        page.mouse.move(x, y, steps=2)
        try:
            page.wait_for_function(f"() => ({TOOLTIP_TEXT_JS})() === {json.dumps(widget['tooltip'])}", timeout=5_000)
        except Exception as error:  # noqa: BLE001 - report what the page shows instead
            raise AssertionError(f"hovering {node_type}.{widget['name']} shows "
                                 f"{page.evaluate(TOOLTIP_TEXT_JS)!r}, not its tooltip") from error
        page.mouse.move(5, 5)
    errors = log.during(log.phase, ERROR_KINDS) + [event for event in log.mentioning_pack() if event.phase == log.phase]
    assert not errors, "\n".join(map(str, errors))


def test_readme_shows_a_screenshot_of_every_workflow():
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    for path in WORKFLOW_FILES:
        picture = SCREENSHOT_DIR / f"{path.stem}.png"
        assert picture.is_file(), f"{picture} is missing: run TITAN_UPDATE_SCREENSHOTS=1 pytest tests/browser/test_browser.py"
        with Image.open(picture) as image:
            assert image.format == "PNG" and image.size == (VIEWPORT["width"], VIEWPORT["height"]), image.size
        assert f"docs/workflows/{picture.name}" in readme, f"README.md does not show {picture.name}"
