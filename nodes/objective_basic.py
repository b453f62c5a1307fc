"""Basic objective nodes: the mean-colour objective and a weighted sum of objectives."""

from __future__ import annotations

from ..comfy_v3 import io

from ..objectives.combination import ObjectiveSet
from .sockets import TitanObjective, node_schema
from ..objectives.color import MODES, ColorLoss

COMBINE_SLOTS = 4


class TitanColorObjective(io.ComfyNode):
    """Loss = colour_weight * mean over R,G,B of (mean colour - target)^2 + brightness_weight * (luma of the mean colour
    - brightness)^2, on the decoded video in [0, 1]."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        def channel(name, default):
            return io.Float.Input(name, default=default, min=0.0, max=1.0, step=0.01,
                                  tooltip=f"Target colour, {name} channel in [0, 1].")
        return node_schema(cls, "TITAN Colour Objective", inputs=[
                channel("red", 1.0), channel("green", 0.0), channel("blue", 0.0),
                io.Float.Input("color_weight", default=1.0, min=0.0, max=100.0, step=0.01,
                               tooltip="Weight of the colour term (0 = brightness only)."),
                io.Float.Input("brightness", default=0.5, min=0.0, max=1.0, step=0.01,
                               tooltip="Target brightness (Rec. 709 luma of the mean colour), used when "
                                       "brightness_weight > 0."),
                io.Float.Input("brightness_weight", default=0.0, min=0.0, max=100.0, step=0.01,
                               tooltip="Weight of the brightness term (0 = off)."),
                io.Combo.Input("mode", options=list(MODES), default="frame",
                               tooltip="frame: each frame's mean colour against the target, averaged (has per-frame "
                                       "losses); video: the whole video's mean colour (no per-frame losses)."),
            ],
            outputs=[TitanObjective.Output("objective", tooltip="Connect to a TITAN-Guide sampler.")],
        )

    @classmethod
    def execute(cls, red, green, blue, color_weight, brightness, brightness_weight, mode) -> io.NodeOutput:
        module = ColorLoss((red, green, blue), color_weight=color_weight, brightness=brightness,
                           brightness_weight=brightness_weight, mode=mode)
        brightness_part = f"; brightness {brightness:g}" if brightness_weight else ""
        name = f"colour({red:g},{green:g},{blue:g}{brightness_part})"
        return io.NodeOutput(ObjectiveSet.single(module, name=name))


class TitanObjectiveCombine(io.ComfyNode):
    """Loss = sum of weight_i * objective_i over the connected objectives."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        inputs = []
        for slot in range(1, COMBINE_SLOTS + 1):
            inputs.append(TitanObjective.Input(f"objective_{slot}", optional=slot > 1,
                                                    tooltip=f"Objective {slot}{' (optional)' if slot > 1 else ''}."))
            inputs.append(io.Float.Input(f"weight_{slot}", default=1.0, min=-100.0, max=100.0, step=0.01,
                                         optional=slot > 1,
                                         tooltip=f"Weight of objective {slot} in the sum (ignored if it is not "
                                                 "connected). Negative weights maximise that objective."))
        return node_schema(
            cls, "TITAN Combine Objectives",
            inputs=inputs,
            outputs=[TitanObjective.Output("objective", tooltip="The weighted sum.")],
        )

    @classmethod
    def execute(cls, **values) -> io.NodeOutput:
        weighted = [(values[f"objective_{slot}"], values.get(f"weight_{slot}", 1.0))
                    for slot in range(1, COMBINE_SLOTS + 1) if values.get(f"objective_{slot}") is not None]
        return io.NodeOutput(ObjectiveSet.combine(weighted))


NODE_CLASSES = [TitanColorObjective, TitanObjectiveCombine]
