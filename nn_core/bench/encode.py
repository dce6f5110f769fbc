"""Sentence embedding end to end, nn_core vs transformers on torch, from one model folder.

``python -m nn_core.bench encode [--threads 1,2] [--sentences 2000] [--batch-size 32]
[--repeat 3] [--layers 6] [--quick] [--folder DIR] [--skip-load] [--skip-memory]``

The folder is built here (nothing downloaded): a random ``BertModel`` of the
all-MiniLM-L6-v2 shape (6 layers, d=384, 12 heads, FFN 1536, exact GELU, 512
positions, a 30,522-entry WordPiece vocabulary: the test vocabulary padded with synthetic
pieces) saved by ``save_pretrained`` (safetensors), its ``tokenizer.json``, and a
sentence-transformers layout (mean pooling, normalised).  ``--folder`` uses an existing
folder instead.  The sentences are ``--sentences`` synthetic sentences of 3 to 150 words
of the test vocabulary (mixed lengths, truncated to 128 tokens).

Rows:

``encode``
    nn_core: ``SentenceEncoder(folder).encode(sentences, batch_size)``.  torch: what
    ``SentenceTransformer.encode`` does, spelled out: sort by length, per batch
    transformers' fast tokenizer from the same folder (``padding=True,
    truncation=True, max_length=128``), ``BertModel`` under ``torch.inference_mode()``,
    mean pooling, ``F.normalize``, the input order restored.  Tokenizing is included.
    Both outputs are compared first (max abs difference printed).
``encoder forward``
    One forward of the encoder alone on the first (longest) batch, both libraries.

Timing: medians of interleaved rounds (``_common.interleaved``), CPU time of the process
on one thread (``--clock cpu``, the default, insensitive to other jobs), wall time on
more threads.  ``ratio`` = nn_core / torch.

Also printed: the CPU (``/proc/cpuinfo``: vendor, family, model, name) and the load
average; the time of ``import nn_core`` + ``load_encoder(folder)`` against ``import
torch, transformers`` + ``BertModel.from_pretrained(folder)`` (fresh interpreters,
median of 3); the peak resident-memory increase of one ``encode`` of all the
sentences in a fresh interpreter with one thread (as ``bench model --only memory``).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

from ._common import fmt_ms, interleaved, thread_report, threads, torch_or_none

SHAPE = dict(vocab=30522, hidden=384, heads=12, ffn=1536, max_pos=512, max_len=128)
WORDS = ("the a an cat dog bird fish sat ran flew swam on under over mat log tree pond "
         "quick slow red blue green big small and or not very it is was".split())
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def cpu_report() -> str:
    """Vendor, family, model and name of the CPU (``/proc/cpuinfo``), and the load."""
    info = {}
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    return (f"CPU: {info.get('vendor_id', '?')} family {info.get('cpu family', '?')} model "
            f"{info.get('model', '?')} ({info.get('model name', '?')}), {os.cpu_count()} CPUs; "
            f"load average {load}")


def build_folder(folder, layers=6):
    """A random MiniLM-shaped BERT folder with tokenizer and sentence-transformers files."""
    import torch
    import transformers as tf
    from tokenizers import BertWordPieceTokenizer

    vocab = SPECIAL + WORDS + ["##s", "##ed", "##ing", ".", ","]
    vocab += [f"w{i}" for i in range(SHAPE["vocab"] - len(vocab))]
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "vocab.txt"), "w") as f:
        f.write("\n".join(vocab) + "\n")
    tok = BertWordPieceTokenizer(os.path.join(folder, "vocab.txt"), lowercase=True)
    tok.save(os.path.join(folder, "tokenizer.json"))
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump({"do_lower_case": True, "model_max_length": SHAPE["max_pos"],
                   "tokenizer_class": "BertTokenizer"}, f)
    cfg = tf.BertConfig(vocab_size=SHAPE["vocab"], hidden_size=SHAPE["hidden"],
                        num_hidden_layers=layers, num_attention_heads=SHAPE["heads"],
                        intermediate_size=SHAPE["ffn"], max_position_embeddings=SHAPE["max_pos"])
    torch.manual_seed(0)
    tf.BertModel(cfg).save_pretrained(folder)
    with open(os.path.join(folder, "modules.json"), "w") as f:
        json.dump([{"idx": 0, "name": "0", "path": "",
                    "type": "sentence_transformers.models.Transformer"},
                   {"idx": 1, "name": "1", "path": "1_Pooling",
                    "type": "sentence_transformers.models.Pooling"},
                   {"idx": 2, "name": "2", "path": "2_Normalize",
                    "type": "sentence_transformers.models.Normalize"}], f)
    os.makedirs(os.path.join(folder, "1_Pooling"), exist_ok=True)
    os.makedirs(os.path.join(folder, "2_Normalize"), exist_ok=True)
    with open(os.path.join(folder, "1_Pooling", "config.json"), "w") as f:
        json.dump({"word_embedding_dimension": SHAPE["hidden"],
                   "pooling_mode_mean_tokens": True}, f)
    with open(os.path.join(folder, "sentence_bert_config.json"), "w") as f:
        json.dump({"max_seq_length": SHAPE["max_len"], "do_lower_case": False}, f)
    return folder


def make_sentences(n, seed=0):
    """``n`` sentences of 3 to 150 words (a long tail: most are short)."""
    rng = np.random.default_rng(seed)
    words = np.array(WORDS + ["cats", "jumped", "running"])
    lengths = np.minimum(3 + rng.geometric(1 / 25, n), 150)
    return [" ".join(rng.choice(words, k)) + "." for k in lengths]


class TorchEncode:
    """sentence-transformers' ``encode`` for a mean-pooled, normalised folder, in torch."""

    def __init__(self, torch, folder, max_len):
        import transformers as tf

        self.torch = torch
        self.tok = tf.AutoTokenizer.from_pretrained(folder)
        self.model = tf.BertModel.from_pretrained(folder).eval()
        self.max_len = max_len

    def __call__(self, sentences, batch_size):
        torch = self.torch
        order = np.argsort([-len(s) for s in sentences], kind="stable")
        out = [None] * len(sentences)
        with torch.inference_mode():
            for s in range(0, len(sentences), batch_size):
                rows = order[s:s + batch_size]
                batch = self.tok([sentences[i] for i in rows], padding=True, truncation=True,
                                 max_length=self.max_len, return_tensors="pt")
                h = self.model(**batch).last_hidden_state
                m = batch["attention_mask"].unsqueeze(-1).to(h.dtype)
                y = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
                y = torch.nn.functional.normalize(y, dim=1)
                for r, i in enumerate(rows):
                    out[i] = y[r]
        return torch.stack(out).numpy()


