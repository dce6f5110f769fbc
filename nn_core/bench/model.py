"""Whole models vs PyTorch: the CLI's training steps, a BERT-style encoder, its pieces,
inference memory and page faults (issue 11).

``python -m nn_core.bench model [--threads 1,2] [--repeat 3] [--min-time 0.2]
[--only steps,bert,layers,memory,faults] [--quick] [--seq-len 128]
[--dtype float32|float64]``

Every timing is the median of interleaved rounds in one run (``_common.interleaved``;
with more than one thread each sample is preceded by a short sleep and an untimed
call, so that neither library's spinning thread pool takes a core from the other's
timed run).  ``ratio`` = nn_core time / torch time (below 1: nn_core is faster);
``*`` marks a ratio above its target.  Sections:

``steps``
    One training step of each CLI model (``nn-core train TASK`` at its default sizes,
    built by the task itself, on the first batch of ``task.train_batches``) exactly as
    :func:`nn_core.training.train` runs it: ``zero_grad``, ``task.train_step``
    (forward, loss, backward, the step's accuracy bookkeeping), ``clip_grad_norm(1.0)``,
    AdamW step, schedule step.  Against a torch twin of the model holding the same
    initial weights (copied through :mod:`nn_core.interop`), stepped the way a torch
    user would: ``zero_grad()``, forward, ``F.cross_entropy`` / ``F.mse_loss``,
    ``backward()``, ``clip_grad_norm_(1.0)``, ``torch.optim.AdamW`` (defaults), a
    ``LambdaLR`` of the same schedule, and the same bookkeeping (``loss.item()``,
    accuracy counts).  Before timing, each pair runs its first two steps and the
    losses and gradient norms are compared (a warning is printed if they differ by
    more than float rounding).  Target: 0.8.

    The CLI's GRU models use ``GRUCell(reset_after=False)`` (the documented GRU
    equation); torch's ``nn.GRU`` only computes the reset-after form, so their twins
    compute a different (equally costly) recurrence and their losses cannot agree.
    Their checks therefore run on a copy of the model whose GRU cells are
    ``reset_after=True`` with the same weights (the twin's wiring is then checked
    exactly), and that copy is timed too (rows marked ``ra``, no target).

``bert``
    Six ``TransformerEncoderLayer(384, 12, 1536, dropout=0.0, activation="gelu",
    layer_norm_eps=1e-12)`` (post-LN, exact-erf GELU) in a ``Sequential`` against
    ``torch.nn.TransformerEncoder`` of the same layers (weights copied), at
    ``B=64, L=128`` (``--seq-len``; ``--quick``: ``B=2, L=16``):

    * ``forward (inference)``: nn_core under ``nn_core.inference_mode()``, torch under
      ``torch.inference_mode()`` in ``eval()`` (its fused encoder-layer path);
    * ``forward (training)``: the forward part of the forward+backward calls below (a
      training-mode forward that keeps what backward needs; torch with
      ``requires_grad``), timed inside those calls: the median over all but the first;
    * ``forward+backward``: ``zero_grad`` (torch: gradients set to ``None``), forward,
      backward of ``<y, g>`` with the input gradient and every parameter gradient.

    Targets: forward 0.8, forward+backward 0.9.  From ``B*L = 2048`` (calls of
    seconds) the samples are taken without ``settle``: the other pool's ~0.1 s of
    spinning is then a few % of a sample, and the untimed calls would cost a third of
    the section's time.

``layers``
    The pieces at the BERT shapes: ``Linear(384, 1536)``, ``LayerNorm(384)``, GELU
    (exact and tanh) on ``[B, L, 1536]``, softmax cross-entropy over ``[B, L, 2048]``
    logits with 85 % of the targets ``ignore_index`` (masked-LM style), ``Embedding(30522,
    384)``, SDPA ``[B, 12, L, 32]``, ``MultiHeadAttention(384, 12)`` (torch:
    ``need_weights=False``), and one AdamW step over the encoder's parameters (torch
    default, and ``fused=True``).  Forward as the inference forward above;
    forward+backward as above (``zero_grad`` included).  No targets.

``memory``
    Peak resident-memory increase of one forward of the encoder under
    ``nn_core.inference_mode()`` vs ``torch.inference_mode()`` (both in ``eval()``),
    each in a fresh subprocess with one thread: after a tiny warm-up forward (lazy
    imports, JIT, thread pools), ``gc`` and ``malloc_trim``, the kernel's peak-RSS mark
    is reset (``/proc/self/clear_refs``), the forward runs, and ``VmHWM - VmRSS
    before`` is the figure (``ru_maxrss``, an upper bound, where the reset is not
    possible).  Printed for that first forward (the target's figure) and for a second
    one in the same process (``again``: what is still allocated from the first, such
    as reused work buffers, no longer counts), with nn_core's peak of the allocations
    ``tracemalloc`` sees (NumPy arrays, Python objects) during the first.  Target: 1.5.

``faults``
    Minor page faults (``getrusage``) per training step of each CLI model after 3
    warm-up steps (mean of 5), nn_core and torch each in a fresh process per model
    (with ``--quick``: one process per library for all models).  A fresh process is
    what ``nn-core train`` is: the count depends on the C allocator's state, which
    everything run before in the same process changes (after this script's other
    sections nn_core's count drops to about 0).  Target: under 100 (nn_core).
"""
from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

