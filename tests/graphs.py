"""Build ComfyUI API-format prompts ({node_id: {"class_type", "inputs"}}) for the TITAN-Guide tests."""

from __future__ import annotations

import copy

# Defaults of the guidance knobs shared by TitanGuideSampler and TitanGuideSamplerSelect (as the nodes declare).
GUIDANCE_DEFAULTS = {
    "sampler": "euler",
    "eta": 0.0,
    "strength": 0.06,
    "strength_schedule": "constant",
    "lookahead": 1,
    "guidance_start": 0.0,
    "guidance_end": 0.75,
    "iterations": 1,
    "optimizer": "normalized_relative",
    "max_grad_norm": 0.0,
    "per_frame": False,
    "decode_chunk_frames": 0,
    "frames_per_video": 0,
}

# The host tests' graphs guide every step with the authors' rule (strong, dense updates on tiny random models,
# so "guidance changes the result" shows in 2-4 steps); the shipped defaults are checked above and in
# tests/unit/test_clean_guidance_embedded.py.
PROMPT_KNOBS = {**GUIDANCE_DEFAULTS, "strength": 0.1, "guidance_end": 1.0, "optimizer": "adam_per_step"}

GUESS_DEFAULTS = {"kind": "random", "k": 1, "sampled_frames": 2, "frame_choice": "even", "frame_indices": "",
                  "expansion": "tile", "random_weight": 0.5}

METHOD_DEFAULTS = {"method": "titan", "estimator": "dual", "checkpoint": False, "baseline_update": "plain",
                   "freedom_rho": 1.0,
                   "freedom_schedule": "sqrt_alpha", "freedom_repeats": 1, "mpgd_scale": 1.0,
                   "mpgd_schedule": "constant", "mpgd_iterations": 1, "tfg_rho": 1.0, "tfg_mu": 1.0,
                   "tfg_gamma": 0.01, "tfg_recurrence": 1, "tfg_iterations": 1, "tfg_mc_samples": 4,
                   "doodl_iterations": 10, "doodl_lr": 0.5, "doodl_mix": 0.93}

COLOR_DEFAULTS = {"red": 1.0, "green": 0.0, "blue": 0.0, "color_weight": 1.0, "brightness": 0.5,
                  "brightness_weight": 0.0, "mode": "frame"}


def link(node_id: str, output: int = 0) -> list:
    """A link to output `output` of node `node_id`."""
    return [node_id, output]


class Prompt:
    """An API-format prompt under construction."""

    def __init__(self):
        self.nodes: dict = {}

    def add(self, node_id: str, class_type: str, **inputs) -> str:
        """Add a node; returns its id."""
        if node_id in self.nodes:
            raise ValueError(f"node id {node_id!r} is used twice")
        self.nodes[node_id] = {"class_type": class_type, "inputs": inputs}
        return node_id

    def build(self) -> dict:
        """The prompt dict (a deep copy, safe to POST and to keep editing)."""
        return copy.deepcopy(self.nodes)


def sd15_inputs(prompt: Prompt, ckpt_name: str, width: int, height: int, frames: int,
                text: str = "a bright red ball") -> dict:
    """Checkpoint loader, positive / negative CLIP encodes and an empty latent; returns their links."""
    prompt.add("ckpt", "CheckpointLoaderSimple", ckpt_name=ckpt_name)
    prompt.add("positive", "CLIPTextEncode", text=text, clip=link("ckpt", 1))
    prompt.add("negative", "CLIPTextEncode", text="", clip=link("ckpt", 1))
    prompt.add("latent", "EmptyLatentImage", width=width, height=height, batch_size=frames)
    return {"model": link("ckpt", 0), "clip": link("ckpt", 1), "vae": link("ckpt", 2),
            "positive": link("positive"), "negative": link("negative"), "latent": link("latent")}


def add_color_objective(prompt: Prompt, node_id: str = "objective", **overrides) -> list:
    """A TitanColorObjective node; returns its output link."""
    prompt.add(node_id, "TitanColorObjective", **{**COLOR_DEFAULTS, **overrides})
    return link(node_id)


def add_guess(prompt: Prompt, node_id: str, **overrides) -> list:
    """A TitanGradientGuess node; returns its output link."""
    prompt.add(node_id, "TitanGradientGuess", **{**GUESS_DEFAULTS, **overrides})
    return link(node_id)


def add_method(prompt: Prompt, node_id: str, **overrides) -> list:
    """A TitanGuidanceMethod node; returns its output link."""
    prompt.add(node_id, "TitanGuidanceMethod", **{**METHOD_DEFAULTS, **overrides})
    return link(node_id)


