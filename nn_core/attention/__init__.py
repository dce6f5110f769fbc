"""Attention layers: scaled dot-product, masks (and, per API.md §2, multi-head family)."""
from .causal_mask import (
    apply_causal_mask,
    create_causal_mask,
    create_causal_padding_mask,
    create_local_attention_mask,
    create_padding_mask,
    create_sliding_window_mask,
)
from .scaled_dot_product import ScaledDotProductAttention, scaled_dot_product_attention, softmax

__all__ = [
    "softmax",
    "scaled_dot_product_attention",
    "ScaledDotProductAttention",
    "create_causal_mask",
    "create_padding_mask",
    "create_causal_padding_mask",
    "create_sliding_window_mask",
    "create_local_attention_mask",
    "apply_causal_mask",
]
