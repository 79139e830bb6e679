"""strategy="superposed" and the n-gram tables: counts and probabilities on a hand-made corpus, save / load,
the first step and the superposed input against their definitions, k = 1 with alpha = 0 is greedy, EOS and
length handling, bad requests."""

import pytest
import torch
from safetensors.torch import save_file

from hf_specdec import NgramTable
from hf_specdec.strategies.superposed import interpolate, superposed_embedding

from conftest import tiny_target


@pytest.fixture(scope="module")
def model():
    m = tiny_target(vocab_size=50, seed=2)
    m.generation_config.eos_token_id = None
    return m


@pytest.fixture(scope="module")
def table():
    gen = torch.Generator().manual_seed(0)
    return NgramTable.build([torch.randint(0, 50, (300,), generator=gen).tolist() for _ in range(30)], vocab_size=50)


def test_counts_and_probabilities_by_hand():
    t = NgramTable.build([[1, 2, 3, 1, 2, 4], [7, 1]], vocab_size=10, weights={2: 0.5, 3: 0.5})
    # order 2: context (2) seen twice, followed by 3 and 4; order 3: context (1, 2) twice, followed by 3 and 4
    probs = t.probs(torch.tensor([[9, 1, 2]]), torch.tensor([[3, 4, 5]]))
    torch.testing.assert_close(probs, torch.tensor([[0.5, 0.5, 0.0]]))
    # context (7, 1): order 3 unseen (skipped, no renormalisation); order 2: (1) -> 2 twice out of 2
    torch.testing.assert_close(t.probs(torch.tensor([[7, 1]]), torch.tensor([[2, 7]])), torch.tensor([[0.5, 0.0]]))
    assert t.counts(2, torch.tensor([[1]]), torch.tensor([[2]]))[0].item() == 2
    # never across sequences: (4) -> 7 is not a bigram
    assert t.counts(2, torch.tensor([[4]]), torch.tensor([[7]]))[1].item() == 0
    # an unseen context gives zero from every order
    assert t.probs(torch.tensor([[8, 8]]), torch.tensor([[1, 2]])).sum() == 0


def test_min_count_prunes_pairs_but_keeps_ratios():
    corpus = [[1, 2, 1, 2, 1, 3]]
    full = NgramTable.build(corpus, vocab_size=5, weights={2: 1.0})
    pruned = NgramTable.build(corpus, vocab_size=5, weights={2: 1.0}, min_count=2)
    assert pruned.num_entries() < full.num_entries()
    ctx, cand = torch.tensor([[1]]), torch.tensor([[2, 3]])
    torch.testing.assert_close(full.probs(ctx, cand), torch.tensor([[2 / 3, 1 / 3]]))
    torch.testing.assert_close(pruned.probs(ctx, cand), torch.tensor([[2 / 3, 0.0]]))