from ._common import (fmt_ms, interleaved, machine_report, thread_report, threads,
                      torch_or_none)

SECTIONS = ("steps", "bert", "layers", "memory", "faults")

STEP_TARGET = 0.8
BERT_FWD_TARGET = 0.8
BERT_FB_TARGET = 0.9
MEMORY_TARGET = 1.5
FAULT_TARGET = 100

#: the CLI models: (row label, task, encoder/forecaster cell or None)
CLI_MODELS = (("seq2seq", "seq2seq", "gru"), ("seq2seq --cell lstm", "seq2seq", "lstm"),
              ("forecast", "forecast", "gru"), ("forecast --cell lstm", "forecast", "lstm"),
              ("lm", "lm", None))

#: smaller data sets for --quick (the models and batch shapes stay the CLI's defaults)
_QUICK_DATA = {"seq2seq": ["--train-size", "640", "--val-size", "64"],
               "forecast": ["--steps", "2000"],
               "lm": ["--train-exprs", "2000", "--val-exprs", "200"]}

# the BERT-style encoder
D_MODEL, HEADS, FFN, LAYERS, LN_EPS = 384, 12, 1536, 6, 1e-12
VOCAB_EMBED, VOCAB_CE = 30522, 2048


def _say(*args):
    print(*args, flush=True)


def _tdtype(torch, dtype):
    return torch.float64 if np.dtype(dtype) == np.float64 else torch.float32


def _rel(a, b):
    return abs(a - b) / max(abs(a), abs(b), 1e-30)


def _check_tol(dtype):
    """Relative tolerance of the parity checks: float rounding, with room for the
    different summation orders of two libraries."""
    return 1e-4 if np.dtype(dtype) == np.float32 else 1e-9


# ======================================================================= twins ====
_TWINS = {}


def _twin_classes(torch):
    """Torch twins of the CLI models (built once; torch is imported lazily)."""
    if _TWINS:
        return _TWINS
    nn, F = torch.nn, torch.nn.functional
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    from ..datasets.digit_strings import PAD

    class Seq2SeqTwin(nn.Module):
        """``Seq2SeqModel``: bidirectional GRU/LSTM encoder over packed sources, tanh
        bridge, LSTM decoder (teacher forcing, packed targets) from ``(h_0, 0)``, cross
        attention with a source padding mask, output Linear over ``[dec; attn]``."""

        def __init__(self, V, E, H, heads, cell):
            super().__init__()
            self.lstm_encoder = cell == "lstm"
            self.src_embed = nn.Embedding(V, E, padding_idx=PAD)
            self.tgt_embed = nn.Embedding(V, E, padding_idx=PAD)
            self.encoder = (nn.LSTM if self.lstm_encoder else nn.GRU)(
                E, H, batch_first=True, bidirectional=True)
            self.bridge = nn.Linear(2 * H, H)
            self.decoder = nn.LSTM(E, H, batch_first=True)
            self.attention = nn.MultiheadAttention(H, heads, kdim=2 * H, vdim=2 * H,
                                                   batch_first=True)
            self.out = nn.Linear(2 * H, V)

        def forward(self, src, src_len, tgt_in, tgt_len):
            S, T = src.shape[1], tgt_in.shape[1]
            packed = pack_padded_sequence(self.src_embed(src), src_len, batch_first=True,
                                          enforce_sorted=False)
            enc, state = self.encoder(packed)
            enc, _ = pad_packed_sequence(enc, batch_first=True, total_length=S)  # (B, S, 2H)
            h_n = state[0] if self.lstm_encoder else state                     # (2, B, H)
            h0 = torch.tanh(self.bridge(torch.cat([h_n[0], h_n[1]], -1)))[None]  # (1, B, H)
            packed = pack_padded_sequence(self.tgt_embed(tgt_in), tgt_len, batch_first=True,
                                          enforce_sorted=False)
            dec, _ = self.decoder(packed, (h0, torch.zeros_like(h0)))
            dec, _ = pad_packed_sequence(dec, batch_first=True, total_length=T)  # (B, T, H)
            ignore = torch.arange(S)[None, :] >= src_len[:, None]               # True = pad
            a, _ = self.attention(dec, enc, enc, key_padding_mask=ignore, need_weights=False)
            return self.out(torch.cat([dec, a], -1))                           # (B, T, V)

    class ForecasterTwin(nn.Module):
        """``Forecaster``: GRU/LSTM over the window, linear head on the final ``h``,
        plus the last observation."""

        def __init__(self, D, H, cell):
            super().__init__()
            self.lstm = cell == "lstm"
            self.rnn = (nn.LSTM if self.lstm else nn.GRU)(D, H, batch_first=True)
            self.head = nn.Linear(H, D)

        def forward(self, x):
            _, state = self.rnn(x)
            h = state[0] if self.lstm else state
            return x[:, -1] + self.head(h[0])

    def gelu_tanh(x):
        return F.gelu(x, approximate="tanh")

    class LMTwin(nn.Module):
        """``TransformerLM``: token + position embeddings, pre-LN blocks with tanh-GELU
        (``TransformerEncoderLayer(norm_first=True)`` with a causal mask), final
        LayerNorm, head."""

        def __init__(self, V, d, heads, layers, max_len):
            super().__init__()
            self.tok_embed = nn.Embedding(V, d)
            self.pos_embed = nn.Embedding(max_len, d)
            self.blocks = nn.ModuleList([
                nn.TransformerEncoderLayer(d, heads, 4 * d, dropout=0.0, activation=gelu_tanh,
                                           batch_first=True, norm_first=True)
                for _ in range(layers)])
            self.ln_f = nn.LayerNorm(d)
            self.head = nn.Linear(d, V)
            self._masks = {}

        def forward(self, ids):
            L = ids.shape[1]
            if L not in self._masks:
                self._masks[L] = nn.Transformer.generate_square_subsequent_mask(
                    L, dtype=self.head.weight.dtype)
            x = self.tok_embed(ids) + self.pos_embed(torch.arange(L))
            for blk in self.blocks:
                x = blk(x, src_mask=self._masks[L], is_causal=True)
            return self.head(self.ln_f(x))

    _TWINS.update(seq2seq=Seq2SeqTwin, forecast=ForecasterTwin, lm=LMTwin)
    return _TWINS


