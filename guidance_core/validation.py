"""What a user hands a guided run and what a run hands back, checked in one place (plain Python / PyTorch; the
nodes translate their widgets into `Widget`s and their errors from here):

- widget values as the host passes them: a real boolean, a whole number, a finite number within the widget's
  range. Hosts convert API values before a node sees them (ComfyUI: bool("false") is True, int(6.7) is 6), so
  `SENT_VALUES` keeps the values as they were sent, for the node to check;
- NaN or infinite latents never leave a run (`NonFiniteLatentError`, `check_latent`);
- running out of memory, on a GPU or on the CPU (where an allocation failure is a plain RuntimeError), gives one
  message that names the widgets that lower memory (`out_of_memory_message`).
Every message names the widget as the UI shows it and says what to do.
"""
from __future__ import annotations

import collections
import dataclasses
import math

import torch

@dataclasses.dataclass(frozen=True)
class Widget:
    """A widget as the UI shows it: its name, what it holds ("bool", "int", "float", or anything else, which is not
    checked here) and its range."""

    name: str
    kind: str
    low: float | None = None
    high: float | None = None

    def check(self, value):
        """`value` if it fits the widget (ints as int, floats as float), else a ValueError naming the widget."""
        label = f"'{self.name}'"
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise ValueError(f"{label} must be true or false, got {value!r} ({type(value).__name__}); send the "
                                 "JSON value true or false, not a string or a number")
            return value
        if self.kind not in ("int", "float"):
            return value
        whole = self.kind == "int"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{label} must be {'a whole number' if whole else 'a number'}, got {value!r} "
                             f"({type(value).__name__}); send a JSON number")
        if whole and not float(value).is_integer():
            raise ValueError(f"{label} must be a whole number, got {value!r}; it is not rounded for you: set it to "
                             f"{math.floor(value)} or {math.ceil(value)}" if math.isfinite(value) else
                             f"{label} must be a whole number, got {value!r}")
        low = -math.inf if self.low is None else self.low
        high = math.inf if self.high is None else self.high
        if not (math.isfinite(value) and low <= value <= high):
            raise ValueError(f"{label} must be a finite number from {low:g} to {high:g}, got {value!r}")
        return int(value) if whole else float(value)


def check_widgets(widgets, converted: dict, raw: dict | None = None) -> dict:
    """The checked values of `widgets` (Widget, keyed by the input name the host uses in `converted`): each one's
    value as it was sent (`raw`, see `SentValues`) where known, else as the host converted it."""
    raw = raw if isinstance(raw, dict) else {}
    return {key: widget.check(raw.get(key, converted[key])) for key, widget in widgets.items() if key in converted}


def denoise_schedule_length(steps: int, denoise: float, cap: int) -> int:
    """Steps of the whole schedule whose last `steps` a `denoise` < 1 run takes (as KSampler builds it), refused
    above `cap` (a tiny denoise would build millions of steps and block the queue)."""
    total = int(steps / denoise)
    if total > cap:
        raise ValueError(f"'denoise' {denoise:g} with {steps} steps needs a schedule of {total} steps, more than "
                         f"{cap}: raise 'denoise' to at least {steps / cap:.2g} or lower 'steps'")
    return total


def is_link(value) -> bool:
    """An API prompt's link to another node's output: [node id, output index]."""
    return isinstance(value, list) and len(value) == 2 and isinstance(value[1], int)


class SentValues:
    """Widget values as an API client sent them, before the host converted them in place: kept by the identity of
    each node's inputs dict (the host validates, queues and runs that same dict), so the prompt itself, its history
    and the metadata saved with outputs stay as sent. Holds the newest `limit` nodes."""

    def __init__(self, limit: int = 512):
        self.limit = limit
        self._kept: collections.OrderedDict = collections.OrderedDict()

    def keep(self, prompt, node_types) -> None:
        """Keep the widget values (not links) of each node of `node_types` in an API prompt {id: {class_type,
        inputs}}; called before the host's validation converts them."""
        if not isinstance(prompt, dict):
            return
        for node in prompt.values():
            inputs = node.get("inputs") if isinstance(node, dict) else None
            if node.get("class_type") in node_types and isinstance(inputs, dict):
                self._kept[id(inputs)] = (inputs, {k: v for k, v in inputs.items() if not is_link(v)})
                self._kept.move_to_end(id(inputs))
        while len(self._kept) > self.limit:
            self._kept.popitem(last=False)

    def of(self, inputs) -> dict | None:
        """The sent values of the node whose inputs dict is `inputs`, or None if none were kept."""
        kept = self._kept.get(id(inputs))
        return kept[1] if kept is not None and kept[0] is inputs else None

    def of_node(self, prompt, node_id) -> dict | None:
        """The sent values of node `node_id` of the prompt being run, or None."""
        try:
            return self.of(prompt[node_id]["inputs"])
        except (KeyError, TypeError):
            return None


