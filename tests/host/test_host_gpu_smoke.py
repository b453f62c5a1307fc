"""benchmarks/host_gpu.py --smoke: the GPU benchmark's whole path on the CPU (weights in the real layouts, a real
host per row, the shipped AnimateDiff workflow converted and run as TITAN, KSampler and FreeDoM, the JSON rows)."""

import json
import os
import shutil
import subprocess

from testing.comfy_host import REPO_ROOT, VENDOR_PACKS_DIR, WIDE_HOST_THREADS, default_python, find_comfyui_dir

ROW_KEYS = {"case", "method", "peak_gb", "seconds_warm", "seconds_first", "model_calls", "host"}


def run_smoke(tmp_path, tiny_sd15_checkpoint, *arguments) -> tuple:
    """Run `host_gpu.py --smoke` with `arguments`; (the finished process, the JSON's rows). A TITAN row's
    forward-mode pass through full-size DOVER is most of the time: its hosts (ComfyHost, which keeps a given
    OMP_NUM_THREADS) run on two threads."""
    out = tmp_path / "host_gpu.json"
    command = [default_python(), str(REPO_ROOT / "benchmarks" / "host_gpu.py"), "--smoke", "--comfyui",
               str(find_comfyui_dir()), "--packs", str(VENDOR_PACKS_DIR), "--tiny-base", str(tiny_sd15_checkpoint),
               "--out", str(out), *arguments]
    env = dict(os.environ, OMP_NUM_THREADS=str(WIDE_HOST_THREADS), OMP_WAIT_POLICY="PASSIVE")
    completed = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=REPO_ROOT, env=env)
    assert completed.returncode == 0, completed.stdout[-6000:] + completed.stderr[-4000:]
    return completed, json.loads(out.read_text(encoding="utf-8"))["rows"]


def test_host_gpu_benchmark_smoke_runs_titan_and_ksampler(tmp_path, tiny_sd15_checkpoint):
    """TITAN and KSampler rows (FreeDoM's row, backprop through full-size DOVER and the VAE, takes minutes on a
    shared 2-core CPU: it runs on the GPU only)."""
    completed, rows = run_smoke(tmp_path, tiny_sd15_checkpoint, "--methods", "titan", "ksampler", "--profile")
    assert [row["method"] for row in rows] == ["titan", "ksampler"], rows
    version = (find_comfyui_dir() / "comfyui_version.py").read_text(encoding="utf-8")
    for row in rows:
        assert ROW_KEYS <= set(row), row
        assert row["host"] in version and row["dynamic_vram"] == "off"
        assert row["seconds_first"] > 0 and row["seconds_warm"] > 0
        assert row["seconds_warm_runs"] == [row["seconds_warm"]]  # --smoke: one warm run, its time the median
        if shutil.which("nvidia-smi") is None:
            assert row["peak_gb"] is None  # no nvidia-smi: no GPU figure is made up
        assert isinstance(row["model_calls"], int) and row["model_calls"] >= 1, row
    titan, ksampler = rows
    assert ksampler["model_calls"] == 2  # --smoke: two steps
    assert titan["model_calls"] > ksampler["model_calls"]  # the forward-mode pass and look-ahead call the model too
    # the TITAN row's instruments: sampler time from the report, attention routes, one profiled run by phase
    assert 0 < titan["seconds_first_sampler"] < titan["seconds_first"] and titan["seconds_warm_sampler"] > 0
    assert titan["forward_ad"].startswith("attention calls math "), titan["forward_ad"]  # the CPU's route, no graph
    assert titan["profile"]["phases"]["titan.forward_gradient"]["calls"] >= 1, titan["profile"]
    assert titan["decode_chunk"] == "4 of 4 frame(s) per VAE call (automatic: all at once on the CPU)"
    assert "profile" not in ksampler and "forward_ad" not in ksampler
    assert "ComfyUI" in completed.stdout


def test_host_gpu_smoke_runs_the_imagebind_and_image_workflows(tmp_path, tiny_sd15_checkpoint):
    """The other shipped SD1.5 workflows through the harness, TITAN rows: tiny ImageBind and CLIP vision files in
    their real layouts under the names the workflows ask for, the chirp and style image as their inputs (the CLIP
    style video workflow combines these two rows' paths; the graph test below covers its prompt)."""
    _, rows = run_smoke(tmp_path, tiny_sd15_checkpoint, "--methods", "titan", "--workflows",
                        "audio_imagebind_animatediff", "sd15_image_titan")
    assert [row["workflow"] for row in rows] == ["audio_imagebind_animatediff", "sd15_image_titan"], rows
    for row in rows:
        assert ROW_KEYS <= set(row) and "error" not in row, row
        assert row["model_calls"] > 2 and row["seconds_warm_sampler"] > 0  # guided: more calls than the 2 steps
    video, image = rows
    assert video["case"].startswith("audio_imagebind_animatediff 4x32x32")
    assert video["decode_chunk"].startswith("4 of 4")
    assert image["case"] == "sd15_image_titan 32x32 2 steps" and image["decode_chunk"].startswith("1 of 1")