# ------------------------------------------------------ fresh-interpreter parts
_LOAD_CODE = {
    "nn_core": ("import nn_core\nfrom nn_core.pretrained import load_encoder",
                "load_encoder(FOLDER)"),
    "torch": ("import torch, transformers", "transformers.BertModel.from_pretrained(FOLDER)"),
}


def _child(code, timeout=600, one_thread=False):
    """Run ``code`` in a fresh interpreter (this nn_core first on the path); its last
    stdout line as JSON."""
    import nn_core

    root = os.path.dirname(os.path.dirname(os.path.abspath(nn_core.__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    if one_thread:
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                    "RAYON_NUM_THREADS"):
            env[var] = "1"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark subprocess failed:\n{proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def load_times(lib, folder):
    """``(import seconds, load seconds)`` of ``lib`` in a fresh interpreter."""
    imp, load = _LOAD_CODE[lib]
    code = (f"import time, json\nFOLDER = {folder!r}\nt0 = time.perf_counter()\n{imp}\n"
            f"t1 = time.perf_counter()\n{load}\nt2 = time.perf_counter()\n"
            f"print(json.dumps([t1 - t0, t2 - t1]))")
    return _child(code)


def encode_memory(lib, folder, n, batch_size):
    """Peak RSS increase (MiB) of one ``encode`` of ``n`` sentences, fresh interpreter,
    one thread (after a small warm-up call)."""
    code = f"""
import json
import numpy as np
from nn_core.bench.encode import make_sentences, TorchEncode, SHAPE
from nn_core.bench._memory import _forward_peak
sentences = make_sentences({n})
if {lib!r} == "nn_core":
    from nn_core.pretrained import SentenceEncoder
    enc = SentenceEncoder({folder!r})
    run = lambda s: enc.encode(s, batch_size={batch_size}, progress=False)
else:
    import torch
    torch.set_num_threads(1)
    enc = TorchEncode(torch, {folder!r}, SHAPE["max_len"])
    run = lambda s: enc(s, {batch_size})
run(sentences[:4])
mib, method, _ = _forward_peak(run, sentences)
print(json.dumps([mib, method]))
"""
    return _child(code, one_thread=True)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m nn_core.bench encode",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", default="1,2")
    p.add_argument("--sentences", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                   help="clock on one thread (more threads: always wall)")
    p.add_argument("--folder", default=None, help="an existing model folder")
    p.add_argument("--quick", action="store_true", help="100 sentences, 2 layers, 1 round")
    p.add_argument("--skip-load", action="store_true")
    p.add_argument("--skip-memory", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.sentences, args.layers, args.repeat = min(args.sentences, 100), 2, 1
    torch = torch_or_none()
    try:
        import transformers  # noqa: F401
    except ImportError:
        torch = None
    print(cpu_report())
    if torch is None:
        print("torch and transformers are needed for this comparison")
        return 1
    from ..pretrained import SentenceEncoder

    tmp = None
    folder = args.folder
    if folder is None:
        tmp = tempfile.TemporaryDirectory()
        folder = build_folder(tmp.name, args.layers)
    try:
        sentences = make_sentences(args.sentences)
        ours = SentenceEncoder(folder)
        theirs = TorchEncode(torch, folder, ours.max_seq_length)
        bs = args.batch_size
        ids, lengths = ours.tokenize(sentences)
        print(f"{len(sentences)} sentences, {int(lengths.sum())} tokens (length "
              f"{int(lengths.min())}-{int(lengths.max())}, mean {lengths.mean():.1f}); "
              f"batch size {bs}; float32; encoder {ours.model.num_layers} layers, "
              f"d={ours.model.hidden_size}")
        diff = np.abs(ours.encode(sentences, bs, progress=False) - theirs(sentences, bs)).max()
        print(f"max |nn_core - torch| over the embeddings: {diff:.2e}")
        longest = np.argsort(-lengths, kind="stable")[:bs]
        L = int(lengths[longest].max())
        x_ids, x_mask = ours._pad(ids, longest, L)
        t_ids, t_mask = torch.from_numpy(x_ids.astype(np.int64)), torch.from_numpy(
            x_mask.astype(np.int64))

        def nn_forward():
            from ..module import inference_mode
            with inference_mode():
                ours.model(x_ids, attention_mask=x_mask)

        def torch_forward():
            with torch.inference_mode():
                theirs.model(input_ids=t_ids, attention_mask=t_mask)

        print(f"{'row':<30} {'thr':>3} {'clock':>5} {'nn_core ms':>11} {'torch ms':>11} "
              f"{'ratio':>6}")
        for n in [int(v) for v in args.threads.split(",")]:
            clock = args.clock if n == 1 else "wall"
            with threads(n):
                print(f"# threads={n}: {thread_report()}")
                t = interleaved({"nn": lambda: ours.encode(sentences, bs, progress=False),
                                 "torch": lambda: theirs(sentences, bs),
                                 "nn_f": nn_forward, "torch_f": torch_forward},
                                repeat=args.repeat, min_time=0.2, clock=clock)
            for label, a, b in (("encode (end to end)", "nn", "torch"),
                                (f"encoder forward B={bs} L={L}", "nn_f", "torch_f")):
                print(f"{label:<30} {n:>3} {clock:>5} {fmt_ms(t[a]):>11} {fmt_ms(t[b]):>11} "
                      f"{t[a] / t[b]:6.2f}")
        if not args.skip_load:
            rows = {lib: [load_times(lib, folder) for _ in range(3)] for lib in _LOAD_CODE}
            for lib, samples in rows.items():
                imp = float(np.median([s[0] for s in samples]))
                load = float(np.median([s[1] for s in samples]))
                what = ("import nn_core; load_encoder" if lib == "nn_core"
                        else "import torch, transformers; BertModel.from_pretrained")
                print(f"{what:<55} import {imp:6.2f} s  load {load:6.2f} s  total "
                      f"{imp + load:6.2f} s (fresh interpreter, median of 3)")
        if not args.skip_memory:
            for lib in ("nn_core", "torch"):
                mib, method = encode_memory(lib, folder, len(sentences), bs)
                print(f"peak memory of one encode, {lib:<8} {mib:8.1f} MiB ({method}, "
                      f"1 thread, fresh interpreter)")
        print(f"load average after: {', '.join(f'{v:.2f}' for v in os.getloadavg())}")
    finally:
        if tmp is not None:
            tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
