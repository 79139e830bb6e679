"""What differs between the transformers versions we support (>= 5.0, < 6).

transformers 5.2x renamed the cache argument and output field `past_key_values` to `cache` (the old name is
accepted with a deprecation warning until 5.40). Everything here that hands a cache to transformers, reads
one from generate's model kwargs or builds an output goes through these names.
"""

from __future__ import annotations

from dataclasses import fields

from transformers.modeling_outputs import CausalLMOutputWithPast

CACHE_KWARG = "cache" if any(f.name == "cache" for f in fields(CausalLMOutputWithPast)) else "past_key_values"
CACHE_KWARGS = frozenset({"cache", "past_key_values"})  # what generate may hand a custom loop, either version


def cache_kwargs(cache) -> dict:
    """{name: cache} under the name the installed transformers takes."""
    return {CACHE_KWARG: cache}


def given_cache(model_kwargs: dict):
    """The cache generate prepared (or the caller passed), under either name."""
    cache = model_kwargs.get("cache")
    return cache if cache is not None else model_kwargs.get("past_key_values")