def _load_into(torch, tmod, module):
    """Copy ``module``'s weights into the torch module ``tmod`` through nn_core.interop."""
    from ..interop import to_torch_state_dict

    sd = {k: torch.from_numpy(np.array(v)) for k, v in to_torch_state_dict(module).items()}
    tmod.load_state_dict(sd)


def _as_reset_after(cell):
    """A ``GRUCell(reset_after=True)`` with ``cell``'s weights (``cell`` if not a GRU)."""
    from ..recurrent import GRUCell

    if not isinstance(cell, GRUCell) or cell.reset_after:
        return cell
    new = GRUCell(cell.input_size, cell.hidden_size, reset_after=True, dtype=cell.dtype)
    new.load_state_dict(cell.state_dict())
    return new


def reset_after_variant(model):
    """A copy of a Seq2SeqModel / Forecaster whose GRU cells are ``reset_after=True``
    with the same weights (torch's GRU); ``None`` when the model has no GRU."""
    from ..models import Forecaster, Seq2SeqModel
    from ..recurrent import BidirectionalWrapper, GRUCell

    if isinstance(model, Seq2SeqModel) and isinstance(model.encoder.fw, GRUCell):
        m = copy.deepcopy(model)
        m.encoder = BidirectionalWrapper(_as_reset_after(m.encoder.fw),
                                         _as_reset_after(m.encoder.bw), merge_mode="concat")
        return m
    if isinstance(model, Forecaster) and isinstance(model.rnn, GRUCell):
        m = copy.deepcopy(model)
        m.rnn = _as_reset_after(m.rnn)
        return m
    return None


def make_twin(torch, task, model):
    """The torch twin of ``task``'s ``model`` with the same weights (GRU cells with
    ``reset_after=False`` are copied as they are: same parameters, torch's recurrence)."""
    from ..recurrent import BidirectionalWrapper

    classes = _twin_classes(torch)
    tdt = _tdtype(torch, model.dtype)
    c = task.config
    if task.name == "seq2seq":
        mc = model.config
        twin = classes["seq2seq"](mc["vocab_size"], mc["embed_dim"], mc["hidden_size"],
                                  mc["num_heads"], mc["cell"])
        enc = BidirectionalWrapper(_as_reset_after(model.encoder.fw),
                                   _as_reset_after(model.encoder.bw), merge_mode="concat")
        pairs = [("src_embed", model.src_embed), ("tgt_embed", model.tgt_embed),
                 ("encoder", enc), ("bridge", model.bridge), ("decoder", model.decoder),
                 ("attention", model.attention), ("out", model.out)]
    elif task.name == "forecast":
        twin = classes["forecast"](model.head.out_features, c["hidden"], c["cell"])
        pairs = [("rnn", _as_reset_after(model.rnn)), ("head", model.head)]
    else:
        twin = classes["lm"](model.tok_embed.num_embeddings, model.d_model, c["heads"],
                             c["layers"], model.max_len)
        pairs = [("tok_embed", model.tok_embed), ("pos_embed", model.pos_embed),
                 ("ln_f", model.ln_f), ("head", model.head)]
        pairs += [(f"blocks.{i}", blk) for i, blk in enumerate(model.blocks)]
    twin = twin.to(tdt)
    for name, module in pairs:
        _load_into(torch, twin.get_submodule(name), module)
    return twin.train()


