"""Granary: a remote cache and remote execution service speaking REAPI v2."""

__version__ = "0.1.0"