def add_titan_sampler(prompt: Prompt, node_id: str, sources: dict, objective: list, *, seed: int, steps: int,
                      cfg: float = 1.0, scheduler: str = "normal", denoise: float = 1.0, guess: list | None = None,
                      method: list | None = None, **knobs) -> str:
    """A TitanGuideSampler node fed by `sources` (from sd15_inputs); outputs: 0 latent, 1 report, 2 plot."""
    unknown = set(knobs) - set(GUIDANCE_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown guidance knobs {sorted(unknown)}")
    inputs = {"model": sources["model"], "positive": sources["positive"], "negative": sources["negative"],
              "latent_image": sources["latent"], "vae": sources["vae"], "objective": objective, "seed": seed,
              "steps": steps, "cfg": cfg, "scheduler": scheduler, "denoise": denoise,
              **{**PROMPT_KNOBS, **knobs}}
    if guess is not None:
        inputs["guess"] = guess
    if method is not None:
        inputs["method"] = method
    return prompt.add(node_id, "TitanGuideSampler", **inputs)


def add_outputs(prompt: Prompt, sampler_id: str, prefix: str, vae: list, *, latent: bool = True,
                images: bool = False, report: bool = True, plot: bool = False) -> None:
    """Output nodes for a TitanGuideSampler: SaveLatent, decoded SaveImage, PreviewAny(report), plot SaveImage."""
    if latent:
        prompt.add(f"{sampler_id}_save_latent", "SaveLatent", samples=link(sampler_id, 0),
                   filename_prefix=f"{prefix}_latent")
    if images:
        prompt.add(f"{sampler_id}_decode", "VAEDecode", samples=link(sampler_id, 0), vae=vae)
        prompt.add(f"{sampler_id}_save_images", "SaveImage", images=link(f"{sampler_id}_decode"),
                   filename_prefix=f"{prefix}_frames")
    if report:
        prompt.add(f"{sampler_id}_report", "PreviewAny", source=link(sampler_id, 1))
    if plot:
        prompt.add(f"{sampler_id}_save_plot", "SaveImage", images=link(sampler_id, 2),
                   filename_prefix=f"{prefix}_plot")


def titan_prompt(ckpt_name: str, prefix: str, *, width: int = 32, height: int = 32, frames: int = 2,
                 seed: int = 0, steps: int = 3, objective: dict | None = None, guess: dict | None = None,
                 method: dict | None = None, images: bool = False, plot: bool = False, **knobs) -> dict:
    """A whole graph: tiny SD1.5 inputs -> TitanGuideSampler ("sampler") -> latent file and report (+ images)."""
    prompt = Prompt()
    sources = sd15_inputs(prompt, ckpt_name, width, height, frames)
    objective_link = add_color_objective(prompt, **(objective or {}))
    guess_link = add_guess(prompt, "guess", **guess) if guess is not None else None
    method_link = add_method(prompt, "method", **method) if method is not None else None
    add_titan_sampler(prompt, "sampler", sources, objective_link, seed=seed, steps=steps, guess=guess_link,
                      method=method_link, **knobs)
    add_outputs(prompt, "sampler", prefix, sources["vae"], images=images, plot=plot)
    return prompt.build()


def sampler_custom_advanced_prompt(ckpt_name: str, prefix: str, *, width: int = 32, height: int = 32,
                                   frames: int = 2, seed: int = 0, steps: int = 3, cfg: float = 1.0,
                                   guider: str = "CFGGuider", objective: dict | None = None, **knobs) -> dict:
    """SamplerCustomAdvanced with RandomNoise, BasicScheduler, a CFGGuider / BasicGuider and TitanGuideSamplerSelect."""
    unknown = set(knobs) - set(GUIDANCE_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown guidance knobs {sorted(unknown)}")
    prompt = Prompt()
    sources = sd15_inputs(prompt, ckpt_name, width, height, frames)
    objective_link = add_color_objective(prompt, **(objective or {}))
    prompt.add("noise", "RandomNoise", noise_seed=seed)
    prompt.add("scheduler", "BasicScheduler", model=sources["model"], scheduler="normal", steps=steps, denoise=1.0)
    if guider == "CFGGuider":
        prompt.add("guider", "CFGGuider", model=sources["model"], positive=sources["positive"],
                   negative=sources["negative"], cfg=cfg)
    elif guider == "BasicGuider":
        prompt.add("guider", "BasicGuider", model=sources["model"], conditioning=sources["positive"])
    else:
        raise ValueError(f"unknown guider {guider!r}")
    prompt.add("titan", "TitanGuideSamplerSelect", objective=objective_link, vae=sources["vae"],
               **{**PROMPT_KNOBS, **knobs})
    prompt.add("custom", "SamplerCustomAdvanced", noise=link("noise"), guider=link("guider"), sampler=link("titan"),
               sigmas=link("scheduler"), latent_image=sources["latent"])
    prompt.add("save_latent", "SaveLatent", samples=link("custom", 0), filename_prefix=f"{prefix}_latent")
    return prompt.build()