# ======================================================== CLI training steps ====
def cli_task(name, cell, quick=False):
    """``(task, args)`` exactly as ``nn-core train NAME [--cell CELL]`` builds them."""
    from ..cli import _train_parser
    from ..tasks import get_task

    cls = get_task(name)
    argv = [name] + (["--cell", cell] if cell else []) + (_QUICK_DATA[name] if quick else [])
    args = _train_parser(cls).parse_args(argv)
    return cls(cls.config_from_args(args)), args


def cli_model(name, cell, dtype, quick=False, seed=0):
    """``(task, args, model, batch)``: the CLI's model, built as
    :func:`nn_core.training.train` builds it, and the first batch of its first epoch."""
    task, args = cli_task(name, cell, quick)
    rng = np.random.default_rng(seed)
    model = task.build_model(dtype, rng)
    batch = next(iter(task.train_batches(rng, args.batch_size)))
    return task, args, model, batch


class StepPair:
    """An nn_core model and its torch twin (none when ``torch`` is ``None``), each with
    AdamW and the warmup-cosine schedule of :func:`nn_core.training.train`, and one
    batch of the task's data."""

    def __init__(self, torch, task, args, model, batch):
        from ..optim import AdamW, WarmupCosine, warmup_cosine

        self.torch, self.task, self.model, self.batch = torch, task, model, batch
        per_epoch = task.num_batches(args.batch_size)
        total = args.epochs * per_epoch
        warmup = max(1, int(0.05 * total))
        self.opt = AdamW(model, lr=args.lr, weight_decay=0.01)
        self.sched = WarmupCosine(self.opt, warmup_steps=warmup, total_steps=total,
                                  min_lr=args.lr / 20)
        if torch is None:       # nn_core alone (the page-fault subprocesses)
            return
        self.twin = make_twin(torch, task, model)
        self.tparams = list(self.twin.parameters())
        self.topt = torch.optim.AdamW(self.tparams, lr=args.lr, weight_decay=0.01)
        self.tsched = torch.optim.lr_scheduler.LambdaLR(
            self.topt, lambda s: warmup_cosine(s, 1.0, warmup, total, 1.0 / 20))
        self.tdt = _tdtype(torch, model.dtype)
        self._torch_loss = getattr(self, f"_loss_{task.name}")

    # --- nn_core: exactly the body of nn_core.training.train's loop
    def nn_step(self):
        from ..optim import clip_grad_norm

        self.opt.zero_grad()
        stats = self.task.train_step(self.model, self.batch)
        norm = clip_grad_norm(self.model, 1.0)
        self.opt.step()
        self.sched.step()
        return float(stats["loss"]), norm

    # --- torch: the same step, written the way a torch user would
    def torch_step(self):
        torch = self.torch
        self.topt.zero_grad()
        loss, bookkeeping = self._torch_loss()
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.tparams, 1.0)
        self.topt.step()
        self.tsched.step()
        value = loss.item()
        bookkeeping()
        return value, norm

    def _loss_seq2seq(self):
        from ..datasets.digit_strings import PAD

        torch, F = self.torch, self.torch.nn.functional
        src, src_len, tin, tout, tgt_len = (torch.as_tensor(a) for a in self.batch)
        logits = self.twin(src, src_len, tin, tgt_len)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tout.reshape(-1),
                               ignore_index=PAD)

        def bookkeeping():
            keep = tout != PAD
            return int(((logits.detach().argmax(-1) == tout) & keep).sum()), int(keep.sum())
        return loss, bookkeeping

    def _loss_forecast(self):
        torch, F = self.torch, self.torch.nn.functional
        x, y = (torch.as_tensor(a, dtype=self.tdt) for a in self.batch)
        return F.mse_loss(self.twin(x), y), lambda: None

    def _loss_lm(self):
        from ..datasets.arithmetic import answer_mask

        torch, F = self.torch, self.torch.nn.functional
        batch = torch.as_tensor(self.batch)
        x, y = batch[:, :-1], batch[:, 1:]
        logits = self.twin(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))

        def bookkeeping():
            ans = torch.from_numpy(answer_mask(self.batch)[:, 1:])
            return int(((logits.detach().argmax(-1) == y) & ans).sum()), int(ans.sum())
        return loss, bookkeeping

    def check(self, label, out=_say):
        """Run two steps on both sides; compare losses and the first gradient norm."""
        (l1, n1), (l2, _) = self.nn_step(), self.nn_step()
        (t1, m1), (t2, _) = self.torch_step(), self.torch_step()
        m1 = float(m1)
        tol = _check_tol(self.model.dtype)
        errs = (_rel(l1, t1), _rel(n1, m1), _rel(l2, t2))
        ok = errs[0] <= tol and errs[1] <= 10 * tol and errs[2] <= 10 * tol
        out(f"check {label}: loss {l1:.6f} | torch {t1:.6f} (rel {errs[0]:.1e}); grad norm "
            f"{n1:.5g} | {m1:.5g} (rel {errs[1]:.1e}); second-step loss {l2:.6f} | {t2:.6f} "
            f"(rel {errs[2]:.1e}): {'ok' if ok else 'WARNING: the two sides differ'}")
        return ok


