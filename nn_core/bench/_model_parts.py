"""What the sections of ``python -m nn_core.bench model`` share: the targets, the CLI's
models and their training steps, the BERT-style encoder, and their torch twins (same
weights, same layouts)."""
from __future__ import annotations

import copy

import numpy as np



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
    from ..cli import _parse_train

    argv = [name] + (["--cell", cell] if cell else []) + (_QUICK_DATA[name] if quick else [])
    cls, args, _, _ = _parse_train(argv)
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
        self.loss = task.loss(model.dtype)
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
        """One step as :class:`nn_core.training.Trainer` runs it (inside the caching
        allocator)."""
        from ..memory import caching_allocator
        from ..optim import clip_grad_norm

        with caching_allocator():
            return self._nn_step(clip_grad_norm)

    def _nn_step(self, clip_grad_norm):
        from ..training import loss_step

        self.opt.zero_grad()
        stats = loss_step(self.model, self.loss, self.batch, bool(self.task.metrics))
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
        src, src_len, tin, tgt_len = (torch.as_tensor(a) for a in self.batch.inputs)
        tout = torch.as_tensor(self.batch.target)
        logits = self.twin(src, src_len, tin, tgt_len)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tout.reshape(-1),
                               ignore_index=PAD)

        def bookkeeping():
            keep = tout != PAD
            return int(((logits.detach().argmax(-1) == tout) & keep).sum()), int(keep.sum())
        return loss, bookkeeping

    def _loss_forecast(self):
        torch, F = self.torch, self.torch.nn.functional
        x, y = (torch.as_tensor(a, dtype=self.tdt) for a in (*self.batch.inputs,
                                                             self.batch.target))
        return F.mse_loss(self.twin(x), y), lambda: None

    def _loss_lm(self):
        torch, F = self.torch, self.torch.nn.functional
        x, y = torch.as_tensor(self.batch.inputs[0]), torch.as_tensor(self.batch.target)
        logits = self.twin(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))

        def bookkeeping():
            return int((logits.detach().argmax(-1) == y).sum()), int(y.numel())
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
