"""Forward-mode AD through real models: everything a JVP pass needs that torch does not give it by itself.

* `attention.py`: inside a pass, `F.scaled_dot_product_attention` is a router (fused flash JVP kernel for long
  self-attention on CUDA, chunked MATH elsewhere); hosts register their own attention contexts for the pass.
* `rules.py`: lean conv / linear forward rules and the group_norm / layer_norm fixes.
* `cuda_graph.py`: replaying a fixed-shape JVP as a CUDA graph.

The one entry point is `forward_ad_scope()`: the context every forward-mode pass of guidance_core runs in;
`settings_override(fused=False, ...)` changes its settings for a scope (no setting outlives it).
"""
from .attention import (ForwardADAttentionSettings, attention_route, chunked_math_sdpa, current_settings,
                        forward_ad_sdpa, register_attention_context, settings_override, spatial_attention)
from .attention import forward_ad_attention as forward_ad_scope
from .cuda_graph import GraphedJvp
from .rules import attributes_replaced

__all__ = ["ForwardADAttentionSettings", "GraphedJvp", "attention_route", "attributes_replaced", "chunked_math_sdpa",
           "current_settings", "forward_ad_scope", "forward_ad_sdpa", "register_attention_context",
           "settings_override", "spatial_attention"]
