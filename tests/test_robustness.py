"""Inputs a new user gets wrong, and concurrent calls: stock's answer or a clear, early error."""

from __future__ import annotations

import logging
import threading

import pytest
import torch
from conftest import CHEAP_CURVE, tiny_target
from safetensors.torch import load_file, save_file

from hf_specdec import FSPADDraftModel

IDS = torch.tensor([[5, 6, 7, 8, 9]])


def greedy(model, ids=IDS, **kwargs):
    return model.generate(ids, max_new_tokens=12, do_sample=False, **kwargs)


@pytest.mark.parametrize("strategy", ["fspad", "spechub", "superposed"])
def test_empty_prompt_is_a_clear_error(llama, llama_head, strategy):
    extra = {"ngram": False} if strategy == "superposed" else {"assistant_model": llama_head, "do_sample": strategy == "spechub"}
    with pytest.raises(ValueError, match=r"input_ids is empty \(shape \[1, 0\]\).*bos_token_id"):
        llama.generate(IDS[:, :0], strategy=strategy, max_new_tokens=4, **extra)


def test_float_input_ids_are_a_clear_error(llama, llama_head):
    with pytest.raises(TypeError, match=r"input_ids must be integer token ids.*torch.float32.*\.long\(\)"):
        greedy(llama, IDS.float(), assistant_model=llama_head, strategy="fspad")


@pytest.mark.parametrize("head_dtype,target_dtype", [(torch.bfloat16, torch.float32), (torch.float32, torch.bfloat16)])
def test_head_follows_the_targets_dtype(head_dtype, target_dtype, caplog):
    target = tiny_target("llama").to(target_dtype)
    torch.manual_seed(1)
    head = FSPADDraftModel.from_target(target).to(head_dtype)
    with caplog.at_level(logging.WARNING, logger="hf_specdec.draft.modeling_fspad"):
        out = greedy(target, assistant_model=head, strategy="fspad", cost_curve=CHEAP_CURVE)
    assert head.dtype == target_dtype
    assert f"follows its target to {target_dtype}" in caplog.text
    if target_dtype == torch.float32:  # float32: lossless means identical
        assert torch.equal(out, greedy(target))


@pytest.mark.parametrize("damage", ["missing", "unexpected", "both"])
def test_incomplete_head_checkpoint_is_an_error_naming_the_tensors(llama_head, tmp_path, damage):
    llama_head.save_pretrained(tmp_path)
    path = tmp_path / "model.safetensors"
    weights = load_file(path)
    if damage in ("missing", "both"):
        del weights["down_proj.weight"]
    if damage in ("unexpected", "both"):
        weights["embed_tokens.weight"] = torch.zeros(4, 4)
    save_file(weights, path, metadata={"format": "pt"})
    pattern = {"missing": r"missing: down_proj\.weight", "unexpected": r"unexpected: embed_tokens\.weight",
               "both": r"missing: down_proj\.weight; unexpected: embed_tokens\.weight"}[damage]
    with pytest.raises(ValueError, match=pattern):
        FSPADDraftModel.from_pretrained(tmp_path)


def test_complete_checkpoint_loads_and_reports_on_request(llama_head, tmp_path):
    llama_head.save_pretrained(tmp_path)
    head, info = FSPADDraftModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    for name, tensor in llama_head.state_dict().items():
        assert torch.equal(head.state_dict()[name], tensor), name


def test_pad_token_inside_the_prompt_names_the_derived_mask(llama, llama_head):
    ids = torch.tensor([[5, 6, 0, 8, 9]])  # pad_token_id = 0 at position 2
    with pytest.raises(ValueError, match=r"position\(s\) 2.*derived one from pad_token_id=0.*attention_mask=torch.ones_like"):
        greedy(llama, ids, assistant_model=llama_head, strategy="fspad")
    ones = torch.ones_like(ids)  # the fix the error names: the token is text
    out = greedy(llama, ids, attention_mask=ones, assistant_model=llama_head, strategy="fspad", cost_curve=CHEAP_CURVE)
    assert torch.equal(out, greedy(llama, ids, attention_mask=ones))


def test_a_hole_in_a_given_mask_is_refused_without_the_pad_hint(llama, llama_head):
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with pytest.raises(ValueError, match=r"masks position\(s\) 3 inside the prompt") as error:
        greedy(llama, ids, attention_mask=torch.tensor([[1, 1, 1, 0, 1]]), assistant_model=llama_head, strategy="fspad")
    assert "pad_token_id" not in str(error.value)


def test_concurrent_generate_calls_each_get_their_own_result(llama, llama_head):
    """4 threads share one target and one head; every call must equal its single-threaded result."""
    prompts = [torch.randint(1, 128, (1, n), generator=torch.Generator().manual_seed(n)) for n in (3, 8, 13, 21)]
    calls = {
        "fspad sized": lambda p: greedy(llama, p, assistant_model=llama_head, strategy="fspad", cost_curve=CHEAP_CURVE),
        "fspad fixed": lambda p: greedy(llama, p, assistant_model=llama_head, strategy="fspad", tree_top_k=2,
                                        tree_depth=3, tree_total_tokens=8),
        "superposed": lambda p: llama.generate(p, strategy="superposed", ngram=False, num_return_sequences=2,
                                               max_new_tokens=8),
    }
    expected = {(name, i): fn(p) for name, fn in calls.items() for i, p in enumerate(prompts)}
    stock = [greedy(llama, p) for p in prompts]
    got, errors = {}, []

    def worker(offset):
        try:
            for r in range(3):
                for k, (name, fn) in enumerate(calls.items()):
                    i = (offset + r + k) % len(prompts)
                    got[(offset, r, name)] = (i, fn(prompts[i]))
        except Exception as error:  # surfaced below: a thread's exception would not fail the test
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(got) == 4 * 3 * len(calls)
    for (_, _, name), (i, out) in got.items():
        assert torch.equal(out, expected[(name, i)]), name
        if name.startswith("fspad"):
            assert torch.equal(out, stock[i])