SENT_VALUES = SentValues()  # the host's on-prompt handler fills it (nodes/__init__.py)


# --- non-finite latents --------------------------------------------------------------------------------------
class NonFiniteLatentError(ValueError):
    """A latent holds NaN or infinite values where no guidance update can be blamed (the sampler, the model or the
    input produced them); the message names what to change."""


def finite(x: torch.Tensor) -> bool:
    """Whether every element is finite."""
    return bool(torch.isfinite(x).all())


def check_latent(x: torch.Tensor, where: str, what_to_do: str) -> None:
    """Raise NonFiniteLatentError naming `where` and `what_to_do` if `x` holds NaN or infinite values."""
    if not finite(x):
        bad = int((~torch.isfinite(x)).sum())
        raise NonFiniteLatentError(f"{where} holds NaN or infinite values ({bad} of {x.numel()} elements); "
                                   f"{what_to_do}. Nothing non-finite is returned.")


# --- out of memory -----------------------------------------------------------------------------------------------
# The widgets that lower a guided run's memory, named as the UI shows them.
MEMORY_KNOBS = ("set 'decode_chunk_frames' to 1 or 2 (decodes fewer frames at once)",
                "lower 'lookahead' (fewer model calls inside each forward-mode pass; 0 = Tweedie estimate)",
                "on the TITAN Gradient Guess node use 'kind' random or score with 'k' = 1 (sampled_gradient / mixed "
                "backpropagate through the VAE decoder; k > 1 repeats the forward pass)",
                "turn 'per_frame' off",
                "for exact_gradient / freedom / tfg turn 'checkpoint' on in the TITAN Guidance Method node (or use "
                "titan, which keeps no activations)",
                "or sample fewer frames / videos or a smaller latent")

_CPU_ALLOCATION_FAILURES = ("can't allocate memory", "cannot allocate memory", "not enough memory",
                            "out of memory")


def is_out_of_memory(error: BaseException) -> bool:
    """A CUDA out-of-memory error, or an allocation failure on the CPU (a RuntimeError from the allocator)."""
    if isinstance(error, torch.OutOfMemoryError) or isinstance(error, MemoryError):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and any(marker in text for marker in _CPU_ALLOCATION_FAILURES)


def out_of_memory_message(method: str, what: str, error: BaseException, warnings_before=()) -> str:
    """The one out-of-memory message (GPU and CPU alike): what ran, the error, the widgets that lower memory and the
    warnings gathered before it."""
    device = "the GPU" if isinstance(error, torch.OutOfMemoryError) else "the CPU (an allocation failed)"
    text = (f"out of memory on {device} during TITAN-Guide guidance ({method}, {what}): {error}. To lower memory: "
            + "; ".join(MEMORY_KNOBS) + ".")
    return text + warnings_text(warnings_before)


def warnings_text(messages) -> str:
    """' Warnings before the error: a; b.' for the messages (each once), or ''."""
    unique = list(dict.fromkeys(messages))
    return f" Warnings before the error: {'; '.join(unique)}." if unique else ""


def is_in_place_backprop_error(error: BaseException) -> bool:
    """Autograd's refusal to backpropagate through a tensor that the model's code changed in place after using it."""
    return isinstance(error, RuntimeError) and "modified by an inplace operation" in str(error)


def in_place_backprop_message(method: str, error: BaseException) -> str:
    """What to do when a backprop method meets a model whose code is not differentiable in reverse mode."""
    return (f"the {method} method backpropagates through the diffusion model, and this model's code updates tensors "
            f"in place after using them (as ComfyUI's LTX transformer blocks do: x += attn(x)), which backpropagation "
            f"cannot differentiate. Use the 'titan' method: its forward-mode gradients go through in-place updates. "
            f"({error})")
