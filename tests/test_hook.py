"""The generate hook: strategy= dispatch, GenerationConfig entries, the custom_generate paths, errors."""

import copy

import pytest
import torch
from transformers import GenerationConfig
from transformers.generation.utils import GenerationMixin

import hf_specdec
from hf_specdec import FSPADDraftModel, fspad_generate

IDS = torch.tensor([[4, 9, 2, 7]])


def stock(model, **kw):
    return model.generate(IDS, max_new_tokens=10, do_sample=False, **kw)


def test_without_strategy_generate_is_stock(llama):
    assert GenerationMixin.generate is not hf_specdec.hook._STOCK_GENERATE
    with_hook = stock(llama)
    hf_specdec.uninstall_generate_hook()
    try:
        assert torch.equal(with_hook, stock(llama))
    finally:
        hf_specdec.install_generate_hook()


def test_strategy_from_generation_config(llama, llama_head):
    config = GenerationConfig(strategy="fspad", max_new_tokens=10, do_sample=False)
    out = llama.generate(IDS, generation_config=config, assistant_model=llama_head, return_dict_in_generate=True)
    assert torch.equal(out.sequences, stock(llama)) and out.spec_stats.new_tokens == 10
    assert config.strategy == "fspad"  # the caller's object is untouched


def test_strategy_from_the_models_generation_config(llama, llama_head):
    llama.generation_config.strategy = "fspad"
    try:
        out = llama.generate(IDS, assistant_model=llama_head, max_new_tokens=10, return_dict_in_generate=True)
        assert torch.equal(out.sequences, stock(llama, strategy=None))
        assert out.spec_stats.new_tokens == 10 and out.spec_stats.target_forwards == 1 + len(out.spec_stats.accepted_lengths)
        assert llama.generation_config.strategy == "fspad"
        plain = llama.generate(IDS, max_new_tokens=10, strategy=None, return_dict_in_generate=True)
        assert not hasattr(plain, "spec_stats") or plain.spec_stats is None
    finally:
        del llama.generation_config.strategy


def test_custom_generate_callable_without_the_hook(llama, llama_head):
    hf_specdec.uninstall_generate_hook()
    try:
        out = llama.generate(IDS, custom_generate=fspad_generate, draft_model=llama_head, max_new_tokens=10,
                             tree_depth=2, return_dict_in_generate=True)
        assert torch.equal(out.sequences, stock(llama)) and out.spec_stats.target_forwards > 1
    finally:
        hf_specdec.install_generate_hook()


def test_custom_generate_folder(llama, llama_head):
    out = llama.generate(IDS, custom_generate=hf_specdec.CUSTOM_GENERATE_DIR, trust_remote_code=True,
                         assistant_model=llama_head, max_new_tokens=10, do_sample=False)
    assert torch.equal(out, stock(llama))


def test_unknown_strategy(llama):
    with pytest.raises(ValueError, match="Unknown strategy 'eagle9'.*fspad"):
        llama.generate(IDS, strategy="eagle9")


def test_missing_or_wrong_draft(llama):
    with pytest.raises(ValueError, match="needs a draft head: pass assistant_model"):
        llama.generate(IDS, strategy="fspad", max_new_tokens=3)
    with pytest.raises(TypeError, match="FSPADDraftModel"):
        llama.generate(IDS, strategy="fspad", assistant_model=llama, max_new_tokens=3)


def test_batch_larger_than_one(llama, llama_head):
    """fspad takes batches (tests/test_batch.py); spechub with a draft LM says it takes one row."""
    ids = IDS.repeat(2, 1)
    out = llama.generate(ids, strategy="fspad", assistant_model=llama_head, max_new_tokens=3)
    assert torch.equal(out, llama.generate(ids, max_new_tokens=3, do_sample=False))
    with pytest.raises(NotImplementedError, match="batch size 1"):
        llama.generate(ids, strategy="spechub", assistant_model=copy.deepcopy(llama), do_sample=True, max_new_tokens=3)


def test_non_croppable_cache(llama, llama_head):
    with pytest.raises(ValueError, match="DynamicCache of full-attention layers"):
        llama.generate(IDS, strategy="fspad", assistant_model=llama_head, max_new_tokens=3, cache_implementation="static")


@pytest.mark.parametrize("option,value", [("num_beams", 2), ("num_return_sequences", 2), ("output_attentions", True),
                                          ("output_hidden_states", True), ("prompt_lookup_num_tokens", 3)])
def test_options_the_strategy_cannot_honour(llama, llama_head, option, value):
    kwargs = {option: value}
    if option == "num_return_sequences":
        kwargs["do_sample"] = True
    with pytest.raises(ValueError, match=option):
        llama.generate(IDS, strategy="fspad", assistant_model=llama_head, max_new_tokens=3,
                       return_dict_in_generate=True, **kwargs)


@pytest.mark.parametrize("bad", [{"tree_top_k": 0}, {"tree_depth": -1}, {"tree_total_tokens": 1}, {"tree_depth": 2.5}])
def test_bad_tree_shape(llama, llama_head, bad):
    with pytest.raises(ValueError, match="tree_"):
        llama.generate(IDS, strategy="fspad", assistant_model=llama_head, max_new_tokens=3, **bad)


def test_strategy_and_custom_generate_together(llama, llama_head):
    with pytest.raises(ValueError, match="either strategy= or custom_generate="):
        llama.generate(IDS, strategy="fspad", custom_generate=fspad_generate, assistant_model=llama_head)


def test_positional_arguments_with_a_strategy(llama, llama_head):
    from transformers import LogitsProcessorList

    with pytest.raises(TypeError, match="by keyword"):
        llama.generate(IDS, None, LogitsProcessorList(), strategy="fspad", assistant_model=llama_head)
    out = llama.generate(IDS, None, LogitsProcessorList(), max_new_tokens=10, do_sample=False)
    assert torch.equal(out, stock(llama))