def test_host_gpu_builds_every_methods_graph_from_the_shipped_workflow(comfy_host, monkeypatch, tmp_path):
    """Each row's prompt is the shipped workflow with the row's change: KSampler in place of the guided sampler, or
    a TitanGuidanceMethod node (FreeDoM, MPGD, exact gradient) into its `method` input; every workflow the harness
    runs asks for the files it writes."""
    import sys

    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    import host_gpu

    info = comfy_host.object_info()
    for workflow, spec in host_gpu.WORKFLOWS.items():  # every workflow's loaders ask for the files the harness writes
        graphs = host_gpu.prompts(info, 4, 32, 2, 42, True, workflow)
        assert set(graphs) == set(host_gpu.METHODS)
        nodes = list(graphs["titan"].values())
        folder, weights, input_file = host_gpu.OBJECTIVE_FILES[spec.objective]
        widgets = {value for node in nodes for value in node["inputs"].values() if isinstance(value, str)}
        assert {spec.checkpoint, weights} <= widgets and (input_file is None or input_file in widgets), workflow
        assert (host_gpu.MOTION_MODULE in widgets) == spec.video, workflow
        (latent,) = [n for n in nodes if n["class_type"] == "EmptyLatentImage"]
        assert (latent["inputs"]["batch_size"] == 4) == spec.video and latent["inputs"]["width"] == 32
    graphs = host_gpu.prompts(info, 4, 32, 2, 42, True)
    for row, method in host_gpu.BASELINES.items():
        sampler = next(node for node in graphs[row].values() if node["class_type"] == "TitanGuideSampler")
        source = graphs[row][sampler["inputs"]["method"][0]]
        assert source["class_type"] == "TitanGuidanceMethod" and source["inputs"]["method"] == method
    assert "TitanGuideSampler" not in {node["class_type"] for node in graphs["ksampler"].values()}
    # --decode-chunks: the titan prompt with the sampler's decode_chunk_frames set, a widget the host knows
    chunked = host_gpu.with_decode_chunk(graphs["titan"], 3)
    (sampler,) = [n for n in chunked.values() if n["class_type"] == "TitanGuideSampler"]
    assert sampler["inputs"]["decode_chunk_frames"] == 3
    spec = comfy_host.object_info()["TitanGuideSampler"]["input"]
    assert "decode_chunk_frames" in {**spec.get("required", {}), **spec.get("optional", {})}
    assert "method" not in next(n for n in graphs["titan"].values() if n["class_type"] == "TitanGuideSampler")["inputs"]
    # each row's host inherits its environment: titan_autotune times every tile with its own empty Triton cache,
    # and the next row gets the defaults back (an unset cache folder stays unset)
    for name in ("TITAN_CUDA_GRAPH", "TITAN_TRITON_AUTOTUNE", "TRITON_CACHE_DIR"):
        monkeypatch.delenv(name, raising=False)
    defaults = {"TITAN_CUDA_GRAPH": "0", "TITAN_TRITON_AUTOTUNE": "0", "TRITON_CACHE_DIR": None}
    host_gpu.set_row_env("titan_autotune", defaults, tmp_path, "sd15_image_titan")  # a cold cache per workflow
    assert os.environ["TITAN_TRITON_AUTOTUNE"] == "1"
    assert os.environ["TRITON_CACHE_DIR"] == str(tmp_path / "triton_cache_autotune_sd15_image_titan")
    host_gpu.set_row_env("titan_graph", defaults, tmp_path)
    assert os.environ["TITAN_CUDA_GRAPH"] == "1" and os.environ["TITAN_TRITON_AUTOTUNE"] == "0"
    assert "TRITON_CACHE_DIR" not in os.environ
    (tmp_path / "cache" / "ab").mkdir(parents=True)
    (tmp_path / "cache" / "ab" / "k.autotune.json").write_text('{"configs_timings": []}')
    assert host_gpu.autotune_choices(tmp_path / "cache") == [{"configs_timings": []}]
