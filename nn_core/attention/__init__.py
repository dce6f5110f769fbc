"""Attention layers: scaled dot-product, masks and the multi-head family (docs/guide/tour.md)."""
from .masks import (
    apply_causal_mask,
    create_causal_mask,
    create_causal_padding_mask,
    create_local_attention_mask,
    create_padding_mask,
    create_sliding_window_mask,
)
from .scaled_dot_product import ScaledDotProductAttention, scaled_dot_product_attention, softmax
from .multihead import KVCache, MultiHeadAttention, combine_heads, split_heads
from .multi_query import MultiQueryAttention
from .grouped_query import GroupedQueryAttention, convert_from_mha
from .cross_attention import CachedCrossAttention, CrossAttention, MultimodalCrossAttention

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
    "split_heads",
    "combine_heads",
    "KVCache",
    "MultiHeadAttention",
    "MultiQueryAttention",
    "GroupedQueryAttention",
    "convert_from_mha",
    "CrossAttention",
    "CachedCrossAttention",
    "MultimodalCrossAttention",
]
