"""TITAN Guidance Method node: TITAN (forward gradients) or a baseline with its main hyperparameters."""

from __future__ import annotations

from ..comfy_v3 import io

from .. import guidance_core as core
from ..guidance_core.baselines import BASELINE_UPDATES, freedom, mpgd
from ..guidance_core.forward_gradient import DEFAULT_ESTIMATOR, ESTIMATORS
from ..guidance_core.run_config import METHOD_DESCRIPTIONS, METHOD_KINDS, GuidanceSettings, MethodSpec
from .run_harness import checked_inputs
from .sockets import SENT_VALUE_INPUTS, TitanMethod, node_schema


class TitanGuidanceMethod(io.ComfyNode):
    """TITAN or a baseline for comparison; the baselines take the sampler's guidance window only. Options prefixed
    with a method's name apply to that method only."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return node_schema(cls, "TITAN Guidance Method", hidden=SENT_VALUE_INPUTS, inputs=[
                io.Combo.Input("method", options=list(METHOD_KINDS), default="titan",
                               tooltip="; ".join(f"{k}: {METHOD_DESCRIPTIONS[k]}" for k in METHOD_KINDS) + "."),
                io.Combo.Input("estimator", options=list(ESTIMATORS), default=DEFAULT_ESTIMATOR,
                               tooltip="titan: dual (autograd.forward_ad, the fastest), jvp (torch.func.jvp, the same "
                                       "values) or central_difference (two forward passes, no AD)."),
                io.Boolean.Input("checkpoint", default=False, tooltip="exact_gradient / freedom / tfg: recompute "
                                 "activations in the backward pass (less memory, more time)."),
                io.Combo.Input("baseline_update", options=list(BASELINE_UPDATES), default="plain",
                               tooltip="freedom / mpgd / tfg: plain = the authors' gradient step; normalized = each "
                                       "video moves by its strength x its latent norm, as TITAN's rule (try 0.01-0.05)."),
                io.Float.Input("freedom_rho", default=1.0, min=0.0, max=1000.0, step=0.01,
                               tooltip="freedom: guidance strength rho."),
                io.Combo.Input("freedom_schedule", options=list(freedom.FREEDOM_SCHEDULES), default="sqrt_alpha",
                               tooltip="freedom: per-step strength schedule (sqrt_alpha as the authors' code, or "
                                       "TFG's increase / decrease / constant)."),
                io.Int.Input("freedom_repeats", default=1, min=1, max=20,
                             tooltip="freedom: time-travel repeats on steps 30%-60% of the schedule (1 = none)."),
                io.Float.Input("mpgd_scale", default=1.0, min=0.0, max=1000.0, step=0.01,
                               tooltip="mpgd: step size on the clean estimate."),
                io.Combo.Input("mpgd_schedule", options=list(mpgd.MPGD_SCHEDULES), default="constant",
                               tooltip="mpgd: constant or inverse_sqrt_alpha step size."),
                io.Int.Input("mpgd_iterations", default=1, min=1, max=50,
                             tooltip="mpgd: gradient steps on the clean estimate per guided step."),
                io.Float.Input("tfg_rho", default=1.0, min=0.0, max=1000.0, step=0.01,
                               tooltip="tfg: variance-guidance strength (backprop through the denoiser; 0 = off)."),
                io.Float.Input("tfg_mu", default=1.0, min=0.0, max=1000.0, step=0.01,
                               tooltip="tfg: mean-guidance strength on the clean estimate (0 = off)."),
                io.Float.Input("tfg_gamma", default=0.01, min=0.0, max=10.0, step=0.001,
                               tooltip="tfg: implicit-dynamics smoothing noise scale (0 = off)."),
                io.Int.Input("tfg_recurrence", default=1, min=1, max=20,
                             tooltip="tfg: N_recur, re-noise and redo each guided step this many times."),
                io.Int.Input("tfg_iterations", default=1, min=0, max=50,
                             tooltip="tfg: N_iter, mean-guidance steps per recurrence."),
                io.Int.Input("tfg_mc_samples", default=4, min=1, max=64,
                             tooltip="tfg: Monte-Carlo samples of the smoothed loss."),
                io.Int.Input("doodl_iterations", default=10, min=0, max=500,
                             tooltip="doodl: optimisation steps on the initial noise (each runs the whole sampler "
                                     "forward and backward)."),
                io.Float.Input("doodl_lr", default=0.5, min=0.0, max=100.0, step=0.01,
                               tooltip="doodl: learning rate (0.5 = the authors' grad_scale 1)."),
                io.Float.Input("doodl_mix", default=0.93, min=0.51, max=1.0, step=0.01,
                               tooltip="doodl: EDICT mixing weight p (in (0.5, 1])."),
            ],
            outputs=[TitanMethod.Output("guidance_method", display_name="method",
                                             tooltip="Connect to a TITAN-Guide sampler's method input.")],
        )

    @classmethod
    def execute(cls, method, **options) -> io.NodeOutput:
        options = checked_inputs(cls, options)  # finite rho / scale / lr, real ints and bools (as sent)
        spec = MethodSpec(kind=method, options=tuple(sorted(options.items())))
        # build once with default sampler knobs so bad hyperparameters fail here, not mid-sampling
        spec.build(GuidanceSettings(), core.RandomGuess())
        return io.NodeOutput(spec)


NODE_CLASSES = [TitanGuidanceMethod]
