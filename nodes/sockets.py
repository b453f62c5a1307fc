"""The pack's sockets and the sampler widgets every sampler node shares (ComfyUI V3 schema)."""

from __future__ import annotations

import logging
from ..comfy_v3 import io

from ..guidance_core import update as core_update
from ..guidance_core.run_config import STEPS, GuidanceSettings

DEFAULTS = GuidanceSettings()  # the core's shipped guidance defaults (chosen by benchmarks/fidelity.py)

LOG = logging.getLogger("titan_guide")

CATEGORY = "sampling/titan_guide"
ADDITIONAL_MODELS_KEY = "titan_guide"  # ModelPatcher.set_additional_models key of the guidance models
SENT_VALUE_INPUTS = [io.Hidden.prompt, io.Hidden.unique_id]  # hidden inputs of nodes that use checked_inputs

TitanObjective = io.Custom("TITAN_OBJECTIVE")  # objectives.ObjectiveSet
TitanGuess = io.Custom("TITAN_GUESS")  # guidance_core.run_config.GuessSpec
TitanMethod = io.Custom("TITAN_METHOD")  # guidance_core.run_config.MethodSpec


def node_schema(node: type, display_name: str, extra_description: str = "", **schema) -> io.Schema:
    """A node's io.Schema: node_id is the class name, the category the pack's, the description the class docstring
    (what the node does, as the UI shows it) and `extra_description`."""
    return io.Schema(node_id=node.__name__, display_name=display_name, category=CATEGORY,
                     description=" ".join((node.__doc__ + " " + extra_description).split()), **schema)



def guidance_inputs() -> list:
    """The guidance knobs' inputs, shared by TitanGuideSampler and TitanGuideSamplerSelect."""
    return [
        io.Combo.Input("sampler", options=list(STEPS), default="euler",
                       tooltip="Sampler step for the plain and look-ahead steps. euler and ddim are the same "
                               "deterministic step in k-diffusion form (eta adds noise); heun is 2nd order "
                               "(2 model calls per step)."),
        io.Float.Input("eta", default=0.0, min=0.0, max=1.0, step=0.01,
                       tooltip="Noise fraction of each euler/ddim step (0 = deterministic DDIM, 1 = ancestral). "
                               "Must be 0 for heun, flow models and DOODL. The look-ahead is always deterministic. "
                               "The step noise has its own seeded stream, so guided and unguided runs at one seed "
                               "get the same noise."),
        io.Float.Input("strength", default=DEFAULTS.strength, min=0.0, max=10.0, step=0.005,
                       tooltip="Strength on the normalised latent: normalized rules move each video by about "
                               "strength x its latent norm per guided step; adam / sgd: the learning rate. "
                               "0 = exactly the unguided result. Used by titan and exact gradient."),
        io.Combo.Input("strength_schedule", options=list(core_update.SCHEDULES), default="constant",
                       tooltip="How the strength varies over the guided steps (normalised to mean 1)."),
        io.Int.Input("lookahead", default=DEFAULTS.lookahead, min=-1, max=1000,
                     tooltip="Look-ahead steps: sampler steps run inside the forward-mode pass before the Tweedie "
                             "estimate that is decoded. 0 = Tweedie estimate at the current step, 1 = one step "
                             "ahead (paper default), -1 = all remaining steps (most accurate, slowest). Late steps "
                             "look ahead to the end. Must not exceed steps - 1."),
        io.Float.Input("guidance_start", default=DEFAULTS.start, min=0.0, max=1.0, step=0.01,
                       tooltip="First guided step, as a fraction of the steps (0 = from the first step)."),
        io.Float.Input("guidance_end", default=DEFAULTS.end, min=0.0, max=1.0, step=0.01,
                       tooltip="End of guidance, as a fraction of the steps (exclusive; 1 = to the last step). "
                               "start = end turns guidance off. Updates in the last steps are not denoised away."),
        io.Int.Input("iterations", default=1, min=1, max=100,
                     tooltip="Guidance updates per guided step (each one re-estimates the gradient)."),
        io.Combo.Input("optimizer", options=list(core_update.OPTIMIZERS), default=DEFAULTS.optimizer,
                       tooltip="normalized_relative: strength x latent norm along -G, scaled by |G| / RMS of the "
                               "video's earlier |G|; normalized: unscaled; adam: moments kept over the run; sgd; "
                               "adam_per_step: the authors' (every element moved +-strength: noisy)."),
        io.Float.Input("max_grad_norm", default=0.0, min=0.0, max=1e6, step=0.1,
                       tooltip="Clip each video's gradient estimate to this L2 norm before the update (0 = off)."),
        io.Boolean.Input("per_frame", default=False,
                         tooltip="Per-frame derivatives: one directional derivative per frame's loss from the same "
                                 "forward pass, so each frame is steered by its own loss (objectives with per-frame "
                                 "losses only)."),
        io.Int.Input("decode_chunk_frames", default=0, min=0, max=4096,
                     tooltip="Decode this many frames at a time inside the objective. 0 = automatic: on a GPU "
                             "frames for about 2 GiB of forward-mode decode per call, within half the free memory "
                             "(measured on one frame at the start), on the CPU all at once. Lower values lower "
                             "peak memory; the result is the same for image VAEs."),
        io.Int.Input("frames_per_video", default=0, min=0, max=4096,
                     tooltip="Frames of one video in the latent batch (AnimateDiff-style latents keep frames in the "
                             "batch). 0 = the whole batch is one video. The batch must be a multiple of it."),
    ]


def guess_and_method_inputs() -> list:
    """The optional TITAN_GUESS and TITAN_METHOD inputs of every sampler node."""
    return [TitanGuess.Input("guess", optional=True,
                             tooltip="Gradient guess V (TITAN Gradient Guess node); default: random Gaussian, one "
                                     "tangent."),
            TitanMethod.Input("method", optional=True,
                              tooltip="Guidance method (TITAN Guidance Method node); default: titan. A baseline "
                                      "replaces the forward-gradient update.")]


def report_outputs() -> list:
    """The report and loss-plot outputs of the sampler nodes that return a latent."""
    return [io.String.Output("report", tooltip="Per guided step: loss, |G| and look-ahead; totals: time and peak "
                                               "memory (and what was measured)."),
            io.Image.Output("loss_plot", tooltip="Plot of the loss at each guided step.")]
