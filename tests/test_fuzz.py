"""Random combinations of generate options, for every strategy, on a tiny model with a real tokenizer.

Each call either returns what the strategy promises -- for fspad at greedy, exactly stock's tokens (and
scores, logits, streamed tokens); for the others, a well-formed answer -- or raises ValueError, TypeError or
NotImplementedError with a message that names an option of the call. Never another exception, never a
different answer. Seeded and small in the suite; `HF_SPECDEC_FUZZ=1000 pytest tests/test_fuzz.py` before a
release.
"""

from __future__ import annotations

import os
import random

import pytest
import torch
from conftest import CHEAP_CURVE, tiny_target
from transformers import GenerationConfig

from hf_specdec import FSPADDraftModel
from hf_specdec.testing import oracle_head
from hf_specdec.tree import CostCurve

CASES = int(os.environ.get("HF_SPECDEC_FUZZ", "25"))
ALLOWED_ERRORS = (ValueError, TypeError, NotImplementedError)
# Options an error may name although the call did not set them: what the strategy needs and was not given.
REQUIRED = ("assistant_model", "do_sample", "ngram", "tokenizer", "attention_mask", "input_ids")
DEAR = CostCurve((1, 4, 16, 32), (1.0, 3.0, 9.0, 18.0), 0.9, 0.5)
PAD = 0


class Streamer:
    def __init__(self):
        self.chunks, self.ended = [], False

    def put(self, value):
        self.chunks.append(value.flatten())

    def end(self):
        self.ended = True


@pytest.fixture(scope="module")
def setup():
    from transformers import AutoTokenizer

    from hf_specdec.default_model import default_target_path

    tokenizer = AutoTokenizer.from_pretrained(default_target_path())
    target = tiny_target("llama", vocab_size=len(tokenizer))
    torch.manual_seed(2)
    plain_head = FSPADDraftModel.from_target(target, tokenizer)
    return target, tokenizer, plain_head


