"""A short tour of nn_core.attention: causal self-attention forward and backward,
checked against finite differences.  Run: ``python examples/attention_demo.py``."""
import numpy as np

import nn_core
from nn_core.attention import ScaledDotProductAttention, create_causal_mask, softmax

rng = np.random.default_rng(0)
B, h, L, d_k = 2, 4, 6, 8
q, k, v = (rng.standard_normal((B, h, L, d_k)) for _ in range(3))     # (B, h, L, d_k)

attn = ScaledDotProductAttention(dtype=np.float64, rng=0)
out, weights = attn(q, k, v, is_causal=True, return_weights=True)     # (B, h, L, d_k)
print("output", out.shape, "weights", weights.shape)
print("row sums of the causal weights:", weights[0, 0].sum(-1).round(6))
print("causal mask:\n", create_causal_mask(4).astype(int))
print("softmax with a fully masked row:\n", softmax(rng.standard_normal((2, 3)),
                                                    mask=np.array([[True] * 3, [False] * 3])))

grad_q, grad_k, grad_v = attn.backward(np.ones_like(out))
report = nn_core.gradcheck(ScaledDotProductAttention(dtype=np.float64),
                           (q[:1, :1], k[:1, :1], v[:1, :1], create_causal_mask(L)))
print(report)
