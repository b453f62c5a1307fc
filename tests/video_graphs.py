"""Shared by the native video model host tests (test_wan, test_cogvideox_native, test_hunyuan15; test_ltx imports
add_sampler / report / video_of through test_wan): guided variants of one graph, ComfyUI's own samplers to compare
the unguided run with, and reading back what the host saved."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

import graphs

# One TitanGradientGuess per guess type the pack offers (guidance_core.guesses.GUESS_KINDS; tests/unit's
# test_video_graphs checks the two name the same kinds). `mixed`'s fixed frames suit a 9-frame video; for shorter
# ones pass guesses_for(frames).
GUESSES = {
    "random": {"kind": "random", "k": 2},
    "score": {"kind": "score"},
    "sampled_gradient": {"kind": "sampled_gradient", "sampled_frames": 2},
    "orthogonal": {"kind": "orthogonal", "k": 2},
    "antithetic": {"kind": "antithetic", "k": 1},
    "mixed": {"kind": "mixed", "frame_choice": "fixed", "frame_indices": "0, 8", "random_weight": 0.3},
}

# The backprop baselines (TitanGuidanceMethod), guided with FreeDoM's rho at 20 (tiny random models' gradients are
# small).
METHODS = ("exact_gradient", "freedom")


def guesses_for(frames: int) -> dict:
    """GUESSES with mixed's fixed frames set to the first and last of a `frames`-frame video."""
    return {**GUESSES, "mixed": {**GUESSES["mixed"], "frame_indices": f"0, {frames - 1}"}}


def add_sampler(prompt, name, sources, objective, *, guess=None, method=None, save_images=True, prefix="wan",
                **knobs):
    """A TitanGuideSampler `name` (seed 5, 3 steps, no look-ahead unless given) with its latent, report and (unless
    save_images is off) decoded frames saved."""
    guess_link = graphs.add_guess(prompt, f"{name}_guess", **guess) if guess is not None else None
    method_link = graphs.add_method(prompt, f"{name}_method", **method) if method is not None else None
    graphs.add_titan_sampler(prompt, name, sources, objective, seed=5, steps=3, guess=guess_link, method=method_link,
                             **{"lookahead": 0, **knobs})
    graphs.add_outputs(prompt, name, f"{prefix}/{name}", sources["vae"], images=save_images)


def add_guided_variants(prompt, sources, objective, *, guesses=GUESSES, methods=METHODS, strength=0.15,
                        prefix="wan") -> list:
    """One guided TitanGuideSampler per guess (the default TITAN method) and per baseline method, all on `sources`
    (one set of loaded models for the prompt), plus the unguided one ("plain", guidance_end 0); returns the guided
    samplers' names."""
    for name, guess in guesses.items():
        add_sampler(prompt, name, sources, objective, guess=guess, strength=strength, prefix=prefix)
    for name in methods:
        add_sampler(prompt, name, sources, objective, method={"method": name, "freedom_rho": 20.0},
                    strength=strength, prefix=prefix)
    add_sampler(prompt, "plain", sources, objective, guidance_end=0.0, prefix=prefix)
    return [*guesses, *methods]


def assert_guided_below_unguided(host, outputs, guided, guesses, decode_line: str, not_lower=()) -> dict:
    """add_guided_variants's checks: each guided run's report names its guess kind (or baseline method) and has
    `decode_line` (e.g. "3 latent frame(s) -> 9 frame(s) per video in one VAE call"), and its decoded video is
    redder (ColorLoss lower) than the unguided one ("plain") at the same seed. The runs named in `not_lower` (a
    measured, documented gap) are only checked to have moved the latent; returns {name: ColorLoss} of every run."""
    from objectives.color import ColorLoss

    color = ColorLoss()
    losses = {"plain": float(color(video_of(host, outputs, "plain_save_images")))}
    plain_latent = saved_latent(host, outputs, "plain_save_latent")
    for name in guided:
        text = report(outputs, name)
        named = f"guess {guesses[name]['kind']}" if name in guesses else f"method {name}"
        assert named in text.splitlines()[0] and decode_line in text, (name, text)
        losses[name] = float(color(video_of(host, outputs, f"{name}_save_images")))
        if name in not_lower:
            assert not torch.allclose(saved_latent(host, outputs, f"{name}_save_latent"), plain_latent, atol=1e-3)
        else:
            assert losses[name] < losses["plain"] - 1e-3, (name, losses, text)
    return losses


def add_select_in_custom_advanced(prompt, sources, objective, *, prefix="wan", **knobs) -> dict:
    """TitanGuideSamplerSelect in SamplerCustomAdvanced (RandomNoise, BasicScheduler, CFGGuider on sources' model)
    beside TitanGuideSampler ("node") and its unguided run ("plain") at the same seed, steps and knobs; saves the
    three latents (nodes "custom_save", "node_save_latent", "plain_save_latent"). Returns the knobs."""
    knobs = {**graphs.PROMPT_KNOBS, "lookahead": 0, "strength": 0.15, **knobs}
    graphs.add_titan_sampler(prompt, "node", sources, objective, seed=5, steps=3, **knobs)
    graphs.add_outputs(prompt, "node", f"{prefix}/select_node", sources["vae"], report=False)
    prompt.add("noise", "RandomNoise", noise_seed=5)
    prompt.add("scheduler", "BasicScheduler", model=sources["model"], scheduler="normal", steps=3, denoise=1.0)
    prompt.add("guider", "CFGGuider", model=sources["model"], positive=sources["positive"],
               negative=sources["negative"], cfg=1.0)
    prompt.add("titan", "TitanGuideSamplerSelect", objective=objective, vae=sources["vae"], **knobs)
    prompt.add("custom", "SamplerCustomAdvanced", noise=graphs.link("noise"), guider=graphs.link("guider"),
               sampler=graphs.link("titan"), sigmas=graphs.link("scheduler"), latent_image=sources["latent"])
    prompt.add("custom_save", "SaveLatent", samples=graphs.link("custom", 0), filename_prefix=f"{prefix}/select_custom")
    graphs.add_titan_sampler(prompt, "plain", sources, objective, seed=5, steps=3, **{**knobs, "guidance_end": 0.0})
    graphs.add_outputs(prompt, "plain", f"{prefix}/select_plain", sources["vae"], report=False)
    return knobs


def assert_select_matches_the_sampler_node(host, outputs, shape) -> None:
    """add_select_in_custom_advanced's checks: TitanGuideSamplerSelect's latent has `shape` and equals
    TitanGuideSampler's at the same seed, and guidance moved it away from the unguided one."""
    node, custom = saved_latent(host, outputs, "node_save_latent"), saved_latent(host, outputs, "custom_save")
    assert custom.shape == shape, custom.shape
    assert torch.allclose(node, custom, atol=1e-4), float((node - custom).abs().max())
    assert not torch.allclose(node, saved_latent(host, outputs, "plain_save_latent"), atol=1e-3)


def video_of(host, outputs, node) -> torch.Tensor:
    """The frames a SaveImage node wrote, as (1, F, 3, H, W) in [0, 1]."""
    paths = sorted(host.output_files({node: outputs[node]}))
    frames = [np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) / 255.0 for p in paths]
    return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2)[None]


def saved_latent(host, outputs, node) -> torch.Tensor:
    """The latent a SaveLatent node wrote."""
    (path,) = host.output_files({node: outputs[node]}, key="latents")
    return load_file(str(path))["latent_tensor"]


def report(outputs, name) -> str:
    return outputs[f"{name}_report"]["text"][0]
