"""Caller speech for `ava call` (the synthesizer lives with the engines, for the benchmarks)."""

from voice.engines.synthesize import synthesize_ulaw

__all__ = ["synthesize_ulaw"]
