"""Placeholder (filled in below)."""
class SentenceEncoder:
    pass
