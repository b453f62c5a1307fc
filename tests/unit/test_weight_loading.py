"""Objective loaders' speed-ups keep what is loaded: modules built without random initialisation before a strict
load, and memory-mapped torch checkpoints (with the old format read whole)."""
import threading

import torch
from torch import nn

from objectives.base import load_weights_file, random_init_skipped


class Layers(nn.Module):
    """Every initialiser path the loaders meet: Linear (kaiming_uniform_), Embedding (normal_), MultiheadAttention
    (xavier_uniform_ through Tensor.uniform_), trunc_normal_, and a deterministic non-persistent buffer."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(8, 8)
        self.embed = nn.Embedding(4, 8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.table = nn.Parameter(torch.empty(3, 8))
        nn.init.trunc_normal_(self.table, std=0.02)
        self.register_buffer("mask", torch.full((4, 4), float("-inf")).triu_(1), persistent=False)

    def forward(self, tokens):
        x = self.proj(self.embed(tokens)) + self.table[:1]
        return self.attn(x, x, x, attn_mask=self.mask, need_weights=False)[0]


def test_random_init_skipped_draws_no_random_numbers_and_keeps_deterministic_fills():
    torch.manual_seed(0)
    reference = Layers()
    state = torch.get_rng_state()
    with random_init_skipped():
        built = Layers()
    assert torch.equal(torch.get_rng_state(), state)  # no initialiser drew from the generator
    assert torch.equal(built.mask, reference.mask)  # the causal mask is built as usual
    built.load_state_dict(reference.state_dict(), strict=True)
    tokens = torch.tensor([[0, 1, 2, 3]])
    torch.testing.assert_close(built(tokens), reference(tokens), rtol=0, atol=0)
    torch.manual_seed(0)
    assert torch.equal(Layers().proj.weight, reference.proj.weight)  # outside the scope, initialisers run


def test_random_init_skipped_is_local_to_its_thread():
    filled = {}

    def other_thread():
        filled["values"] = nn.init.uniform_(torch.zeros(1000), 1.0, 2.0)

    with random_init_skipped():
        untouched = nn.init.uniform_(torch.zeros(1000), 1.0, 2.0)
        worker = threading.Thread(target=other_thread)
        worker.start()
        worker.join()
    assert torch.equal(untouched, torch.zeros(1000))
    assert bool(((filled["values"] >= 1.0) & (filled["values"] <= 2.0)).all())


def test_torch_checkpoints_load_mapped_or_whole_with_the_same_tensors(tmp_path):
    """Files of torch.save's zip format are memory-mapped; the pre-1.6 format cannot be and is read whole."""
    state = {"a.weight": torch.randn(16, 8), "b.bias": torch.arange(5.0)}
    current, legacy = tmp_path / "current.pth", tmp_path / "legacy.pth"
    torch.save(state, current)
    torch.save(state, legacy, _use_new_zipfile_serialization=False)
    for path in (current, legacy):
        loaded = load_weights_file(path, "test", "hint")
        assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)


def test_random_init_skipped_covers_transformers_initialisers():
    """transformers swaps torch.nn.init's functions for same-named wrappers while it builds a model (its CLIP
    vision tower is the HF clip_vision loader's class): no random numbers are drawn there either."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=32, patch_size=8, projection_dim=16)
    torch.manual_seed(0)
    state = torch.get_rng_state()
    with random_init_skipped():
        built = CLIPVisionModelWithProjection(config)
    assert torch.equal(torch.get_rng_state(), state)
    reference = CLIPVisionModelWithProjection(config)
    built.load_state_dict(reference.state_dict(), strict=True)
    pixels = torch.rand(1, 3, 32, 32)
    torch.testing.assert_close(built(pixel_values=pixels).image_embeds, reference(pixel_values=pixels).image_embeds,
                               rtol=0, atol=0)


def test_objective_loading_benchmark_smoke_times_both_ways_and_writes_json(tmp_path, capsys):
    """benchmarks/objective_loading.py on the tiny files: every loader timed as shipped and without the speed-ups,
    the same model either way (parameter counts from the loaded models), the table and the JSON."""
    import json

    from benchmarks import objective_loading
    from objectives import base, imagebind_audio

    out = tmp_path / "objective_loading.json"
    objective_loading.main(["--smoke", "--dir", str(tmp_path), "--repeats", "1", "--out", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert [row["objective"] for row in rows] == list(objective_loading.OBJECTIVES)
    for row in rows:
        assert row["shipped_s"] > 0 and row["baseline_s"] > 0 and row["parameters_m"] > 0, row
    assert "| imagebind |" in capsys.readouterr().out
    # the baseline's patches are undone
    assert imagebind_audio.random_init_skipped is base.random_init_skipped
    with objective_loading.without_speedups():
        assert imagebind_audio.random_init_skipped is not base.random_init_skipped
    assert imagebind_audio.random_init_skipped is base.random_init_skipped
