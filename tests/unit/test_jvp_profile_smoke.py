"""benchmarks/jvp_profile.py on tiny models on the CPU: its code paths run and its comparisons hold.

The figures come from the GPU run (benchmarks/results/jvp_profile.json); here the same functions run on tiny
diffusers models so a change in guidance_core cannot silently break the profile script.
"""
import torch

from benchmarks import jvp_profile


def test_unet_profile_compares_paths_that_agree_and_profiles_them():
    torch.manual_seed(0)
    result = jvp_profile.unet_profile("cpu", 1, 4, 64, smoke=True)
    for key in ("forward_s", "jvp_baseline_s", "jvp_math_s", "jvp_s", "jvp_builtin_rules_s"):
        assert result[key] > 0, key
    # the lean rules and the router change how the JVP is computed, not its value
    assert result["lean_vs_builtin_tangent_err"] < 1e-5
    assert result["fused_vs_math_tangent_err"] < 1e-5  # on the CPU both are MATH
    assert result["jvp_route_counts"].get("fused", 0) == 0 and result["jvp_route_counts"]["math"] > 0
    before, after = result["profile"]["jvp_before"], result["profile"]["jvp_after"]
    assert after["aten_calls"] < before["aten_calls"]  # no products with zero weight tangents
    assert "jvp_graph_s" not in result  # CUDA graphs only on CUDA


def test_titan_video_runs_eagerly_on_the_cpu():
    result = jvp_profile.titan_video("cpu", 4, 64, smoke=True, steps=3)
    assert result["eager_video_s"] > 0 and result["decode_chunk"] == 4
    assert "graph_video_s" not in result