def test_save_load_round_trip(table, tmp_path):
    table.tokenizer_hash, table.target_fingerprint = "abc", [0.5, 1.5]
    table.save(tmp_path / "t" / "ngram.safetensors")
    for where in (tmp_path / "t" / "ngram.safetensors", tmp_path / "t"):
        loaded = NgramTable.load(where)
        assert loaded.weights == table.weights and loaded.vocab_size == 50 and loaded.tokenizer_hash == "abc"
        assert loaded.target_fingerprint == [0.5, 1.5]
        assert all(torch.equal(loaded.arrays[k], v) for k, v in table.arrays.items())
    save_file({"x": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not an hf_specdec n-gram table"):
        NgramTable.load(tmp_path / "other.safetensors")
    with pytest.raises(FileNotFoundError):
        NgramTable.load(tmp_path / "missing.safetensors")


def test_interpolation_and_superposed_embedding_follow_the_definitions():
    log_p = torch.tensor([[-0.1, -1.0, -3.0]])
    p_ng = torch.tensor([[0.2, 0.0, 0.5], [0.0, 0.0, 0.0]])
    out = interpolate(log_p, p_ng, 0.5)
    torch.testing.assert_close(out[0], 0.5 * log_p[0] + 0.5 * p_ng[0].log())  # -inf where the n-gram mass is 0
    torch.testing.assert_close(out[1], 0.5 * log_p[0] - 200)  # no n-gram mass at all: the penalty
    assert torch.equal(interpolate(log_p, p_ng, 0.0), log_p)
    emb = torch.nn.Embedding(5, 3)
    scores = torch.tensor([0.0, -1.0, 0.0])
    mixed = superposed_embedding(emb, torch.tensor([2, 4, 2]), scores)
    gamma = scores.softmax(0)
    torch.testing.assert_close(mixed[0, 0], (gamma[0] + gamma[2]) * emb.weight[2] + gamma[1] * emb.weight[4])


def test_one_draft_without_ngrams_is_greedy(model, table):
    ids = torch.tensor([[1, 2, 3, 4]])
    greedy = model.generate(ids, max_new_tokens=12, do_sample=False)
    for ngram in (False, table):
        out = model.generate(ids, strategy="superposed", num_return_sequences=1, superposed_alpha=0.0, ngram=ngram,
                             max_new_tokens=12)
        assert torch.equal(out, greedy)


@torch.no_grad()
def test_first_step_is_the_top_k_of_the_interpolated_distribution(model, table):
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    k, tau, alpha = 4, 0.5, 0.54
    out = model.generate(ids, strategy="superposed", num_return_sequences=k, ngram=table, superposed_alpha=alpha,
                         superposed_temperature=tau, max_new_tokens=1, return_dict_in_generate=True)
    logits = model(ids).logits[0, -1] / tau
    top, cand = logits.topk(3 * k)
    log_p = top.log_softmax(-1)
    p_ng = table.probs(ids[:, -5:], cand[None])[0]
    assert (p_ng > 0).any()  # the definition's mixed branch, not the no-n-gram penalty
    log_f = (1 - alpha) * log_p + alpha * p_ng.log()  # the paper's interpolation, restated
    best = log_f.topk(k)
    assert out.sequences.shape == (k, ids.shape[1] + 1)
    assert out.sequences[:, -1].tolist() == cand[best.indices].tolist()
    torch.testing.assert_close(out.sequences_scores, best.values)


@torch.no_grad()
def test_later_steps_read_the_superposed_token(model, table):
    """With no EOS, step 2's drafts extend step 1's with the candidates of one forward over the superposed
    embedding (checked against running the model on inputs_embeds by hand)."""
    ids = torch.tensor([[3, 1, 4, 1, 5]])
    k, tau = 3, 0.06
    one = model.generate(ids, strategy="superposed", num_return_sequences=k, ngram=False, max_new_tokens=1,
                         return_dict_in_generate=True)
    two = model.generate(ids, strategy="superposed", num_return_sequences=k, ngram=False, max_new_tokens=2,
                         return_dict_in_generate=True)
    scores1 = one.sequences_scores  # length 1: the cumulative scores
    embeds = torch.cat([model.get_input_embeddings()(ids),
                        superposed_embedding(model.get_input_embeddings(), one.sequences[:, -1], scores1)], 1)
    logits = model(inputs_embeds=embeds).logits[0, -1] / tau
    top, cand = logits.topk(3 * k)
    total = (scores1[:, None] + top.log_softmax(-1)[None]).flatten()
    best = total.topk(k)
    expected = {(int(one.sequences[i // (3 * k), -1]), int(cand[i % (3 * k)])) for i in best.indices}
    assert {tuple(row[-2:].tolist()) for row in two.sequences} == expected


def test_max_time_stops_the_search(model):
    ids = torch.tensor([[1, 2, 3, 4]])
    out = model.generate(ids, strategy="superposed", num_return_sequences=3, ngram=False, max_new_tokens=40,
                         max_time=0.0)
    assert out.shape[1] - ids.shape[1] < 40  # stopped by the time limit (checked after every step), not the length


def test_eos_moves_drafts_to_the_finished_pool(model):
    ids = torch.tensor([[1, 2, 3, 4]])
    greedy = model.generate(ids, max_new_tokens=6, do_sample=False)[0, 4:].tolist()
    eos = greedy[2]  # the greedy path ends with EOS at its third token
    out = model.generate(ids, strategy="superposed", num_return_sequences=3, ngram=False, max_new_tokens=6,
                         eos_token_id=eos, pad_token_id=0, return_dict_in_generate=True)
    rows = out.sequences[:, 4:].tolist()
    assert len(rows) == 3 and all(len(r) <= 6 for r in rows)
    ended = [r for r in rows if eos in r]
    assert ended, "the greedy path reaches EOS and must be among the drafts"
    for r in ended:
        assert all(t == 0 for t in r[r.index(eos) + 1:])  # padded after EOS
    assert out.sequences_scores.tolist() == sorted(out.sequences_scores.tolist(), reverse=True)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"num_return_sequences": 0}, "positive integer"),
        ({"superposed_alpha": 1.5}, r"superposed_alpha must be in \[0, 1\]"),
        ({"superposed_temperature": 0}, "superposed_temperature"),
        ({"n_token_sample": 2}, "n_token_sample"),
        ({"do_sample": True}, "deterministic"),
        ({"repetition_penalty": 1.3}, "logits processors"),
        ({"tree_depth": 3}, "option"),
    ],
)
def test_bad_requests_fail_early(model, table, kwargs, message):
    args = {"num_return_sequences": 3, "ngram": table, "max_new_tokens": 3, **kwargs}
    with pytest.raises(ValueError, match=message):
        model.generate(torch.tensor([[1, 2, 3]]), strategy="superposed", **args)


def test_tables_of_another_tokenizer_and_missing_tables_are_named(model, llama):
    small = NgramTable.build([[1, 2, 3]], vocab_size=128)
    with pytest.raises(ValueError, match="another tokenizer"):
        model.generate(torch.tensor([[1, 2, 3]]), strategy="superposed", ngram=small, max_new_tokens=2)
    with pytest.raises(ValueError, match="needs an n-gram table for this model"):
        llama.generate(torch.tensor([[1, 2, 3]]), strategy="superposed", max_new_tokens=2)
    with pytest.raises(ValueError, match="no draft model"):
        llama.generate(torch.tensor([[1, 2, 3]]), strategy="superposed", ngram=False, max_new_tokens=2,
                       assistant_model=model)
