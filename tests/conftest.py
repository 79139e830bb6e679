"""Tiny random targets and draft heads shared by the tests."""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    # The Triton kernels run in Triton's interpreter on CPU; triton reads this when it is first imported.
    os.environ.setdefault("TRITON_INTERPRET", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # The suite runs in one worker per core (`pytest -n 2`): one thread each, not every worker's threads on
    # every core. The tiny models gain nothing from a second thread anyway.
    torch.set_num_threads(1)

import pytest  # noqa: E402
from scipy.stats import chisquare  # noqa: E402
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM  # noqa: E402

import hf_specdec  # noqa: E402
from hf_specdec import FSPADDraftModel  # noqa: E402
from hf_specdec.testing import OracleHead, oracle_head  # noqa: F401  (used by the test modules)
from hf_specdec.tree import CostCurve  # noqa: E402

# A cost curve where verification is cheap, for tests that assert long accepted paths in cost-sized trees: the
# curve measured on first use depends on the machine's load when it was measured, this one does not.
CHEAP_CURVE = CostCurve((1, 4, 16, 32), (1.0, 1.2, 1.6, 2.4), 0.3, 0.2)

TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)


def tiny_target(family: str = "llama", vocab_size: int = 128, seed: int = 0, **overrides) -> torch.nn.Module:
    """A tiny random causal LM; initializer_range 0.2 gives peaked logits, so argmax ties are negligible."""
    torch.manual_seed(seed)
    kwargs = {**TINY, "vocab_size": vocab_size, "initializer_range": 0.2, "pad_token_id": 0, **overrides}
    if family == "llama":
        model = LlamaForCausalLM(LlamaConfig(**kwargs))
    elif family == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(use_sliding_window=False, **kwargs))
    else:
        raise ValueError(family)
    model.generation_config.pad_token_id = 0
    return model.eval()


@pytest.fixture(scope="module")
def llama():
    return tiny_target("llama")


@pytest.fixture(scope="module")
def llama_head(llama):
    torch.manual_seed(1)
    return FSPADDraftModel.from_target(llama)


@torch.no_grad()
def exact_sequence_probs(target, ids, gen_kwargs, vocab, new_tokens=2):
    """P(y_1..y_n | ids) for every sequence of n new tokens, from the target's processed distribution (stock
    warpers)."""
    config = GenerationConfig(do_sample=True, **gen_kwargs)
    processors = target._get_logits_processor(generation_config=config, input_ids_seq_length=ids.shape[1],
                                              encoder_input_ids=ids, prefix_allowed_tokens_fn=None,
                                              logits_processor=None, device="cpu", model_kwargs={})

    def dist(seq):
        logits = target(seq).logits[:, -1].float()
        return processors(seq, logits).double().softmax(-1)[0]

    probs = {(): 1.0}
    for _ in range(new_tokens):
        longer = {}
        for prefix, prob in probs.items():
            nxt = dist(torch.cat([ids, torch.tensor([prefix], dtype=torch.long).reshape(1, -1)], 1))
            for token in range(vocab):
                if nxt[token] > 0:
                    longer[prefix + (token,)] = prob * float(nxt[token])
        probs = longer
    return probs


def chi_square_pvalue(counts, probs, draws):
    keys = [k for k, p in probs.items() if p > 0]
    assert all(k in probs and probs[k] > 0 for k in counts), "sampled a sequence of probability 0"
    observed = [counts.get(k, 0) for k in keys]
    expected = [probs[k] * draws for k in keys]
    # pool rare cells so the chi-square approximation holds
    big = [i for i, e in enumerate(expected) if e >= 5]
    small_o = sum(o for i, o in enumerate(observed) if i not in big)
    small_e = sum(e for i, e in enumerate(expected) if i not in big)
    obs = [observed[i] for i in big] + ([small_o] if small_e > 0 else [])
    exp = [expected[i] for i in big] + ([small_e] if small_e > 0 else [])
    scale = sum(obs) / sum(exp)  # float rounding of the exact probabilities
    return chisquare(obs, [e * scale for e in exp]).pvalue


def greedy_leaning_verifier(tree, scores, generator=None):
    """A lossy stand-in for verify_sampling (for power checks): it accepts the first child the target gives
    any mass, instead of accepting with probability p."""
    from hf_specdec.verification import Verdict

    probs = scores.softmax(-1)

    path, node = [0], 0
    while True:
        children = (tree.parents[0] == node).nonzero().flatten()
        ok = [int(c) for c in children if probs[0, node, tree.tokens[0, c]] > 0]
        if not ok:
            return Verdict(torch.tensor([path]), torch.multinomial(probs[0, node], 1))
        node = ok[0]
        path.append(node)


def train_killed_then_resumed(monkeypatch, args, target, kill_at: int):
    """Run hf-specdec train with `args`, killed right after its step-`kill_at` checkpoint, then the same command
    again (it resumes); returns the head folder of the resumed run."""
    from hf_specdec.training import train as train_mod

    real_save = train_mod.save_checkpoint

    def save_then_die(accelerator, out_dir, state, keep=2):
        real_save(accelerator, out_dir, state, keep)
        if state["step"] == kill_at:
            raise KeyboardInterrupt

    monkeypatch.setattr(train_mod, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_mod.train(args, target=target)
    monkeypatch.setattr(train_mod, "save_checkpoint", real_save)
    return train_mod.train(args, target=target)