def build_step_pairs(torch, dtype, quick=False, seed=0, out=_say):
    """``[(label, pair, target or None, cli_model)]`` for the CLI models and, for the GRU
    models, their ``reset_after=True`` copies (``ra``); checked once each."""
    rows = []
    for label, name, cell in CLI_MODELS:
        task, args, model, batch = cli_model(name, cell, dtype, quick, seed)
        variant = reset_after_variant(model)
        pair = StepPair(torch, task, args, model, batch)
        if variant is None:
            pair.check(label, out)
            rows.append((label, pair, STEP_TARGET, True))
            continue
        ra = StepPair(torch, task, args, variant, batch)
        ra.check(f"{label} (ra: GRU reset_after=True, torch's recurrence)", out)
        l_nn, _ = pair.nn_step()
        l_t, _ = pair.torch_step()
        out(f"      {label} as the CLI builds it (GRU reset_after=False; the twin's nn.GRU "
            f"is reset-after): first loss {l_nn:.6f} | torch {l_t:.6f} -- a different "
            f"recurrence, same weights and FLOPs")
        rows.append((label, pair, STEP_TARGET, True))
        rows.append((f"{label} (ra)", ra, None, False))
    return rows


def run_steps(torch, thread_counts, dtype, repeat, min_time, quick, out=_say, pairs=None):
    out(f"\n== Training steps of the CLI models ({np.dtype(dtype).name}): zero_grad, forward, "
        f"loss, backward, clip_grad_norm(1.0), AdamW, schedule ==")
    if pairs is None:
        pairs = build_step_pairs(torch, dtype, quick, out=out)
    hdr = (f"{'model':<26} {'thr':>3} {'nn_core ms':>10} {'torch ms':>10} {'ratio':>6} "
           f"{'target':>6}")
    for n in thread_counts:
        with threads(n):
            out(f"# threads={n}: {thread_report()}")
            out(hdr)
            for label, pair, target, _ in pairs:
                t = interleaved({"nn": pair.nn_step, "torch": pair.torch_step}, repeat=repeat,
                                min_time=min_time, settle=0.2 if n > 1 else 0.0)
                r = t["nn"] / t["torch"]
                tgt = f"{target:6.2f}" if target else f"{'-':>6}"
                flag = "" if target is None or r <= target else " *"
                out(f"{label:<26} {n:>3} {fmt_ms(t['nn']):>10} {fmt_ms(t['torch']):>10} "
                    f"{r:6.2f} {tgt}{flag}")
    out("(ra) = the same model with its GRU cells reset_after=True, torch's recurrence, "
        "same weights; the CLI's GRU is reset_after=False, which torch does not have")
    return pairs


# ============================================================ BERT encoder ====
def nn_encoder(dtype, seed=0):
    """Six post-LN ``TransformerEncoderLayer`` (BERT-base widths divided by 2) in a
    ``Sequential``."""
    from ..layers import Sequential
    from ..transformer import TransformerEncoderLayer

    return Sequential(*[TransformerEncoderLayer(D_MODEL, HEADS, FFN, dropout=0.0,
                                                activation="gelu", layer_norm_eps=LN_EPS,
                                                dtype=dtype, rng=seed + i)
                        for i in range(LAYERS)])


def torch_encoder(torch, dtype, ours=None):
    """``torch.nn.TransformerEncoder`` of the same layers (``ours``' weights if given)."""
    layer = torch.nn.TransformerEncoderLayer(D_MODEL, HEADS, FFN, dropout=0.0,
                                             activation="gelu", layer_norm_eps=LN_EPS,
                                             batch_first=True, dtype=_tdtype(torch, dtype))
    enc = torch.nn.TransformerEncoder(layer, LAYERS, enable_nested_tensor=False)
    if ours is not None:
        for tl, ol in zip(enc.layers, ours):
            _load_into(torch, tl, ol)
    return enc


def bert_shape(args):
    B, L = (2, 16) if args.quick else (64, 128)
    return B, args.seq_len or L


