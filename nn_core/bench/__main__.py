"""``python -m nn_core.bench {attention,mha,decode,recurrent,bidirectional,model,distributed,
encode}
[options]``.

Each benchmark lives in ``nn_core/bench/<name>.py`` and exposes ``main(argv)``.
"""
import importlib
import sys

BENCHES = ("attention", "mha", "decode", "recurrent", "bidirectional", "model",
           "distributed", "encode")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in BENCHES:
        print(__doc__.strip())
        print("available:", ", ".join(BENCHES))
        return 2
    mod = importlib.import_module(f"nn_core.bench.{argv[0]}")
    return mod.main(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main())
