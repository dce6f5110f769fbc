"""``python -m nn_core.bench NAME [options]``: the comparison scripts.

Each benchmark lives in ``nn_core/bench/<name>.py`` and exposes ``main(argv)``;
``python -m nn_core.bench NAME --help`` lists its options.
"""
import argparse
import importlib
import sys

#: each benchmark and what it measures
BENCHES = {
    "attention": "scaled dot-product attention vs torch (--long: long sequences)",
    "mha": "MultiHeadAttention vs torch.nn.MultiheadAttention",
    "decode": "incremental decoding with a KV cache: MHA vs GQA vs MQA",
    "recurrent": "RNN/LSTM/GRU forward+backward vs torch.nn.RNN/LSTM/GRU",
    "bidirectional": "bidirectional LSTM/GRU vs torch (bidirectional=True)",
    "model": "the CLI's models, a BERT-style encoder, memory and page faults",
    "scaling": "training steps of the CLI models at 2-16 threads (estimate)",
    "distributed": "data-parallel training over MPI: processes vs BLAS threads",
    "encode": "pretrained text encoders: nn_core vs torch (transformers)",
}


def parser():
    listing = "\n".join(f"  {name:<14} {what}" for name, what in BENCHES.items())
    p = argparse.ArgumentParser(
        prog="python -m nn_core.bench",
        description="Benchmarks of nn_core, most against PyTorch\n"
                    "(pip install -e \".[bench]\" and torch).",
        epilog=f"benchmarks:\n{listing}\n\npython -m nn_core.bench NAME --help lists a "
               "benchmark's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", choices=list(BENCHES), metavar="NAME",
                   help="the benchmark to run (listed below)")
    p.add_argument("options", nargs=argparse.REMAINDER, help="the benchmark's options")
    return p


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in BENCHES:                # NAME --help goes to the benchmark
        mod = importlib.import_module(f"nn_core.bench.{argv[0]}")
        return mod.main(argv[1:]) or 0
    try:
        parser().parse_args(argv)
    except SystemExit as exc:
        return exc.code
    return 2


if __name__ == "__main__":
    sys.exit(main())