def _bert_check(torch, ours, theirs, x, g, out):
    """Forward output and input gradient of both on the first two sequences."""
    xs, gs = x[:2], g[:2]
    y = ours(xs)
    gx = ours.backward(gs)
    ours.zero_grad()
    xt = torch.from_numpy(xs.copy()).requires_grad_(True)
    yt = theirs(xt)
    yt.backward(torch.from_numpy(gs))
    theirs.zero_grad()
    ey = np.abs(y - yt.detach().numpy()).max() / np.abs(y).max()
    eg = np.abs(gx - xt.grad.numpy()).max() / np.abs(gx).max()
    tol = 1e-3 if x.dtype == np.float32 else 1e-9
    ok = ey <= tol and eg <= tol
    out(f"check: max |y - y_torch| / max |y| = {ey:.1e}, same for grad_x {eg:.1e}: "
        f"{'ok' if ok else 'WARNING: the two encoders differ'}")
    return ok


def run_bert(torch, thread_counts, dtype, repeat, min_time, args, out=_say):
    from ..module import inference_mode

    B, L = bert_shape(args)
    out(f"\n== BERT-style encoder: {LAYERS} post-LN layers, d={D_MODEL}, h={HEADS}, "
        f"FFN {FFN}, exact GELU, B={B}, L={L}, {np.dtype(dtype).name} ==")
    ours = nn_encoder(dtype)
    theirs = torch_encoder(torch, dtype, ours)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((B, L, D_MODEL)).astype(dtype)
    g = rng.standard_normal((B, L, D_MODEL)).astype(dtype)
    _bert_check(torch, ours, theirs, x, g, out)
    xt = torch.from_numpy(x.copy())
    xg = torch.from_numpy(x.copy()).requires_grad_(True)
    gt = torch.from_numpy(g)

    def nn_inf():
        with inference_mode():
            ours(x)

    def torch_inf():
        theirs.eval()
        with torch.inference_mode():
            theirs(xt)
        theirs.train()

    # The training forward is timed inside the forward+backward calls (no extra calls:
    # at these sizes one call takes seconds): the median of their forward parts.
    split = {"nn_fb": [], "torch_fb": []}

    def nn_fb():
        ours.zero_grad()
        t0 = time.perf_counter()
        ours(x)
        split["nn_fb"].append(time.perf_counter() - t0)
        ours.backward(g)

    def torch_fb():
        theirs.zero_grad()
        xg.grad = None
        t0 = time.perf_counter()
        y = theirs(xg)
        split["torch_fb"].append(time.perf_counter() - t0)
        y.backward(gt)

    fns = {"nn_inf": nn_inf, "torch_inf": torch_inf, "nn_fb": nn_fb, "torch_fb": torch_fb}
    # With more than one thread, settle (a sleep and an untimed call before each sample)
    # keeps the other library's spinning pool (up to ~0.1 s after its call) off the
    # timed run.  From B*L = 2048 one call of this encoder takes seconds: the spin is
    # then under a few % of a sample, while the untimed calls would add 3 multi-second
    # calls per contender (a third of the section's time); so no settle there.
    long_calls = B * L >= 2048
    rows = (("forward (inference)", "nn_inf", "torch_inf", BERT_FWD_TARGET),
            ("forward (training)", "nn_tf", "torch_tf", BERT_FWD_TARGET),
            ("forward+backward", "nn_fb", "torch_fb", BERT_FB_TARGET))
    hdr = (f"{'what':<22} {'thr':>3} {'nn_core ms':>10} {'torch ms':>10} {'ratio':>6} "
           f"{'target':>6}")
    for n in thread_counts:
        with threads(n):
            out(f"# threads={n}: {thread_report()}")
            out(hdr)
            for v in split.values():
                v.clear()
            t = interleaved(fns, repeat=repeat, min_time=min_time,
                            settle=0.2 if n > 1 and not long_calls else 0.0)
            t["nn_tf"] = float(np.median(split["nn_fb"][1:]))      # [0]: the warm-up call
            t["torch_tf"] = float(np.median(split["torch_fb"][1:]))
            for label, a, b, target in rows:
                r = t[a] / t[b]
                out(f"{label:<22} {n:>3} {fmt_ms(t[a]):>10} {fmt_ms(t[b]):>10} {r:6.2f} "
                    f"{target:6.2f}{'' if r <= target else ' *'}")


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


# ================================================================ memory ====
def _proc_status_kib(field):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _reset_peak_rss():
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS; False if impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        _proc_status_kib("VmHWM")
        return True
    except OSError:
        return False
    except KeyError:
        return False


