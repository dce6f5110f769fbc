"""The pieces of a transformer at the BERT shapes, nn_core vs torch (a section of
``python -m nn_core.bench model``)."""
from __future__ import annotations

import numpy as np

from ._common import interleaved, thread_report, threads
from ._model_parts import (D_MODEL, FFN, HEADS, LN_EPS, VOCAB_CE, VOCAB_EMBED, _load_into,
                           _say, _tdtype, bert_shape, nn_encoder)


# ================================================================ pieces ====
def _layer_cases(torch, dtype, B, L, seed=0):
    """``[(name, shape text, {nn_fwd, torch_fwd, nn_fb, torch_fb} or the step pair)]``."""
    from ..attention import MultiHeadAttention, ScaledDotProductAttention
    from ..layers import GELU, Embedding, LayerNorm, Linear
    from ..losses import CrossEntropyLoss
    from ..module import inference_mode
    from ..optim import AdamW

    nn, F = torch.nn, torch.nn.functional
    tdt = _tdtype(torch, dtype)
    rng = np.random.default_rng(seed)

    def arr(*shape):
        return rng.standard_normal(shape).astype(dtype)

    def module_case(ours, theirs, x, y_shape, torch_call=None):
        """Forward (inference) and zero_grad + forward + backward of ``ours(x)`` and
        ``theirs(x)`` with a random upstream gradient."""
        g = arr(*y_shape)
        xt = torch.from_numpy(x.copy())
        xg = torch.from_numpy(x.copy()).requires_grad_(True)
        gt = torch.from_numpy(g)
        call = torch_call or theirs
        mod = theirs if isinstance(theirs, nn.Module) else None

        def nn_fwd():
            with inference_mode():
                ours(x)

        def torch_fwd():
            if mod is not None:
                mod.eval()
            with torch.inference_mode():
                call(xt)
            if mod is not None:
                mod.train()

        def nn_fb():
            if hasattr(ours, "zero_grad"):
                ours.zero_grad()
            ours(x)
            ours.backward(g)

        def torch_fb():
            if mod is not None:
                mod.zero_grad()
            xg.grad = None
            call(xg).backward(gt)

        return dict(nn_fwd=nn_fwd, torch_fwd=torch_fwd, nn_fb=nn_fb, torch_fb=torch_fb)

    def twin(ours, theirs):
        _load_into(torch, theirs, ours)
        return theirs

    N = f"{B}x{L}"
    cases = []
    lin = Linear(D_MODEL, FFN, dtype=dtype, rng=seed)
    cases.append(("Linear 384->1536", f"{N}x{D_MODEL}",
                  module_case(lin, twin(lin, nn.Linear(D_MODEL, FFN, dtype=tdt)),
                              arr(B, L, D_MODEL), (B, L, FFN))))
    ln = LayerNorm(D_MODEL, eps=LN_EPS, dtype=dtype)
    cases.append(("LayerNorm 384", f"{N}x{D_MODEL}",
                  module_case(ln, twin(ln, nn.LayerNorm(D_MODEL, eps=LN_EPS, dtype=tdt)),
                              arr(B, L, D_MODEL), (B, L, D_MODEL))))
    for approx in ("none", "tanh"):
        cases.append((f"GELU {'exact' if approx == 'none' else 'tanh'}", f"{N}x{FFN}",
                      module_case(GELU(approx, dtype=dtype), None, arr(B, L, FFN), (B, L, FFN),
                                  torch_call=lambda a, ap=approx: F.gelu(a, approximate=ap))))

    # softmax cross-entropy, masked-LM style: 85 % of the targets ignored
    logits = arr(B, L, VOCAB_CE)
    targets = rng.integers(0, VOCAB_CE, (B, L))
    targets[rng.random((B, L)) >= 0.15] = -100
    ce = CrossEntropyLoss(ignore_index=-100, dtype=dtype)
    zt = torch.from_numpy(logits.copy())
    zg = torch.from_numpy(logits.copy()).requires_grad_(True)
    tt = torch.from_numpy(targets.reshape(-1))

    def ce_nn_fwd():
        with inference_mode():
            ce(logits, targets)

    def ce_torch_fwd():
        with torch.inference_mode():
            F.cross_entropy(zt.view(-1, VOCAB_CE), tt, ignore_index=-100)

    def ce_nn_fb():
        ce(logits, targets)
        ce.backward()

    def ce_torch_fb():
        zg.grad = None
        F.cross_entropy(zg.view(-1, VOCAB_CE), tt, ignore_index=-100).backward()

    cases.append(("cross-entropy ignore_idx", f"{N}x{VOCAB_CE}",
                  dict(nn_fwd=ce_nn_fwd, torch_fwd=ce_torch_fwd, nn_fb=ce_nn_fb,
                       torch_fb=ce_torch_fb)))

    # embedding: integer ids, no input gradient
    emb = Embedding(VOCAB_EMBED, D_MODEL, dtype=dtype, rng=seed)
    temb = twin(emb, nn.Embedding(VOCAB_EMBED, D_MODEL, dtype=tdt))
    ids = rng.integers(0, VOCAB_EMBED, (B, L))
    ids_t = torch.from_numpy(ids)
    ge = arr(B, L, D_MODEL)
    ge_t = torch.from_numpy(ge)

    def emb_nn_fwd():
        with inference_mode():
            emb(ids)

    def emb_torch_fwd():
        with torch.inference_mode():
            temb(ids_t)

    def emb_nn_fb():
        emb.zero_grad()
        emb(ids)
        emb.backward(ge)

    def emb_torch_fb():
        temb.zero_grad()
        temb(ids_t).backward(ge_t)

    cases.append((f"Embedding {VOCAB_EMBED}", f"{N} ids",
                  dict(nn_fwd=emb_nn_fwd, torch_fwd=emb_torch_fwd, nn_fb=emb_nn_fb,
                       torch_fb=emb_torch_fb)))

    # SDPA on the encoder's per-head tensors
    dk = D_MODEL // HEADS
    q, k, v, gs = (arr(B, HEADS, L, dk) for _ in range(4))
    sdpa = ScaledDotProductAttention(dtype=dtype)
    qt = [torch.from_numpy(a.copy()) for a in (q, k, v)]
    qg = [torch.from_numpy(a.copy()).requires_grad_(True) for a in (q, k, v)]
    gst = torch.from_numpy(gs)

    def sdpa_nn_fwd():
        with inference_mode():
            sdpa(q, k, v)

    def sdpa_torch_fwd():
        with torch.inference_mode():
            F.scaled_dot_product_attention(*qt)

    def sdpa_nn_fb():
        sdpa(q, k, v)
        sdpa.backward(gs)

    def sdpa_torch_fb():
        for a in qg:
            a.grad = None
        F.scaled_dot_product_attention(*qg).backward(gst)

    cases.append(("SDPA", f"{B}x{HEADS}x{L}x{dk}",
                  dict(nn_fwd=sdpa_nn_fwd, torch_fwd=sdpa_torch_fwd, nn_fb=sdpa_nn_fb,
                       torch_fb=sdpa_torch_fb)))

    mha = MultiHeadAttention(D_MODEL, HEADS, dtype=dtype, rng=seed)
    tmha = twin(mha, nn.MultiheadAttention(D_MODEL, HEADS, batch_first=True, dtype=tdt))
    cases.append(("MultiHeadAttention", f"{N}x{D_MODEL}",
                  module_case(mha, tmha, arr(B, L, D_MODEL), (B, L, D_MODEL),
                              torch_call=lambda a: tmha(a, a, a, need_weights=False)[0])))

    # one AdamW step over the encoder's parameters, gradients random
    enc = nn_encoder(dtype, seed)
    params = enc.parameters()
    grads = {k: (1e-3 * rng.standard_normal(p.shape)).astype(dtype)
             for k, p in params.items()}
    opt = AdamW((params, grads), lr=1e-4, weight_decay=0.01)
    tparams = {}
    for fused in (False, True):
        ps = [torch.from_numpy(p.copy()).requires_grad_(True) for p in params.values()]
        for p, gr in zip(ps, grads.values()):
            p.grad = torch.from_numpy(gr.copy())
        tparams[fused] = (ps, torch.optim.AdamW(ps, lr=1e-4, weight_decay=0.01,
                                                fused=True if fused else None))
    n_par = sum(p.size for p in params.values())
    cases.append(("AdamW step", f"{n_par / 1e6:.1f}M params",
                  dict(nn_fb=opt.step, torch_fb=tparams[False][1].step)))
    cases.append(("AdamW step, torch fused", f"{n_par / 1e6:.1f}M params",
                  dict(nn_fb=opt.step, torch_fb=tparams[True][1].step)))
    return cases


