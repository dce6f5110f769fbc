"""Recurrent sweeps over padded batches: ``python -m nn_core.bench recurrent --lengths
uniform [--cells rnn,gru,lstm,bilstm] [--dtypes f32,f64] [--repeat 3] [--clock cpu]``.

B = 64, T = 200, D = H = 256, lengths drawn uniformly in [20, 200] (seed 0); forward
then backward of ``sum(output * grad_output)`` including ``grad_x``, one thread.  Three
contenders, timed alternately (``_common.interleaved``):

* ``padded``: nn_core on the padded batch with its lengths;
* ``full``: nn_core on the same batch at full length (no lengths);
* ``torch``: torch on ``pack_padded_sequence(x, lengths, enforce_sorted=False)``,
  forward and backward through ``pad_packed_sequence``.

Printed: ``fill = sum(lengths) / (B T)``; ``/ideal = padded / (fill * full)`` (target
<= 1.15: time in proportion to the real steps); ``/torch = padded / torch`` (target
<= 0.6).  ``bilstm`` is a bidirectional LSTM layer (``BidirectionalWrapper``; torch:
``nn.LSTM(bidirectional=True)``), its two directions one after the other.
"""
from __future__ import annotations

import os

import numpy as np

from ._common import interleaved, machine_report, threads

T, B, D, H = 200, 64, 256, 256
LOW = 20
TARGET_IDEAL, TARGET_TORCH = 1.15, 0.6


def uniform_lengths(rng, batch=B, steps=T, low=LOW):
    """Lengths drawn uniformly in ``[low, steps]``."""
    return rng.integers(low, steps + 1, batch).astype(np.int64)


def cpu_name() -> str:
    """The CPU's model name, family and model (``/proc/cpuinfo``), else the platform's."""
    try:
        with open("/proc/cpuinfo") as f:
            info = {}
            for line in f:
                k, _, v = line.partition(":")
                info.setdefault(k.strip(), " ".join(v.split()))
        return (f"{info.get('model name', '?')} (family {info.get('cpu family', '?')}, "
                f"model {info.get('model', '?')})")
    except OSError:
        return machine_report()


def _build(cell, dtype, torch):
    from ..interop import load_torch_state_dict
    from ..recurrent import BidirectionalWrapper, GRUCell, LSTMCell, RNNCell

    tdt = torch.float32 if dtype == np.float32 else torch.float64
    if cell == "rnn":
        ours, theirs = RNNCell(D, H, dtype=dtype), torch.nn.RNN(D, H, dtype=tdt)
    elif cell == "gru":
        ours, theirs = (GRUCell(D, H, reset_after=True, dtype=dtype),
                        torch.nn.GRU(D, H, dtype=tdt))
    elif cell == "lstm":
        ours, theirs = LSTMCell(D, H, dtype=dtype), torch.nn.LSTM(D, H, dtype=tdt)
    else:
        ours = BidirectionalWrapper(LSTMCell(D, H, dtype=dtype), LSTMCell(D, H, dtype=dtype),
                                    concurrent=False)
        theirs = torch.nn.LSTM(D, H, dtype=tdt, bidirectional=True)
    load_torch_state_dict(ours, theirs.state_dict())
    return ours, theirs


def run_case(cell, dtype, repeat, torch, clock):
    rng = np.random.default_rng(0)
    lengths = uniform_lengths(rng)
    ours, theirs = _build(cell, dtype, torch)
    F = 2 * H if cell == "bilstm" else H
    x = rng.standard_normal((T, B, D)).astype(dtype)
    go = rng.standard_normal((T, B, F)).astype(dtype)
    go[np.arange(T)[:, None] >= lengths[None, :]] = 0
    xt = torch.tensor(x, requires_grad=True)
    got = torch.tensor(go)
    lt = torch.tensor(lengths)
    pack, unpack = torch.nn.utils.rnn.pack_padded_sequence, torch.nn.utils.rnn.pad_packed_sequence

    def ours_fn(lens):
        def f():
            if cell == "bilstm":
                ours(x, lengths=lens)
                ours.backward(go)
            else:
                ours.forward_sequence(x, lengths=lens)
                ours.backward_sequence(go)
        return f

    def f_torch():
        out, _ = theirs(pack(xt, lt, enforce_sorted=False))
        out, _ = unpack(out, total_length=T)
        out.backward(got)

    with threads(1):
        t = interleaved({"padded": ours_fn(lengths), "full": ours_fn(None),
                         "torch": f_torch}, repeat=repeat, min_time=0.0, clock=clock)
    return t, lengths.sum() / (B * T)


def main(args, torch, dtypes):
    """Run the cases of ``args`` (``cells``, ``dtypes``: names in ``dtypes``, ``repeat``,
    ``clock``) against ``torch``."""
    print(f"CPU: {cpu_name()}; load average {os.getloadavg()[0]:.2f} at start")
    print(f"B={B}, T={T}, D=H={H}, lengths uniform in [{LOW}, {T}]; fwd+bwd incl. grad_x, "
          f"1 thread, {args.clock} clock, median of {args.repeat} interleaved rounds (ms)")
    hdr = (f"{'cell':<7}{'dtype':<6}{'padded':>9} {'full':>9} {'fill':>5} {'/ideal':>7} "
           f"{'torch':>9} {'/torch':>7}")
    print(hdr)
    print("-" * len(hdr))
    for dname in args.dtypes.split(","):
        for cell in args.cells.split(","):
            t, fill = run_case(cell, dtypes[dname], args.repeat, torch, args.clock)
            ideal = t["padded"] / (fill * t["full"])
            vs = t["padded"] / t["torch"]
            flag = ("" if ideal <= TARGET_IDEAL else " *ideal") + \
                   ("" if vs <= TARGET_TORCH else " *torch")
            print(f"{cell:<7}{dname:<6}{t['padded'] * 1e3:9.1f} {t['full'] * 1e3:9.1f} "
                  f"{fill:5.3f} {ideal:7.3f} {t['torch'] * 1e3:9.1f} {vs:7.3f}{flag}",
                  flush=True)
    print(f"targets: /ideal <= {TARGET_IDEAL}, /torch <= {TARGET_TORCH}; "
          f"load average {os.getloadavg()[0]:.2f} at the end")
    return 0
