"""The public path of the attention mask creators (implemented in :mod:`.masks`).

``nn_core.attention.causal_mask`` is the module the public API names for the
creators; every creator lives in :mod:`nn_core.attention.masks`.
"""
from .masks import (
    apply_causal_mask,
    create_causal_mask,
    create_causal_padding_mask,
    create_local_attention_mask,
    create_padding_mask,
    create_sliding_window_mask,
)

__all__ = ["create_causal_mask", "create_padding_mask", "create_causal_padding_mask",
           "create_sliding_window_mask", "create_local_attention_mask", "apply_causal_mask"]
