"""Side-by-side timing of nn_core against PyTorch: ``python -m nn_core.bench NAME``."""
