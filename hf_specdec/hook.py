"""`generate(strategy=...)`: the one place where hf_specdec meets `GenerationMixin.generate`.

transformers has no registry of decoding modes, but it lets a callable replace the decoding loop
(`custom_generate=callable`) after doing all of its own preparation: generation-config merge, validation,
logits processors, stopping criteria, attention mask and cache. The hook therefore only picks the strategy
and hands stock `generate` the strategy's loop, with the arguments transformers does not forward to such a
callable (assistant model, streamer, tokenizer) bound to it.
"""

from __future__ import annotations

import copy
import functools
import inspect
import os
import threading
import weakref

from transformers import GenerationConfig, StoppingCriteriaList
from transformers.generation.stopping_criteria import StopStringCriteria
from transformers.generation.utils import GenerationMixin

from .strategies import STRATEGIES

_STOCK_GENERATE = GenerationMixin.generate
_UNSET = object()


def _requested_strategy(model, generation_config, strategy):
    if strategy is not _UNSET:
        return strategy
    for config in (generation_config, getattr(model, "generation_config", None)):
        if isinstance(config, GenerationConfig) and getattr(config, "strategy", None) is not None:
            return config.strategy
    return None


def specdec_generate(model, inputs=None, generation_config=None, *, strategy=_UNSET, **kwargs):
    """`model.generate` with `strategy=` understood; without a strategy it is stock `generate`, untouched."""
    name = _requested_strategy(model, generation_config, strategy)
    if name is None:
        return _STOCK_GENERATE(model, inputs, generation_config, **kwargs)
    if name not in STRATEGIES:
        raise ValueError(f"Unknown strategy {name!r}; available strategies: {', '.join(sorted(STRATEGIES))}.")
    if kwargs.get("custom_generate") is not None:
        raise ValueError("Pass either strategy= or custom_generate=, not both.")
    decode = STRATEGIES[name]
    _check_foreign_options(name, kwargs)
    bound = {
        "draft_model": _draft_for(model, kwargs.pop("assistant_model", None), kwargs),
        "streamer": kwargs.pop("streamer", None),
        "tokenizer": kwargs.pop("tokenizer", None),
    }
    if "num_return_sequences" in inspect.signature(decode).parameters:
        # The strategy returns several sequences itself (superposed drafts); stock generate would reject that
        # for a deterministic mode and copy the prompt k times, so the option goes to the strategy instead.
        n = kwargs.pop("num_return_sequences", None)
        if n is None and getattr(generation_config, "num_return_sequences", None) not in (None, 1):
            n = generation_config.num_return_sequences
        if getattr(generation_config, "num_return_sequences", None) is not None:
            generation_config = copy.deepcopy(generation_config)
            generation_config.num_return_sequences = None
        bound["num_return_sequences"] = n
    # transformers drops the tokenizer on the callable path, so stop strings are turned into a criterion here.
    # They may come from the call, the generation_config given or the model's own generation_config.
    model_config = getattr(model, "generation_config", None)
    stop_strings = (kwargs.pop("stop_strings", None) or getattr(generation_config, "stop_strings", None)
                    or getattr(model_config, "stop_strings", None))
    if stop_strings:
        if bound["tokenizer"] is None:
            raise ValueError("stop_strings needs the tokenizer: pass tokenizer=... to generate.")
        criteria = StoppingCriteriaList(kwargs.pop("stopping_criteria", None) or [])
        criteria.append(StopStringCriteria(tokenizer=bound["tokenizer"], stop_strings=stop_strings))
        kwargs["stopping_criteria"] = criteria
        # Now a criterion: stock must not see them (it would ask for the tokenizer it dropped).
        if getattr(generation_config, "stop_strings", None):
            generation_config = copy.deepcopy(generation_config)
            generation_config.stop_strings = None
        if getattr(model_config, "stop_strings", None):
            kwargs["stop_strings"] = None  # stock fills a None in the given config from the model's config
    return _STOCK_GENERATE(model, inputs, generation_config, custom_generate=functools.partial(decode, **bound), **kwargs)


# Heads named by a string (folder or Hub id), loaded once per target: {target: {(name, revision): head}}.
_LOADED_DRAFTS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_LOADING = threading.Lock()


def _draft_for(model, draft, kwargs):
    """assistant_model as given, or -- for a string -- the head `load_draft` makes of it, cached per target."""
    revision = kwargs.pop("assistant_revision", None)
    if not isinstance(draft, (str, os.PathLike)):
        if revision is not None:
            raise ValueError("assistant_revision= pins the revision of a head named by a string; pass "
                             "assistant_model='<repo id>' with it, or drop it.")
        return draft
    from .draft import load_draft

    key = (str(draft), revision)
    with _LOADING:
        per_target = _LOADED_DRAFTS.setdefault(model, {})
        if key not in per_target:
            per_target[key] = load_draft(key[0], target=model, revision=key[1])
        return per_target[key]


def _check_foreign_options(name: str, kwargs: dict) -> None:
    """An option of another strategy (say tree_top_k with spechub) gets an error that names its strategy."""
    # generate's own options (GenerationConfig fields such as num_return_sequences) keep their stock meaning
    own = set(inspect.signature(STRATEGIES[name]).parameters) | set(GenerationConfig().to_dict())
    for other, decode in STRATEGIES.items():
        foreign = sorted((set(inspect.signature(decode).parameters) - own) & set(kwargs))
        if foreign:
            raise ValueError(f"{', '.join(foreign)}: option(s) of strategy {other!r}, not of strategy {name!r}.")


@functools.wraps(_STOCK_GENERATE)
def _generate_method(self, inputs=None, generation_config=None, *args, strategy=_UNSET, **kwargs):
    if args:  # stock's further positional parameters (logits_processor, ...): only meaningful without a strategy
        if _requested_strategy(self, generation_config, strategy) is not None:
            raise TypeError("With strategy=, pass generate's arguments after generation_config by keyword.")
        return _STOCK_GENERATE(self, inputs, generation_config, *args, **kwargs)
    return specdec_generate(self, inputs, generation_config, strategy=strategy, **kwargs)


def install_generate_hook() -> None:
    """Let every transformers model's `generate` accept `strategy=` (done on `import hf_specdec`)."""
    GenerationMixin.generate = _generate_method


def uninstall_generate_hook() -> None:
    """Restore stock `generate`; `custom_generate=hf_specdec.fspad_generate` keeps working without the hook."""
    GenerationMixin.generate = _STOCK_GENERATE
