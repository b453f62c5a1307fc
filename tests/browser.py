"""Drive the real ComfyUI frontend in headless Chromium through playwright (used by tests/browser/test_browser.py).

The browser is the system's Chromium (Debian's `chromium`, which scripts/setup.sh installs) or $TITAN_CHROMIUM;
playwright's own browser download (`playwright install`) is never used. The page is the frontend the host serves
(comfyui-frontend-package); everything is read from the live page: `app`, `LiteGraph`, the DOM.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from testing.comfy_host import REPO_ROOT

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
VIEWPORT = {"width": 1600, "height": 1000}
SCREENSHOT_DIR = REPO_ROOT / "docs" / "workflows"
UPDATE_SCREENSHOTS_ENV = "TITAN_UPDATE_SCREENSHOTS"
# Anything a page event says about this pack contains this (case-insensitive): node types Titan*, the pack
# folder titan-guide, its models folder titan_guide.
PACK_MARKER = "titan"

# Frontend settings (stored by the host for its default user) for a clean, readable canvas: no first-run template
# dialog, no minimap or FPS overlay, full-detail nodes at any zoom (by default all text disappears below about 60 %
# zoom) and quick widget tooltips for the hover check.
FRONTEND_SETTINGS = {
    "Comfy.TutorialCompleted": True,
    "Comfy.Minimap.Visible": False,
    "Comfy.Graph.CanvasInfo": False,
    "LiteGraph.Canvas.MinFontSizeForLOD": 0,
    "LiteGraph.Node.TooltipDelay": 50,
}

APP_READY_JS = ("() => !!(window.app && window.app.graph && window.app.canvas && window.LiteGraph"
                " && window.app.extensionManager)")

# Records the missing node types the frontend itself reports after configuring a graph (the list it would show in
# its "missing nodes" dialog), and hides the menus so screenshots show only the canvas.
SETUP_JS = """async () => {
  window.__titanTest = {configured: 0, missing: null};
  app.registerExtension({
    name: "titan-guide.browser-test",
    afterConfigureGraph(missingNodeTypes) {
      window.__titanTest.configured += 1;
      window.__titanTest.missing = (missingNodeTypes || []).map(m => typeof m === "string" ? m : m.type);
    },
  });
  await app.extensionManager.command.execute("Workspace.ToggleFocusMode");
}"""

# Loads a workflow as a user's drop does, reports every error signal and layout defect, fits the whole graph into
# the view and returns the prompt the UI would queue. Layout boxes: a node's title bar sits above pos; custom-node
# packs get a source badge (BADGE px) above the title; a group's title band is font_size * 1.4 high.
LOAD_WORKFLOW_JS = """async (workflow) => {
  const frame = () => new Promise(resolve => requestAnimationFrame(() => resolve()));
  const BADGE = 20, PAD = 30;
  window.__titanTest.missing = null;
  const configuredBefore = window.__titanTest.configured;
  await app.loadGraphData(workflow);
  await frame(); await frame();
  const graph = app.graph;
  const T = LiteGraph.NODE_TITLE_HEIGHT;
  const intersects = (a, b) => Math.min(a[0] + a[2], b[0] + b[2]) > Math.max(a[0], b[0])
                            && Math.min(a[1] + a[3], b[1] + b[3]) > Math.max(a[1], b[1]);
  const boxes = graph.nodes.map(n => ({
    id: n.id,
    rect: [n.pos[0], n.pos[1] - T, n.size[0], n.size[1] + T],
    content: [n.pos[0], n.pos[1] - T, n.size[0], n.computeSize()[1] + T],
    badge: n.constructor.nodeData && !n.constructor.nodeData.isCoreNode
      ? [n.pos[0], n.pos[1] - T - BADGE, n.size[0], BADGE] : null,
  }));
  const groups = graph.groups.map(g => {
    const font = g.font_size || LiteGraph.DEFAULT_GROUP_FONT_SIZE;
    const r = [...g._bounding];
    return {title: g.title, rect: r, font, band: [r[0], r[1], r[2], font * 1.4]};
  });
  const layout = [];
  for (const a of boxes) for (const b of boxes) {
    if (a.id < b.id && intersects(a.rect, b.rect)) layout.push(`nodes ${a.id} and ${b.id} overlap`);
    if (a.id !== b.id && a.badge && intersects(a.badge, b.content))
      layout.push(`the badge of node ${a.id} covers node ${b.id}`);
  }
  const measure = document.createElement("canvas").getContext("2d");
  for (const g of groups) {
    measure.font = `${g.font}px ${LiteGraph.GROUP_FONT}`;
    const width = measure.measureText(g.title).width + 2 * LGraphGroup.padding;
    if (width > g.rect[2]) layout.push(`group "${g.title}": title ${Math.round(width)} px wide, group ${g.rect[2]} px`);
    for (const n of boxes) {
      const r = n.rect, below = g.band[1] + g.band[3];
      const inside = r[0] >= g.rect[0] && r[1] >= below
        && r[0] + r[2] <= g.rect[0] + g.rect[2] && r[1] + r[3] <= g.rect[1] + g.rect[3];
      if (intersects(r, g.rect) && !inside)
        layout.push(`node ${n.id} crosses the edge or title of group "${g.title}"`);
      if (n.badge && intersects(n.badge, g.band))
        layout.push(`the badge of node ${n.id} covers the title of group "${g.title}"`);
    }
  }
  const all = [...boxes.map(b => b.rect), ...boxes.filter(b => b.badge).map(b => b.badge), ...groups.map(g => g.rect)];
  const x0 = Math.min(...all.map(r => r[0])), y0 = Math.min(...all.map(r => r[1]));
  const x1 = Math.max(...all.map(r => r[0] + r[2])), y1 = Math.max(...all.map(r => r[1] + r[3]));
  app.canvas.ds.fitToBounds([x0 - PAD, y0 - PAD, x1 - x0 + 2 * PAD, y1 - y0 + 2 * PAD], {zoom: 1});
  app.canvas.setDirty(true, true);
  await frame(); await frame();
  const ds = app.canvas.ds, el = app.canvas.canvas;
  const offscreen = boxes.filter(({rect: r}) => {
    const sx = (r[0] + ds.offset[0]) * ds.scale, sy = (r[1] + ds.offset[1]) * ds.scale;
    return sx < 0 || sy < 0 || sx + r[2] * ds.scale > el.clientWidth || sy + r[3] * ds.scale > el.clientHeight;
  }).map(b => b.id);
  const visibleText = selector => [...document.querySelectorAll(selector)]
    .filter(e => e.offsetParent !== null).map(e => e.innerText.trim().slice(0, 400));
  // Values the widgets cannot hold: a combo value outside its list (ComfyUI 0.3.64's POST /prompt does not check
  // the combos of V3 nodes), a number outside its range.
  const badValues = [];
  for (const n of graph.nodes) for (const w of n.widgets || []) {
    const o = w.options || {};
    if (w.type === "combo" && Array.isArray(o.values) && !o.values.includes(w.value))
      badValues.push(`${n.id}:${n.type}.${w.name} = ${JSON.stringify(w.value)} is not one of its options`);
    if (w.type === "number" && ((o.min != null && w.value < o.min) || (o.max != null && w.value > o.max)))
      badValues.push(`${n.id}:${n.type}.${w.name} = ${w.value} is outside [${o.min}, ${o.max}]`);
  }
  const prompt = await app.graphToPrompt();
  return {
    hookCalls: window.__titanTest.configured - configuredBefore,
    badValues,
    missingNodeTypes: window.__titanTest.missing,
    unregistered: graph.nodes.filter(n => !(n.type in LiteGraph.registered_node_types)).map(n => `${n.id}:${n.type}`),
    withErrors: graph.nodes.filter(n => n.has_errors).map(n => `${n.id}:${n.type}`),
    dialogs: visibleText(".p-dialog"),
    toasts: visibleText(".p-toast-message"),
    layout, offscreen, scale: ds.scale,
    output: prompt.output,
    workflow: prompt.workflow,
    // The file the frontend's export writes (JSON.stringify drops undefined fields; the object handed to Python
    // would carry them as null).
    exported: JSON.stringify(prompt.workflow),
  };
}"""

# True once every LoadImage preview of the graph has loaded (the screenshot should show them).
IMAGES_LOADED_JS = """() => app.graph.nodes.filter(n => n.type === "LoadImage")
  .every(n => n.imgs && n.imgs.length && n.imgs.every(img => img.complete && img.naturalWidth > 0))"""

# Adds one node of each given type to an empty graph and reports its widgets as the frontend built them, with the
# tooltip the frontend shows on hover (a widget's own tooltip, else the node definition's input tooltip), then the
# prompt the UI would queue for that graph.
NODE_WIDGETS_JS = """async (types) => {
  const frame = () => new Promise(resolve => requestAnimationFrame(() => resolve()));
  await app.loadGraphData({last_node_id: 0, last_link_id: 0, nodes: [], links: [], groups: [], config: {},
                           extra: {}, version: 0.4});
  const report = {};
  let x = 0;
  for (const type of types) {
    const node = LiteGraph.createNode(type);
    if (!node) { report[type] = null; continue; }
    app.graph.add(node);
    node.pos = [x, 0];
    x += node.size[0] + 60;
    const definition = node.constructor.nodeData;
    report[type] = {
      id: node.id,
      description: definition?.description ?? "",
      widgets: (node.widgets || []).map(w => ({
        name: w.name, type: w.type, value: w.value,
        tooltip: w.tooltip ?? definition?.inputs?.[w.name]?.tooltip ?? "",
        min: w.options?.min ?? null, max: w.options?.max ?? null, step: w.options?.step2 ?? null,
        values: Array.isArray(w.options?.values) ? [...w.options.values] : null,
      })),
    };
  }
  app.canvas.setDirty(true, true);
  await frame(); await frame();
  const prompt = await app.graphToPrompt();
  return {report, output: prompt.output, workflow: prompt.workflow};
}"""

# Scrolls node `id` to (100, 100) at zoom 1 and returns the page coordinates of the middle of its widget `name`.
WIDGET_POINT_JS = """async ([id, name]) => {
  const frame = () => new Promise(resolve => requestAnimationFrame(() => resolve()));
  const node = app.graph.getNodeById(id);
  const ds = app.canvas.ds;
  ds.scale = 1;
  ds.offset = [100 - node.pos[0], 100 - node.pos[1]];
  app.canvas.setDirty(true, true);
  await frame(); await frame();
  const widget = node.widgets.find(w => w.name === name);
  const box = app.canvas.canvas.getBoundingClientRect();
  return [box.left + (node.pos[0] + node.size[0] / 2 + ds.offset[0]) * ds.scale,
          box.top + (node.pos[1] + widget.y + LiteGraph.NODE_WIDGET_HEIGHT / 2 + ds.offset[1]) * ds.scale];
}"""

TOOLTIP_TEXT_JS = "() => document.querySelector('.node-tooltip')?.innerText ?? ''"


def find_chromium() -> str:
    """Path of the Chromium to drive: $TITAN_CHROMIUM, else the first Chromium / Chrome on PATH."""
    configured = os.environ.get("TITAN_CHROMIUM")
    if configured:
        if not (Path(configured).is_file() and os.access(configured, os.X_OK)):
            raise FileNotFoundError(f"TITAN_CHROMIUM={configured} is not an executable file")
        return configured
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    raise FileNotFoundError(
        f"no Chromium on PATH (looked for {', '.join(CHROMIUM_NAMES)}): run `bash scripts/setup.sh`, which installs "
        "Debian's chromium, or set TITAN_CHROMIUM=/path/to/chromium")


@dataclass
class PageEvent:
    """One error-like event of the page: when (phase), what kind, and its text."""

    phase: str
    kind: str
    text: str

    def __str__(self) -> str:
        return f"[{self.phase}] {self.kind}: {self.text}"


class PageLog:
    """Collects page errors, console errors / warnings and failed requests, each tagged with the current phase."""

    def __init__(self, page):
        self.phase = "startup"
        self.events: list = []
        page.on("pageerror", lambda error: self._add("pageerror", f"{error}\n{error.stack or ''}"))
        page.on("console", self._on_console)
        page.on("response", lambda response: self._add(f"http {response.status}", response.url)
                if response.status >= 400 else None)
        page.on("requestfailed", lambda request: self._add("requestfailed", f"{request.url} ({request.failure})"))

    def _add(self, kind: str, text: str) -> None:
        self.events.append(PageEvent(self.phase, kind, text))

    def _on_console(self, message) -> None:
        if message.type in ("error", "warning"):
            location = message.location or {}
            self._add(f"console.{message.type}", f"{message.text} ({location.get('url', '')}:"
                                                 f"{location.get('lineNumber', '')})")

    def during(self, phase: str, kinds=None) -> list:
        """Events of one phase, optionally only of the given kinds (prefix match)."""
        return [event for event in self.events if event.phase == phase
                and (kinds is None or event.kind.startswith(tuple(kinds)))]

    def mentioning_pack(self) -> list:
        """Events, of any phase and kind, whose text names this pack (see PACK_MARKER)."""
        return [event for event in self.events if PACK_MARKER in event.text.lower()]


def wait_until(predicate, timeout: float, what: str, interval: float = 0.1):
    """Poll `predicate` until it returns a true value (returned) or `timeout` seconds pass (AssertionError)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def publish_screenshot(source: Path, name: str) -> Path:
    """Copy a fresh screenshot to docs/workflows/<name> (what the README shows); returns the destination."""
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    destination = SCREENSHOT_DIR / name
    shutil.copyfile(source, destination)
    return destination


def update_screenshots_requested() -> bool:
    """True when $TITAN_UPDATE_SCREENSHOTS asks the browser test to refresh docs/workflows/*.png."""
    value = os.environ.get(UPDATE_SCREENSHOTS_ENV, "")
    if value not in ("", "0", "1"):
        raise ValueError(f"{UPDATE_SCREENSHOTS_ENV} must be 1 (refresh docs/workflows/*.png) or 0/unset, got {value!r}")
    return value == "1"