def random_prompt(rng: random.Random, vocab: int) -> torch.Tensor:
    n = rng.choice([1, 2, 5, 9, 14])
    tokens = [rng.randrange(1, vocab) for _ in range(n)]
    if rng.random() < 0.4:  # a prompt that repeats itself, so lookup drafts get long matches
        tokens = (tokens[: max(1, n // 2)] * 4)[: 2 * n]
    return torch.tensor([tokens])


def maybe(rng, options, name, values, p=0.3, invalid=()):
    """Set option `name` with probability p: to a valid value, or (one time in six) to an invalid one."""
    if rng.random() < p:
        options[name] = rng.choice(invalid if invalid and rng.random() < 1 / 6 else values)


def sample_options(rng: random.Random, strategy: str, prompt_len: int, continuation: list[int], tokenizer) -> dict:
    """Options from transformers' GenerationConfig documentation and the strategy's own, valid and not."""
    o: dict = {}
    if rng.random() < 0.85:
        o["max_new_tokens"] = rng.choice([1, 2, 5, 12, 20])
    else:
        o["max_length"] = prompt_len + rng.choice([1, 6, 15])
    sampling = strategy == "spechub" or (strategy == "fspad" and rng.random() < 0.3)
    if sampling or rng.random() < 0.1:
        o["do_sample"] = sampling or rng.random() < 0.5
    if o.get("do_sample"):
        maybe(rng, o, "temperature", [0.5, 1.0, 1.7], 0.5, invalid=[-0.5])
        maybe(rng, o, "top_k", [1, 5, 50])
        maybe(rng, o, "top_p", [0.5, 0.9])
        maybe(rng, o, "min_p", [0.05, 0.2], 0.15)
        maybe(rng, o, "typical_p", [0.8], 0.1)
        maybe(rng, o, "epsilon_cutoff", [3e-4], 0.05)
    rare = 0.2 if strategy == "superposed" else 1.0  # superposed refuses every logits processor
    maybe(rng, o, "min_new_tokens", [1, 3, 8], 0.2 * rare)
    maybe(rng, o, "repetition_penalty", [1.3, 0.8], 0.2 * rare, invalid=[-1.0])
    maybe(rng, o, "no_repeat_ngram_size", [2, 3], 0.15 * rare)
    maybe(rng, o, "encoder_repetition_penalty", [1.2], 0.05 * rare)
    maybe(rng, o, "bad_words_ids", [[[continuation[1]]], [[continuation[0], continuation[1]]]], 0.15 * rare)
    maybe(rng, o, "suppress_tokens", [[continuation[2]]], 0.1 * rare)
    maybe(rng, o, "begin_suppress_tokens", [[continuation[0]]], 0.1 * rare)
    maybe(rng, o, "sequence_bias", [{(continuation[3],): -5.0}], 0.1 * rare)
    maybe(rng, o, "forced_eos_token_id", [continuation[4]], 0.05 * rare)
    maybe(rng, o, "exponential_decay_length_penalty", [(2, 1.5)], 0.05 * rare)
    maybe(rng, o, "renormalize_logits", [True], 0.1 * rare)
    maybe(rng, o, "remove_invalid_values", [True], 0.05 * rare)
    # EOS and stop strings at tokens the target would produce, so they fall inside accepted paths
    maybe(rng, o, "eos_token_id", [continuation[rng.randrange(1, 8)], [continuation[3], continuation[6]]], 0.35)
    if rng.random() < 0.2:
        o["stop_strings"] = [tokenizer.decode(continuation[rng.randrange(1, 8)]).strip() or "the"]
        if rng.random() < 0.85:
            o["tokenizer"] = tokenizer
    if rng.random() < 0.3:
        o["return_dict_in_generate"] = True
        maybe(rng, o, "output_scores", [True], 0.6)
        maybe(rng, o, "output_logits", [True], 0.4)
    if rng.random() < 0.15:
        o["streamer"] = Streamer()
    if rng.random() < 0.1:
        o["prefix_allowed_tokens_fn"] = lambda batch_id, ids: [int(t) for t in continuation[:6]] + [int(ids[-1])]
    maybe(rng, o, "use_cache", [True, False], 0.05)
    maybe(rng, o, "max_time", [60.0], 0.05)
    # what the strategies cannot do, and options of other decoding modes
    maybe(rng, o, "num_beams", [2], 0.04)
    maybe(rng, o, "num_return_sequences", [2], 0.04 if strategy != "superposed" else 0.5)
    maybe(rng, o, "output_attentions", [True], 0.03)
    maybe(rng, o, "output_hidden_states", [True], 0.03)
    maybe(rng, o, "prompt_lookup_num_tokens", [3], 0.03)
    maybe(rng, o, "guidance_scale", [1.5], 0.02)
    if strategy == "fspad":
        maybe(rng, o, "tree_top_k", [1, 2, 4], 0.3, invalid=[0, "2"])
        maybe(rng, o, "tree_depth", [1, 3, 6], 0.3, invalid=[-1])
        maybe(rng, o, "tree_total_tokens", [2, 5, 16, 40], 0.3, invalid=[1])
        maybe(rng, o, "lookup_tokens", [0, 2, 8, 20], 0.4, invalid=[-1, 2.5])
        maybe(rng, o, "lookup_mode", ["merge", "choose"], 0.2, invalid=["best"])
        maybe(rng, o, "cost_curve", [CHEAP_CURVE, DEAR], 0.8)
    elif strategy == "spechub":
        maybe(rng, o, "verifier", ["spechub", "rrs", "rrsw"], 0.5, invalid=["other"])
        maybe(rng, o, "drafts_per_node", [1, 2, 3], 0.4, invalid=[0])
        maybe(rng, o, "tree_depth", [1, 2, 4], 0.3)
        maybe(rng, o, "tree_total_tokens", [3, 8], 0.2, invalid=[1])
    else:
        maybe(rng, o, "superposed_alpha", [0.0, 0.5], 0.3, invalid=[1.5])
        maybe(rng, o, "superposed_temperature", [0.06, 1.0], 0.2, invalid=[0.0])
        maybe(rng, o, "n_token_sample", [6, 9], 0.2, invalid=[0])
        o["ngram"] = False if rng.random() < 0.9 else None
    maybe(rng, o, "tree_top_k", [2], 0.03)  # an option of another strategy
    return o


OURS = {"tree_top_k", "tree_depth", "tree_total_tokens", "lookup_tokens", "lookup_mode", "cost_curve", "verifier",
        "drafts_per_node", "superposed_alpha", "superposed_temperature", "n_token_sample", "ngram"}


def call(target, prompt, mask, options, **extra):
    """generate with the options as kwargs, or (when the case says so) the GenerationConfig fields among them
    in a generation_config object."""
    kwargs = dict(options)
    if kwargs.pop("_as_config", False):
        fields = set(GenerationConfig().to_dict()) - {"stop_strings"}
        extra["generation_config"] = GenerationConfig(**{k: kwargs.pop(k) for k in list(kwargs) if k in fields})
    if mask is not None:
        kwargs["attention_mask"] = mask
    return target.generate(prompt, **kwargs, **extra)


def names_an_option(message: str, options: dict) -> bool:
    return any(name in message for name in [*options, *REQUIRED])


def sequences(out):
    return out if isinstance(out, torch.Tensor) else out.sequences


def call_or_refusal(target, prompt, mask, options, stock_options, strategy, seed):
    """The strategy's answer, or "refused" (an allowed error naming an option), or "stock's error" (stock gives
    the very same error for these options: it validates them, or fails the same way)."""
    torch.manual_seed(seed)
    try:
        return call(target, prompt, mask, options, strategy=strategy)
    except Exception as error:
        if isinstance(error, ALLOWED_ERRORS) and names_an_option(str(error), options):
            return "refused"
        torch.manual_seed(seed)
        with pytest.raises(type(error)) as stock_error:
            call(target, prompt, mask, stock_options)
        assert str(stock_error.value) == str(error), f"{type(error).__name__}: {error}\n{options}"
        return "stock's error"


def check_case(setup, strategy: str, seed: int):
    target, tokenizer, plain_head = setup
    rng = random.Random(seed)
    prompt = random_prompt(rng, len(tokenizer))
    reference = target.generate(prompt, max_new_tokens=24, do_sample=False)
    # tokens the target produces here (padded with the prompt's where it stops early at EOS)
    continuation = (reference[0, prompt.shape[1]:].tolist() + prompt[0].tolist() * 12)[:24]
    options = sample_options(rng, strategy, prompt.shape[1], continuation, tokenizer)
    mask = None
    if rng.random() < 0.2:  # left padding with a mask, as a batching tokenizer makes it
        n_pad = rng.choice([1, 3])
        prompt = torch.cat([torch.full((1, n_pad), PAD), prompt], 1)
        mask = torch.cat([torch.zeros(1, n_pad, dtype=torch.long), torch.ones(1, prompt.shape[1] - n_pad, dtype=torch.long)], 1)
    if rng.random() < 0.2:
        options["_as_config"] = True
    if strategy != "superposed" and rng.random() < 0.95:
        head = oracle_head(target, reference, accuracy=rng.choice([0.5, 0.9, 1.0]), seed=seed) if rng.random() < 0.7 else plain_head
        options["assistant_model"] = head
    streamer = options.get("streamer")
    # superposed's num_return_sequences is its k; stock would refuse it at greedy before anything else
    not_stock = OURS | {"assistant_model", "streamer"} | ({"num_return_sequences"} if strategy == "superposed" else set())
    stock_options = {k: v for k, v in options.items() if k not in not_stock}
    out = call_or_refusal(target, prompt, mask, options, stock_options, strategy, seed)
    if isinstance(out, str):
        return out
    new = sequences(out)[:, prompt.shape[1]:]
    limit = options.get("max_new_tokens", options.get("max_length", 0) - prompt.shape[1])
    assert torch.equal(sequences(out)[:, : prompt.shape[1]], prompt.expand(sequences(out).shape[0], -1))
    assert 0 < new.shape[1] <= limit and int(new.max()) < len(tokenizer) and int(new.min()) >= 0
    if streamer is not None:
        assert streamer.ended and torch.equal(torch.cat(streamer.chunks), sequences(out)[0])
    if strategy != "fspad" or options.get("do_sample"):
        return "answered"
    # greedy fspad: exactly what stock greedy returns with the same options
    try:
        expected = call(target, prompt, mask, stock_options)
    except Exception as error:  # stock refuses it: the strategy answering is a silent different answer
        raise AssertionError(f"stock raised {type(error).__name__}: {error}, fspad answered; {options}")
    assert torch.equal(sequences(out), sequences(expected)), f"{options}"
    for field in ("scores", "logits"):
        if options.get("return_dict_in_generate") and options.get(f"output_{field}"):
            ours, theirs = getattr(out, field), getattr(expected, field)
            assert len(ours) == len(theirs)
            for a, b in zip(ours, theirs):
                finite = torch.isfinite(b)
                assert torch.equal(finite, torch.isfinite(a)) and torch.allclose(a[finite], b[finite], atol=1e-4, rtol=1e-4)
    return "identical"


@pytest.mark.parametrize("strategy", ["fspad", "spechub", "superposed"])
def test_random_generate_options(setup, strategy):
    outcomes = [check_case(setup, strategy, seed) for seed in range(CASES)]
    # the search must reach answers, not only refusals (else it tests the error paths alone)
    assert outcomes.count("refused") < len(outcomes)
    if strategy == "fspad":
        assert outcomes.count("identical") >= len(outcomes) // 4, outcomes


def check_batch_case(setup, seed: int):
    """fspad on a left-padded batch of 2-3 prompts with random options: each row at greedy is exactly what
    stock greedy gives that padded row alone (then padding), or the call is refused naming an option."""
    target, tokenizer, plain_head = setup
    rng = random.Random(10_000 + seed)
    rows = [random_prompt(rng, len(tokenizer))[0] for _ in range(rng.choice([2, 3]))]
    width = max(len(r) for r in rows)
    prompt = torch.stack([torch.cat([torch.full((width - len(r),), PAD), r]) for r in rows])
    mask = torch.stack([torch.cat([torch.zeros(width - len(r), dtype=torch.long), torch.ones(len(r), dtype=torch.long)])
                        for r in rows])
    references = [target.generate(r[None], max_new_tokens=24, do_sample=False)[0] for r in rows]
    continuation = (references[0][len(rows[0]):].tolist() + rows[0].tolist() * 12)[:24]
    options = sample_options(rng, "fspad", width, continuation, tokenizer)
    if rng.random() < 0.8:
        options["assistant_model"] = oracle_head(target, references, accuracy=rng.choice([0.5, 0.9, 1.0]), seed=seed)
    else:
        options["assistant_model"] = plain_head
    stock_options = {k: v for k, v in options.items() if k not in OURS | {"assistant_model", "streamer"}}
    out = call_or_refusal(target, prompt, mask, options, stock_options, "fspad", seed)
    if isinstance(out, str):
        return out
    got = sequences(out)
    assert got.shape[0] == len(rows) and torch.equal(got[:, :width], prompt)
    if options.get("do_sample"):
        return "answered"
    pad = target.generation_config.pad_token_id
    for b in range(len(rows)):
        alone = sequences(call(target, prompt[b : b + 1], mask[b : b + 1], stock_options))[0]
        assert torch.equal(got[b, : len(alone)], alone), f"row {b}: {options}"
        assert bool((got[b, len(alone):] == pad).all()), f"row {b} is not padded after its end: {options}"
    return "identical"


def test_random_generate_options_on_batches(setup):
    outcomes = [check_batch_case(setup, seed) for seed in range(CASES)]
    # batches refuse more (streamers, output_scores / output_logits): 360 of 1,500 seeds were compared to stock
    assert outcomes.count("identical") >= len(outcomes) // 5, outcomes
