"""TITAN Gradient Guess node: which tangent directions V the forward gradient G = <grad f, V> V uses."""

from __future__ import annotations

from ..comfy_v3 import io

from ..guidance_core.run_config import GUESS_KINDS, GuessSpec, parse_frame_indices
from .run_harness import checked_inputs
from .sockets import SENT_VALUE_INPUTS, TitanGuess, node_schema
from ..guidance_core import guesses as core_guesses


class TitanGradientGuess(io.ComfyNode):
    """Gradient guess V for TITAN-Guide. random: Gaussian V, unbiased, noisy. score: the model's noise estimate,
    deterministic but biased. sampled_gradient: backprop through decoder and objective (not the denoiser) on a few
    frames, spread to all. orthogonal: K orthogonal tangents. antithetic: pairs (V, -V). mixed: sampled gradient plus
    an orthogonal random part."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return node_schema(cls, "TITAN Gradient Guess", hidden=SENT_VALUE_INPUTS, inputs=[
                io.Combo.Input("kind", options=list(GUESS_KINDS), default="random",
                               tooltip="random, score, sampled_gradient, orthogonal (K tangents), antithetic (K "
                                       "pairs, useful with the central-difference estimator) or mixed."),
                io.Int.Input("k", default=1, min=1, max=64,
                             tooltip="Tangents per estimate for random and orthogonal, pairs for antithetic: each "
                                     "one costs a forward-mode pass. Ignored by score, sampled_gradient and mixed."),
                io.Int.Input("sampled_frames", default=2, min=0, max=4096,
                             tooltip="sampled_gradient / mixed: frames to backpropagate through (0 = all frames). "
                                     "Must not exceed the frames of a video."),
                io.Combo.Input("frame_choice", options=list(core_guesses.FRAME_CHOICES), default="even",
                               tooltip="sampled_gradient / mixed: evenly spaced frames, random frames each step "
                                       "(seeded), or the fixed frame indices below."),
                io.String.Input("frame_indices", default="", multiline=False,
                                tooltip="frame_choice 'fixed': frame indices, comma separated (e.g. '0, 8, 15')."),
                io.Combo.Input("expansion", options=list(core_guesses.EXPANSIONS), default="tile",
                               tooltip="How the sampled frames' gradient is spread to all frames: tile (repeat), "
                                       "nearest sampled frame, or interpolate between sampled frames."),
                io.Float.Input("random_weight", default=0.5, min=0.0, max=1.0, step=0.01,
                               tooltip="mixed: share of the random part (0 = sampled gradient only, 1 = random only; "
                                       "the mix angle is random_weight * 90 degrees)."),
            ],
            outputs=[TitanGuess.Output("guess", tooltip="Connect to a TITAN-Guide sampler's guess input.")],
        )

    @classmethod
    def execute(cls, **values) -> io.NodeOutput:
        v = checked_inputs(cls, values)  # real ints, a finite random_weight (as sent through the API)
        indices = parse_frame_indices(v["frame_indices"]) if v["frame_choice"] == "fixed" else ()
        return io.NodeOutput(GuessSpec(kind=v["kind"], k=v["k"], frames=v["sampled_frames"], choice=v["frame_choice"],
                                       indices=indices, expand=v["expansion"], random_weight=v["random_weight"]))


NODE_CLASSES = [TitanGradientGuess]