def run_layers(torch, thread_counts, dtype, repeat, min_time, args, out=_say):
    B, L = bert_shape(args)
    out(f"\n== Pieces at the BERT shapes (B={B}, L={L}, {np.dtype(dtype).name}): forward "
        f"(inference) | zero_grad + forward + backward ==")
    cases = _layer_cases(torch, dtype, B, L)
    hdr = (f"{'piece':<25} {'shape':<18} {'thr':>3} | {'nn fwd':>8} {'torch':>8} {'ratio':>5} "
           f"| {'nn f+b':>8} {'torch':>8} {'ratio':>5}")
    for n in thread_counts:
        with threads(n):
            out(f"# threads={n}: {thread_report()}  (ms)")
            out(hdr)
            for name, shape, fns in cases:
                t = interleaved(fns, repeat=repeat, min_time=min_time,
                                settle=0.2 if n > 1 else 0.0)

                def cols(a, b):
                    if a not in t:
                        return f"{'-':>8} {'-':>8} {'-':>5}"
                    return f"{t[a] * 1e3:8.2f} {t[b] * 1e3:8.2f} {t[a] / t[b]:5.2f}"
                out(f"{name:<25} {shape:<18} {n:>3} | {cols('nn_fwd', 'torch_fwd')} | "
                    f"{cols('nn_fb', 'torch_fb')}")
    out("(AdamW rows: one optimizer step in the f+b columns; torch's default on CPU is its "
        "per-tensor loop)")
