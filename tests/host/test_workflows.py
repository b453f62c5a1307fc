"""Every shared workflow in workflows/*.json loads in a real ComfyUI host and passes its prompt validation.

One host (this pack, AnimateDiff-Evolved and the CogVideoXWrapper) serves the module. Before it starts, a
placeholder file is created under its models/ and input/ folders for every file name the workflows pick in a
file combo, so the host lists exactly those names; nothing heavy runs: each converted prompt is accepted by
POST /prompt, then taken off the queue and interrupted (its loaders would fail on the placeholders anyway).
"""

from __future__ import annotations

import json
import math
import struct
import sys
import tempfile
import time
import wave
from pathlib import Path

import pytest
from PIL import Image

from testing.comfy_host import DEFAULT_HOST, REPO_ROOT, ComfyHost, workflow_files
from tiny_checkpoints import comfyui_version

sys.path.insert(0, str(REPO_ROOT / "scripts"))
import demo  # noqa: E402
import workflows as generator  # noqa: E402

GENERATED_ON = DEFAULT_HOST  # scripts/workflows.py runs on the default host
WORKFLOW_FILES = workflow_files()  # on the floor host: those whose nodes and values it has
EXPECTED_FILES = set(generator.WORKFLOWS) | {"demo_embedded.json"}
FRONTEND_ONLY = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
NODE_KEYS = {"id", "type", "pos", "size", "flags", "order", "mode", "inputs", "outputs", "widgets_values"}
WORKFLOW_KEYS = {"nodes", "links", "groups", "extra", "version", "last_node_id", "last_link_id"}
CONTROL_VALUES = {"fixed", "increment", "decrement", "randomize"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
# Where a workflow's node types may come from: core ComfyUI and the three packs (VHS etc. are no dependencies).
ALLOWED_MODULES = ("nodes", "comfy_extras.", "custom_nodes.titan-guide", "custom_nodes.ComfyUI-AnimateDiff-Evolved",
                   "custom_nodes.ComfyUI-CogVideoXWrapper")


def load(path: Path) -> dict:
    """A workflow file as JSON."""
    return json.loads(path.read_text(encoding="utf-8"))


def file_combo_values(workflow_files) -> dict:
    """(folder, file name) pairs the workflows choose in the file combos of generator.FILE_INPUTS."""
    wanted = set()
    for path in workflow_files:
        for node in load(path)["nodes"]:
            for (node_type, input_name), folder in generator.FILE_INPUTS.items():
                if node["type"] != node_type:
                    continue
                # the file combo is the first widget of its node, or where FILE_WIDGET_INDEX says
                index = generator.FILE_WIDGET_INDEX.get((node_type, input_name), 0)
                wanted.add((folder, node["widgets_values"][index]))
    return wanted


def write_placeholder(path: Path) -> None:
    """A tiny valid file of the kind the name says (PNG, WAV) or an empty weight placeholder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".png":
        Image.new("RGB", (8, 8), (200, 40, 40)).save(path)
    elif path.suffix.lower() == ".wav":
        with wave.open(str(path), "wb") as handle:
            handle.setnchannels(1)
            handle.setsampwidth(2)
            handle.setframerate(16000)
            handle.writeframes(b"".join(struct.pack("<h", int(8000 * math.sin(i / 10))) for i in range(1600)))
    else:
        path.write_bytes(b"")


@pytest.fixture(scope="module")
def host():
    """A ComfyUI host whose models/ and input/ hold placeholders of every file the workflows name."""
    with tempfile.TemporaryDirectory(prefix="titan_workflows_host_") as workdir:
        server = ComfyHost(workdir)
        server.prepare()
        for folder, name in file_combo_values(WORKFLOW_FILES):
            root = server.input_dir if folder == "input" else server.models_dir / folder
            write_placeholder(root / name)
        server.start_or_print_log()
        yield server
        server.stop()


@pytest.fixture(scope="module")
def object_info(host) -> dict:
    """/object_info of the host."""
    return host.object_info()


def input_specs(info: dict) -> list:
    """[(name, spec)] in the order the frontend builds widgets: required, then optional."""
    order = info["input_order"]
    specs = {**info["input"].get("required", {}), **info["input"].get("optional", {})}
    return [(name, specs[name]) for name in order.get("required", []) + order.get("optional", [])]


def widget_pairs(node: dict, info: dict) -> list:
    """[(input name, spec, value)] for the node's widgets_values, control_after_generate values as ("<control>")."""
    linked = {entry["name"] for entry in node.get("inputs", []) if entry.get("link") is not None}
    values = list(node["widgets_values"])
    pairs = []
    for name, spec in input_specs(info):
        options = spec[1] if len(spec) > 1 else {}
        if name in linked or not (isinstance(spec[0], list) or spec[0] in WIDGET_TYPES
                                  or options.get("widgetType") in WIDGET_TYPES):  # a multi-type input's widget
            continue
        assert values, f"node {node['id']} ({node['type']}): no widget value left for {name!r}"
        pairs.append((name, spec, values.pop(0)))
        options = spec[1] if len(spec) > 1 else {}
        if options.get("control_after_generate"):
            assert values, f"node {node['id']} ({node['type']}): control_after_generate value missing after {name!r}"
            pairs.append((f"{name}<control>", None, values.pop(0)))
    assert not values, f"node {node['id']} ({node['type']}): {len(values)} widget value(s) too many: {values}"
    return pairs


def check_widget(node: dict, name: str, spec, value) -> None:
    """Assert `value` is valid for input `name` with /object_info spec `spec`."""
    where = f"node {node['id']} ({node['type']}) widget {name!r} = {value!r}"
    if spec is None:
        assert value in CONTROL_VALUES, where
        return
    options = spec[1] if len(spec) > 1 else {}
    kind = spec[0]
    if not (isinstance(kind, list) or kind in WIDGET_TYPES):  # a multi-type input ("FLOAT,INT"): its widget's type
        kind = options.get("widgetType", kind)
    if isinstance(kind, list) or kind == "COMBO":
        choices = kind if isinstance(kind, list) else options.get("options", [])
        assert value in choices, f"{where}: not one of the host's options {choices[:20]}"
        return
    if kind == "BOOLEAN":
        assert isinstance(value, bool), where
    elif kind == "STRING":
        assert isinstance(value, str), where
    elif kind in ("INT", "FLOAT"):
        assert isinstance(value, (int, float)) and not isinstance(value, bool), where
        if kind == "INT":
            assert isinstance(value, int), where
        if "min" in options:
            assert value >= options["min"], f"{where}: below min {options['min']}"
        if "max" in options:
            assert value <= options["max"], f"{where}: above max {options['max']}"


def test_every_expected_workflow_is_there_and_generated_from_the_tables(object_info, comfyui_dir):
    assert {path.name for path in workflow_files(DEFAULT_HOST)} == EXPECTED_FILES
    version = comfyui_version(comfyui_dir)
    if version != GENERATED_ON:
        # /object_info differs between hosts (0.33 names V3 outputs by id, gives SaveImage an output)
        pytest.skip(f"the files are generated from ComfyUI {GENERATED_ON}'s /object_info; this host is {version}")
    for name, workflow in generator.build_all(object_info).items():
        text = (REPO_ROOT / "workflows" / name).read_text(encoding="utf-8")
        assert text == generator.dump(workflow), f"{name} is stale: run scripts/workflows.py"


@pytest.mark.host_compat
@pytest.mark.parametrize("path", WORKFLOW_FILES, ids=lambda p: p.name)
def test_workflow_is_valid_ui_format_for_the_host(path, object_info):
    workflow = load(path)
    assert WORKFLOW_KEYS <= set(workflow), sorted(WORKFLOW_KEYS - set(workflow))
    assert workflow["version"] == 0.4
    nodes = {node["id"]: node for node in workflow["nodes"]}
    assert len(nodes) == len(workflow["nodes"]), "duplicate node ids"
    assert workflow["last_node_id"] >= max(nodes)
    assert workflow["last_link_id"] >= max((link[0] for link in workflow["links"]), default=0)
    notes = [node for node in workflow["nodes"] if node["type"] in ("Note", "MarkdownNote")]
    assert notes and all(isinstance(n["widgets_values"][0], str) and n["widgets_values"][0] for n in notes)

    for node in workflow["nodes"]:
        assert NODE_KEYS <= set(node), f"node {node.get('id')} lacks {sorted(NODE_KEYS - set(node))}"
        if node["type"] in FRONTEND_ONLY:
            continue
        assert node["type"] in object_info, f"node {node['id']}: {node['type']!r} is not registered on the host"
        python_module = object_info[node["type"]].get("python_module", "")
        assert python_module == "nodes" or python_module.startswith(ALLOWED_MODULES[1:]), (node["type"], python_module)
        for name, spec, value in widget_pairs(node, object_info[node["type"]]):
            check_widget(node, name, spec, value)

    # Links: [id, source node, source slot, target node, target slot, type], both ends agree.
    link_ids = [link[0] for link in workflow["links"]]
    assert len(set(link_ids)) == len(link_ids), "duplicate link ids"
    for link_id, source, source_slot, target, target_slot, link_type in workflow["links"]:
        assert source in nodes and target in nodes, f"link {link_id} joins missing nodes"
        source_info = object_info[nodes[source]["type"]]
        assert source_slot < len(source_info["output"]), f"link {link_id}: no output {source_slot} on {source}"
        assert source_info["output"][source_slot] == link_type, f"link {link_id}: type {link_type!r}"
        assert link_id in nodes[source]["outputs"][source_slot]["links"], f"link {link_id} missing at the source"
        target_inputs = nodes[target]["inputs"]
        assert target_slot < len(target_inputs), f"link {link_id}: no input {target_slot} on {target}"
        entry = target_inputs[target_slot]
        assert entry["link"] == link_id, f"link {link_id}: target input {entry['name']!r} names {entry['link']}"
        declared = dict(input_specs(object_info[nodes[target]["type"]]))[entry["name"]][0]
        # a multi-type input ("FLOAT,INT": LTXVEmptyLatentAudio's frame_rate) takes each of its types, as ComfyUI's
        # validate_node_input splits them
        assert declared == "*" or link_type in str(declared).split(","), \
            f"link {link_id}: {link_type} into {entry['name']!r} ({declared})"
    for node in workflow["nodes"]:
        for entry in node["inputs"]:
            if entry.get("link") is not None:
                assert entry["link"] in link_ids, f"node {node['id']} input {entry['name']!r}: unknown link"
        for output in node["outputs"]:
            for link_id in output.get("links") or []:
                assert link_id in link_ids, f"node {node['id']} output {output['name']!r}: unknown link"


def queue_is_empty(host) -> bool:
    """True when nothing runs or waits on the host."""
    queue = host.get_json("/queue")
    return not queue["queue_running"] and not queue["queue_pending"]


@pytest.mark.host_compat
@pytest.mark.parametrize("path", WORKFLOW_FILES, ids=lambda p: p.name)
def test_converted_prompt_passes_the_hosts_validation(path, host, object_info):
    prompt = demo.workflow_to_api(load(path), object_info)
    status, body = host._request("POST", "/prompt", {"prompt": prompt, "client_id": "titan-workflows-test"})
    # take it off the queue at once: the placeholders are not real weights, and nothing heavy should run
    if isinstance(body, dict) and body.get("prompt_id"):
        host._request("POST", "/queue", {"delete": [body["prompt_id"]]})
        host.interrupt()
    assert status == 200, json.dumps(body, indent=1)[:4000]
    assert body["prompt_id"] and not body.get("node_errors"), body
    deadline = time.monotonic() + 60
    while not queue_is_empty(host):
        assert time.monotonic() < deadline, "the cancelled prompt still runs after 60 s"
        host.interrupt()
        time.sleep(0.1)
    assert host.is_running()


def test_the_checks_catch_a_shifted_widget_list_and_a_missing_weight_file(host, object_info):
    workflow = load(REPO_ROOT / "workflows" / "aesthetic_dover_animatediff.json")
    sampler = next(node for node in workflow["nodes"] if node["type"] == "TitanGuideSampler")
    seed_at = 0  # seed is the sampler's first widget; "fixed" follows it
    assert sampler["widgets_values"][seed_at + 1] == "fixed"
    shifted = json.loads(json.dumps(sampler))
    del shifted["widgets_values"][seed_at + 1]
    with pytest.raises(AssertionError, match="widget"):
        for name, spec, value in widget_pairs(shifted, object_info["TitanGuideSampler"]):
            check_widget(shifted, name, spec, value)

    loader = next(node for node in workflow["nodes"] if node["type"] == "TitanDoverLoader")
    loader["widgets_values"][0] = "DOVER_missing.pth"
    status, body = host._request("POST", "/prompt", {"prompt": demo.workflow_to_api(workflow, object_info)})
    assert status == 400 and "DOVER_missing.pth" in json.dumps(body), body