def _malloc_trim():
    """Hand the C heap's free memory back to the OS (glibc), so that the RSS before the
    forward is the live set and the forward's allocations show up in the RSS."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _forward_peak(forward, x, traced=False):
    """Peak RSS increase (MiB) over the RSS before ``forward(x)``, the method used, and
    (``traced``) the peak of the allocations tracemalloc sees (NumPy arrays and Python
    objects; torch's tensors are invisible to it)."""
    import tracemalloc

    gc.collect()
    _malloc_trim()
    rss0 = _proc_status_kib("VmRSS")
    reset = _reset_peak_rss()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()          # in both libraries' children: same bookkeeping cost
    y = forward(x)
    traced_peak = tracemalloc.get_traced_memory()[1] / 2 ** 20
    tracemalloc.stop()
    if reset:
        peak, method = _proc_status_kib("VmHWM"), "VmHWM after clear_refs"
    else:   # an upper bound: the mark may still hold an earlier, higher peak
        peak = max(before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
        method = "ru_maxrss (upper bound)"
    del y
    return (peak - rss0) / 1024, method, traced_peak if traced else None


def _memory_child(argv):
    """Subprocess body: inference forwards of the encoder in a fresh process (after a
    tiny warm-up forward); prints one JSON line: ``first_mib`` (the first full-size
    forward), ``second_mib`` (the next one), ``method``, ``traced_mib``, ``weights_mib``."""
    lib, B, L, dname = argv[0], int(argv[1]), int(argv[2]), argv[3]
    dtype = np.dtype(dname).type
    rng = np.random.default_rng(0)
    x = rng.standard_normal((B, L, D_MODEL)).astype(dtype)
    if lib == "nn_core":
        from ..module import inference_mode
        enc = nn_encoder(dtype).eval()
        weights = sum(p.nbytes for p in enc.parameters().values())

        def forward(a):
            with inference_mode():
                return enc(a)
    else:
        import torch
        torch.set_num_threads(1)
        enc = torch_encoder(torch, dtype).eval()
        weights = sum(p.numel() * p.element_size() for p in enc.parameters())

        def forward(a):
            with torch.inference_mode():
                return enc(torch.from_numpy(a))
    forward(np.ascontiguousarray(x[:1, :8]))      # lazy imports, kernel JIT, thread pools
    first, method, traced = _forward_peak(forward, x, traced=lib == "nn_core")
    second, _, _ = _forward_peak(forward, x)
    print(json.dumps({"first_mib": first, "second_mib": second, "method": method,
                      "traced_mib": traced, "weights_mib": weights / 2 ** 20}))
    return 0


def _run_child(func, args, one_thread=False, timeout=900):
    """``nn_core.bench.model.<func>(args)`` in a fresh interpreter; its last stdout line
    parsed as JSON."""
    import nn_core

    root = os.path.dirname(os.path.dirname(os.path.abspath(nn_core.__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    if one_thread:
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = "1"
    code = (f"import sys; from nn_core.bench.model import {func}; "
            f"sys.exit({func}(sys.argv[1:]))")
    proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{func}{tuple(args)} failed in its subprocess:\n"
                           f"{proc.stderr.strip()}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure_memory(lib, B, L, dtype):
    """Run :func:`_memory_child` for ``lib`` in a fresh interpreter (one thread)."""
    return _run_child("_memory_child", [lib, B, L, np.dtype(dtype).name], one_thread=True)


def run_memory(dtype, args, out=_say):
    B, L = bert_shape(args)
    out(f"\n== Inference memory: one forward of the encoder (B={B}, L={L}, "
        f"{np.dtype(dtype).name}), peak RSS increase in a fresh process, 1 thread ==")
    ours = measure_memory("nn_core", B, L, dtype)
    theirs = measure_memory("torch", B, L, dtype)
    r = ours["first_mib"] / max(theirs["first_mib"], 1e-9)
    r2 = ours["second_mib"] / max(theirs["second_mib"], 1e-9)
    out(f"{'MiB':<8} {'forward':>10} {'again':>10}")
    out(f"{'nn_core':<8} {ours['first_mib']:10.1f} {ours['second_mib']:10.1f}   (traced "
        f"NumPy/Python allocations at the peak of the first: {ours['traced_mib']:.1f} MiB)")
    out(f"{'torch':<8} {theirs['first_mib']:10.1f} {theirs['second_mib']:10.1f}")
    out(f"{'ratio':<8} {r:10.2f} {r2:10.2f}   target {MEMORY_TARGET:.2f} on the first"
        f"{'' if r <= MEMORY_TARGET else ' *'}")
    out(f"(method: {ours['method']}; weights {ours['weights_mib']:.1f} MiB each, loaded "
        f"before and not counted; 'again' = a second forward in the same process)")
    return ours, theirs


# ================================================================ faults ====
def minor_faults_per_step(step, n_steps, warmup=3):
    """Minor page faults of the process per call of ``step`` after ``warmup`` calls."""
    for _ in range(warmup):
        step()
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(n_steps):
        step()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / n_steps


def _faults_child(argv):
    """Subprocess body: ``lib dtype quick n_steps warmup threads labels`` -> one JSON line
    ``{label: {threads: faults per step}}``.  nn_core's child never imports torch."""
    lib, dname, quick = argv[0], argv[1], argv[2] == "1"
    n_steps, warmup = int(argv[3]), int(argv[4])
    counts = [int(v) for v in argv[5].split(",")]
    labels = argv[6].split(",")
    dtype = np.dtype(dname).type
    res = {}
    for label, name, cell in CLI_MODELS:
        if label not in labels:
            continue
        task, args, model, batch = cli_model(name, cell, dtype, quick)
        if lib == "nn_core":
            from .. import _parallel
            step = StepPair(None, task, args, model, batch).nn_step
            limit = _parallel.limit_threads
        else:
            step = StepPair(torch_or_none(), task, args, model, batch).torch_step
            limit = threads
        res[label] = {}
        for n in counts:
            with limit(n):
                res[label][n] = minor_faults_per_step(step, n_steps, warmup)
    print(json.dumps(res))
    return 0


def run_faults(thread_counts, dtype, quick, out=_say):
    """Each CLI model's faults per step, each library in its own fresh process (the
    allocator's state depends on everything the process ran before: in this process,
    after the other sections, nn_core's count drops to about 0)."""
    n_steps, warmup = (2, 1) if quick else (5, 3)
    how = ("one process per library for all models (--quick)" if quick
           else "a fresh process per model and library")
    out(f"\n== Minor page faults per training step ({np.dtype(dtype).name}): mean of "
        f"{n_steps} steps after {warmup} warm-up, {how}; thread counts in turn ==")
    labels = [label for label, _, _ in CLI_MODELS]
    groups = [labels] if quick else [[label] for label in labels]
    counts = ",".join(map(str, thread_counts))
    res = {"nn_core": {}, "torch": {}}
    for lib in res:
        for group in groups:
            res[lib].update(_run_child("_faults_child", [
                lib, np.dtype(dtype).name, int(quick), n_steps, warmup, counts,
                ",".join(group)]))
    out(f"{'model':<26} {'thr':>3} {'nn_core':>9} {'torch':>9} {'target':>6}")
    for n in thread_counts:
        for label in labels:
            a, b = res["nn_core"][label][str(n)], res["torch"][label][str(n)]
            out(f"{label:<26} {n:>3} {a:9.0f} {b:9.0f} {'<' + str(FAULT_TARGET):>6}"
                f"{'' if a < FAULT_TARGET else ' *'}")
    return res


# ================================================================== main ====
def _parse_threads(text):
    try:
        counts = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--threads must be a list like 1,2, got {text!r}")
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"--threads entries must be >= 1, got {text!r}")
    return counts


def _parse_only(text):
    parts = [v.strip() for v in text.split(",") if v.strip()]
    bad = [p for p in parts if p not in SECTIONS]
    if bad or not parts:
        raise argparse.ArgumentTypeError(f"--only takes a list of {','.join(SECTIONS)}, "
                                         f"got {text!r}")
    return parts


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m nn_core.bench model",
                                description=__doc__.splitlines()[0],
                                epilog="Sections and columns: see nn_core/bench/model.py.")
    p.add_argument("--threads", type=_parse_threads, default=[1, 2],
                   help="thread counts, e.g. 1,2 (default)")
    p.add_argument("--repeat", type=int, default=None,
                   help="interleaved rounds per measurement (default: 3; --quick: 1)")
    p.add_argument("--min-time", type=float, default=None,
                   help="seconds per timing sample; calls are batched (default: 0.2; "
                        "--quick: 0.02)")
    p.add_argument("--only", type=_parse_only, default=list(SECTIONS),
                   help=f"sections to run, from {','.join(SECTIONS)} (default: all)")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: encoder B=2, L=16; smaller task data sets (the CLI "
                        "models and batches keep their sizes); one round; fewer fault-count "
                        "steps")
    p.add_argument("--seq-len", type=int, default=None,
                   help="L of the encoder and its pieces (default: 128, --quick: 16)")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    args = p.parse_args(argv)
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    if args.min_time is None:
        args.min_time = 0.02 if args.quick else 0.2
    if args.repeat < 1:
        p.error("--repeat must be >= 1")
    if args.seq_len is not None and args.seq_len < 1:
        p.error("--seq-len must be >= 1")
    torch = torch_or_none()
    if torch is None:
        print("torch is not installed: nothing to compare against "
              "(pip install torch, the CPU wheel)")
        return 1
    dtype = np.dtype(args.dtype).type
    only = set(args.only)
    t_start = time.perf_counter()
    print(f"nn_core vs torch {torch.__version__}, whole models; {machine_report()}; "
          f"numpy {np.__version__}")
    print(f"medians of {args.repeat} interleaved rounds (wall clock); ratio = nn_core / torch; "
          f"* = above target")
    for section in SECTIONS:
        if section not in only:
            continue
        t0 = time.perf_counter()
        if section == "steps":
            run_steps(torch, args.threads, dtype, args.repeat, args.min_time, args.quick)
        elif section == "bert":
            run_bert(torch, args.threads, dtype, args.repeat, args.min_time, args)
        elif section == "layers":
            run_layers(torch, args.threads, dtype, args.repeat, args.min_time, args)
        elif section == "memory":
            run_memory(dtype, args)
        else:
            run_faults(args.threads, dtype, args.quick)
        print(f"({section}: {time.perf_counter() - t0:.0f} s)", flush=True)
    print(f"\n(total {time.perf_counter() - t_start:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
