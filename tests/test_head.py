"""The FSPAD head as a transformers model: variants, save/load, the Hub cache, pairing with a target."""

import os

import pytest
import torch
from transformers import AutoConfig, AutoModel, GenerationConfig

from hf_specdec import FSPADDraftModel

from conftest import tiny_target


@pytest.mark.parametrize("variant,fs,pad", [("fspad", True, True), ("eagle2", False, False),
                                            ("fs-only", True, False), ("pad-only", False, True)])
def test_variants_have_the_papers_parameters(llama, variant, fs, pad):
    head = FSPADDraftModel.from_target(llama, variant=variant)
    H, I = 64, 128
    assert head.config.variant == variant
    eagle = 2 * H * H + H + (H * H + 2 * H * 32 + H * H) + 3 * H * I + H  # fc, attn (4 q heads, 2 kv), mlp, post-attn norm
    expected = eagle + (3 * H * I + H if fs else 0) + (H * I if pad else 0)
    assert sum(p.numel() for p in head.parameters()) == expected
    out = head(torch.tensor([[1, 2, 3]]), torch.randn(1, 3, H))
    assert out.hidden_states.shape == out.features.shape == (1, 3, H)
    assert torch.equal(out.hidden_states, out.features) != pad  # PAD splits the two roles


def test_save_load_round_trip_through_automodel(llama, llama_head, tmp_path):
    llama_head.generation_config = GenerationConfig(tree_top_k=3, tree_depth=5, tree_total_tokens=12)
    llama_head.save_pretrained(tmp_path)
    files = sorted(os.listdir(tmp_path))
    assert files == ["config.json", "generation_config.json", "model.safetensors"]
    assert AutoConfig.from_pretrained(tmp_path).model_type == "fspad"
    loaded = AutoModel.from_pretrained(tmp_path)
    assert isinstance(loaded, FSPADDraftModel)
    assert loaded.generation_config.tree_depth == 5
    from safetensors.torch import load_file

    keys = load_file(tmp_path / "model.safetensors").keys()
    assert not any("embed" in k or "lm_head" in k for k in keys)  # borrowed from the target, never saved
    for (n1, p1), (n2, p2) in zip(llama_head.state_dict().items(), loaded.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2)
    ids = torch.tensor([[4, 5, 6]])
    a = llama.generate(ids, assistant_model=llama_head, strategy="fspad", max_new_tokens=12, return_dict_in_generate=True)
    b = llama.generate(ids, assistant_model=loaded, strategy="fspad", max_new_tokens=12, return_dict_in_generate=True)
    assert torch.equal(a.sequences, b.sequences) and a.spec_stats.draft_forwards == b.spec_stats.draft_forwards


def test_loads_by_repo_id_from_an_offline_hub_cache(llama_head, tmp_path, monkeypatch):
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--someone--tiny-fspad"
    snap = repo / "snapshots" / commit
    llama_head.save_pretrained(snap)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    import huggingface_hub.constants as hub_constants
    import transformers.utils.hub as tf_hub

    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(tf_hub, "TRANSFORMERS_CACHE", str(tmp_path / "hub"), raising=False)
    loaded = AutoModel.from_pretrained("someone/tiny-fspad", cache_dir=str(tmp_path / "hub"))
    assert isinstance(loaded, FSPADDraftModel)
    assert torch.equal(loaded.fc.weight, llama_head.fc.weight)


def test_pairing_with_the_wrong_target_says_what_differs(llama_head):
    with pytest.raises(ValueError, match="hidden size: head 64, target 32"):
        llama_head.attach_target(tiny_target(hidden_size=32, intermediate_size=64))
    with pytest.raises(ValueError, match="vocabulary size: head 128, target 256"):
        llama_head.attach_target(tiny_target(vocab_size=256))
    other = tiny_target(seed=99)  # same shapes, other weights
    with pytest.raises(ValueError, match="embedding fingerprint"):
        llama_head.attach_target(other)
    with pytest.raises(ValueError, match="from_target"):
        other.generate(torch.tensor([[1, 2]]), assistant_model=llama_head, strategy="fspad", max_new_tokens=3)


def test_fingerprint_survives_a_dtype_change():
    target = tiny_target(seed=41)  # its own copy: the module's shared fixture keeps its float32 weights
    head = FSPADDraftModel.from_target(target)
    for dtype in (torch.bfloat16, torch.float16):
        assert head.target_mismatches(tiny_target(seed=41).to(dtype)) == []
    assert head.target_mismatches(tiny_target(seed=42).to(torch.bfloat16)) == [
        "embedding fingerprint: the target's token embeddings are not those the head was made for"]


def test_tokenizer_mismatch_is_detected(llama):
    class Tok:
        def __init__(self, vocab):
            self.vocab = vocab

        def get_vocab(self):
            return self.vocab

    tok = Tok({f"t{i}": i for i in range(128)})
    head = FSPADDraftModel.from_target(llama, tokenizer=tok)
    head.attach_target(llama, tokenizer=tok)
    with pytest.raises(ValueError, match="tokenizer"):
        head.attach_target(llama, tokenizer=Tok({f"u{i}": i for i in range(128)}))


def test_reduced_draft_vocabulary_maps_back_to_target_ids(llama, tmp_path):
    head = FSPADDraftModel.from_target(llama, draft_vocab_size=32)
    head.draft_to_target.copy_(torch.arange(0, 128, 4))
    head.attach_target(llama)
    out = head(torch.tensor([[1, 2]]), torch.randn(1, 2, 64))
    logits = head.compute_logits(out.hidden_states)
    assert logits.shape == (1, 2, 32)
    torch.testing.assert_close(logits, llama.lm_head(out.hidden_states)[..., ::4])
    head.save_pretrained(tmp_path)
    loaded = FSPADDraftModel.from_pretrained(tmp_path).attach_target(llama)
    assert torch.equal(loaded.draft_to_target, head.draft_to_target)
    ids = torch.tensor([[7, 8, 9]])
    assert torch.equal(
        llama.generate(ids, assistant_model=loaded, strategy="fspad", max_new_tokens=15),
        llama.generate(ids, max_new_tokens=15, do_sample=False),
    )


def test_corrupted_checkpoint_is_a_clear_error(llama_head, tmp_path):
    llama_head.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(Exception, match="(?i)safetensors|header|deserializ"):
        FSPADDraftModel.from_pretrained(tmp_path)


def test_unknown_shipped_head_lists_the_shipped_ones():
    from hf_specdec.heads import shipped_head_path

    with pytest.raises(FileNotFoundError, match=r"No shipped head 'nope'.*smollm2-135m-instruct-fspad"):
        shipped_head_path("nope")


def test_loaded_head_computes_what_the_saved_one_did(llama, tmp_path):
    """Non-persistent buffers (the rotary inv_freq) must be rebuilt on load, not left as uninitialised memory."""
    torch.manual_seed(0)
    head = FSPADDraftModel.from_target(llama)
    head.save_pretrained(tmp_path)
    loaded = FSPADDraftModel.from_pretrained(tmp_path).attach_target(llama)
    torch.testing.assert_close(loaded.rotary_emb.inv_freq, head.rotary_emb.inv_freq)
    ids, feats = torch.tensor([[3, 7, 9, 2]]), torch.randn(1, 4, llama.config.hidden_size)
    torch.testing.assert_close(loaded(input_ids=ids, features=feats).features, head(input_ids=ids, features=feats).features)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_head_rms_norm_is_llama_rms_norm_bit_for_bit(dtype):
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    from hf_specdec.draft.base import DecodingNorm, rms_norm

    torch.manual_seed(1)
    for width, shape in ((64, (1, 1)), (64, (3, 16)), (576, (1, 7)), (576, (2, 300))):
        norm = LlamaRMSNorm(width, eps=1e-5).to(dtype)
        norm.weight.data = torch.randn(width).to(dtype)
        x = (torch.randn(*shape, width) * 3).to(dtype)
        assert torch.equal(rms_norm(norm, x), norm(x))
        assert torch.equal(DecodingNorm(norm)(x), norm(x))


FIVE_NODE_TREE = torch.tensor([[[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 0, 1, 0, 0], [1, 1, 0, 1, 0], [1, 1, 0, 1, 1]]],
                              dtype=torch.bool)


def tree_steps_after_prefixes(fill, rotary, x, copies):
    """For 0 and 7 cached positions: (cached, `copies` caches each filled by fill(prefix, position embeddings,
    cache), the rotary embedding at a five-node tree's positions after them, the tree's mask)."""
    from transformers import DynamicCache

    from hf_specdec.tree import tree_attention_mask

    for cached in (0, 7):
        caches = [DynamicCache() for _ in range(copies)]
        if cached:
            prefix = torch.randn(1, cached, x.shape[-1], dtype=x.dtype)
            pe = rotary(prefix, torch.arange(cached)[None])
            for c in caches:
                fill(prefix, pe, c)
        pos = torch.tensor([[cached, cached + 1, cached + 1, cached + 2, cached + 3]])
        yield cached, caches, rotary(x, pos), tree_attention_mask(FIVE_NODE_TREE, cached, x.dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_head_attention_is_llama_attention_bit_for_bit(dtype):
    """The head's attention path (its projections called directly, the rotary embedding by a roll) gives exactly
    LlamaAttention.forward's output, with and without a cache and a tree mask."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaAttention, LlamaRotaryEmbedding

    from hf_specdec.draft.base import head_attention

    config = LlamaConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, attention_bias=True)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    attn, rotary = LlamaAttention(config, layer_idx=0).to(dtype).eval(), LlamaRotaryEmbedding(config)
    x = torch.randn(1, 5, 64, dtype=dtype)
    fill = lambda prefix, pe, cache: attn(prefix, position_embeddings=pe, attention_mask=None, cache=cache)  # noqa: E731
    with torch.no_grad():
        for cached, caches, pe, mask in tree_steps_after_prefixes(fill, rotary, x, copies=2):
            ref, _ = attn(x, position_embeddings=pe, attention_mask=mask, cache=caches[0])
            ours = head_attention(attn, x, pe, mask, caches[1], is_causal=False)
            assert torch.equal(ref, ours), cached


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_decoder_layer_step_is_llama_decoder_layer_bit_for_bit(dtype):
    """`decoder_layer_step` (a head's extra layers) gives LlamaDecoderLayer.forward's output exactly, with and
    without a cache and a tree mask, on the modules (training) and on the decoding parts (stacked gate / up)."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

    from hf_specdec.draft.base import decoder_layer_parts, decoder_layer_step

    config = LlamaConfig(hidden_size=64, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    layer, rotary = LlamaDecoderLayer(config, layer_idx=0).to(dtype).eval(), LlamaRotaryEmbedding(config)
    x = torch.randn(1, 5, 64, dtype=dtype)
    fill = lambda prefix, pe, cache: layer(prefix, position_embeddings=pe, cache=cache)  # noqa: E731
    with torch.no_grad():
        for cached, caches, pe, mask in tree_steps_after_prefixes(fill, rotary, x, copies=3):
            ref = layer(x, position_embeddings=pe, attention_mask=mask, cache=caches[0])
            parts = decoder_layer_parts(layer)
            assert parts.mlp.gate_up is not None  # decoding: gate and up in one product
            ours = decoder_layer_step(layer, x, pe, mask, caches[1], is_causal=False, parts=parts)
            assert torch.equal(ref, ours), cached
            with torch.enable_grad():  # training: the modules one by one
                modules = decoder_layer_step(layer, x, pe, mask, caches[2], is_causal=False)
            assert torch.equal(ref, modules.detach()), cached


@pytest.mark.parametrize("variant", ["fspad", "eagle2"])
def test_a_grown_head_drafts_as_before_until_trained(llama, variant, tmp_path):
    """with_extra_layers adds decoder layers on the logit half that start as no-ops: the same outputs, the old
    weights kept; the fed-back feature stays the first layer's once they change; a head only grows; the grown
    head saves and loads with its layers; other projects' one-layer layouts refuse it."""
    from hf_specdec.draft.formats import export_state

    torch.manual_seed(5)
    head = FSPADDraftModel.from_target(llama, variant=variant).eval()
    grown = head.with_extra_layers(2)
    assert grown.config.num_extra_layers == 2 and len(grown.extra_layers) == 2 and not grown.training
    ids, feats = torch.tensor([[5, 9, 11, 2]]), torch.randn(1, 4, 64)
    with torch.no_grad():
        before, after = head(input_ids=ids, features=feats), grown(input_ids=ids, features=feats)
        assert torch.equal(before.hidden_states, after.hidden_states) and torch.equal(before.features, after.features)
        for name, value in head.state_dict().items():
            assert torch.equal(grown.state_dict()[name], value), name
        grown.extra_layers[1].mlp.down_proj.weight.normal_()
        changed = grown(input_ids=ids, features=feats)
    assert not torch.equal(changed.hidden_states, before.hidden_states)
    assert torch.equal(changed.features, before.features)  # the fed-back feature is the first layer's
    with pytest.raises(ValueError, match="it only grows"):
        grown.with_extra_layers(1)
    grown.save_pretrained(tmp_path)
    loaded = FSPADDraftModel.from_pretrained(tmp_path).attach_target(llama).eval()
    assert loaded.config.num_extra_layers == 2
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids, features=feats).hidden_states, changed.hidden_states)
    with pytest.raises(ValueError, match="extra decoder layers"):
        export_state(grown, "fspad-reference" if variant == "fspad" else "eagle")
    with pytest.raises(ValueError, match="num_extra_layers"):
        FSPADDraftModel.from_target(llama, num_extra_layers=-1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rotary_table_lookup_is_the_rotary_embedding_bit_for_bit(llama, dtype):
    """A head forward told a bound on its positions (a drafter's cache length) looks cos / sin up in a table; the
    values, and so the head's outputs, are the rotary module's own, as the table grows and after a dtype change."""
    head = FSPADDraftModel.from_target(llama).to(dtype).eval()
    h = torch.zeros(2, 3, 64, dtype=dtype)
    with torch.no_grad():
        for positions in (torch.tensor([[0, 1, 2], [5, 5, 6]]), torch.tensor([[250, 255, 255], [3, 4, 5]]),
                          torch.tensor([[1000, 1001, 1002], [2047, 2047, 2047]]), torch.tensor([[7, 7, 7]] * 2)):
            bound = int(positions.max()) + 1
            for ours, ref in zip(head.position_embeddings(h, positions, bound), head.rotary_emb(h, positions)):
                assert ours.dtype == dtype and torch.equal(ours, ref)
        assert head._rotary_table[1].shape[0] >= 2048  # grown past the first 256 positions
        ids, feats = torch.tensor([[3, 9, 4]]), torch.randn(1, 3, 64, dtype=dtype)
        pos = torch.tensor([[300, 301, 302]])
        plain = head(input_ids=ids, features=feats, position_ids=pos)
        looked_up = head(input_ids=ids, features=feats, position_ids=pos, max_position=303)
        assert torch.equal(plain.hidden_states, looked_up.hidden_states)
        assert torch.equal(plain.features, looked_up.features)
        other = torch.bfloat16 if dtype == torch.float32 else torch.float32
        head.to(other)  # a new dtype (and inv_freq buffer): the table is built again, not reused
        positions = torch.tensor([[40, 41, 42]] * 2)
        for ours, ref in zip(head.position_embeddings(h.to(other), positions, 43), head.rotary_emb(h.to(other), positions)):
            assert ours.dtype == other and torch.equal(ours, ref)


@pytest.mark.parametrize("variant,extra_layers", [("fspad", 0), ("eagle2", 0), ("fspad", 1), ("eagle2", 2)])
def test_decoding_head_step_equals_the_module_path_bit_for_bit(llama, variant, extra_layers):
    """While decoding (no gradients) the head stacks q/k/v and gate/up weights into one product each and calls
    plain projections by F.linear; with gradients on (training) every projection is called as its module. Both
    give the same values, float32, with a cache and a tree mask; the stacked weights follow an in-place weight
    change (an optimizer step) instead of serving stale ones."""
    from transformers import DynamicCache

    from hf_specdec.draft.base import weights_fixed
    from hf_specdec.tree import GrowingCache, tree_attention_mask

    torch.manual_seed(3)
    head = FSPADDraftModel.from_target(llama, variant=variant, num_extra_layers=extra_layers).eval()
    ids, feats = torch.tensor([[5, 9, 11, 2, 7]]), torch.randn(1, 5, 64)
    prefix_ids, prefix_feats = torch.tensor([[1, 4, 6]]), torch.randn(1, 3, 64)
    mask = tree_attention_mask(FIVE_NODE_TREE, 3, torch.float32)
    pos = torch.tensor([[3, 4, 4, 5, 6]])

    def step(grad: bool, cache_type=DynamicCache):
        cache = cache_type()
        with torch.set_grad_enabled(grad):
            head(input_ids=prefix_ids, features=prefix_feats, cache=cache, max_position=3)
            out = head(input_ids=ids, features=feats, position_ids=pos, attention_mask=mask, cache=cache, max_position=7)
        return out.hidden_states.detach(), out.features.detach()

    def fixed_step():  # as generate runs it: parts resolved once per block, the drafters' in-place cache
        with weights_fixed():
            step(grad=False, cache_type=GrowingCache)
            return step(grad=False, cache_type=GrowingCache)

    for _ in range(2):
        decoding, modules, fixed = step(grad=False), step(grad=True), fixed_step()
        assert all(torch.equal(a, b) for a, b in zip(decoding, modules))
        assert all(torch.equal(a, b) for a, b in zip(fixed, modules))
        assert set(head.self_attn.__dict__["_stacked_linears"]) == {"qkv"}
        with torch.no_grad():
            head.self_attn.k_proj.weight.add_(0.05)
            head.up_proj.weight.mul_(1.5)
    assert not torch.equal(decoding[0], step(grad=False)[0])  # the second round saw the changed weights


def test_a_head_resolves_its_decoding_step_once_per_weights_fixed_block(llama):
    """Inside one `weights_fixed` block (one generate call) a head resolves what its step multiplies by once and
    reuses it: a hook added inside the block is not seen (the block promises fixed weights and modules), the next
    block sees it. A switch of the attention implementation inside the block (the tree strategies switch it when a
    call starts) is followed at once."""
    from hf_specdec.draft.base import weights_fixed

    torch.manual_seed(6)
    head = FSPADDraftModel.from_target(llama).eval()
    ids, feats = torch.tensor([[5, 9, 11]]), torch.randn(1, 3, 64)
    calls = []
    with torch.no_grad():
        plain = head(input_ids=ids, features=feats).features
        with weights_fixed():
            head(input_ids=ids, features=feats)
            parts = head.__dict__["_decoding_parts"]["step"][2]
            handle = head.down_proj.register_forward_hook(lambda mod, args, out: calls.append(1) or out * 2)
            assert torch.equal(head(input_ids=ids, features=feats).features, plain) and not calls
            assert head.__dict__["_decoding_parts"]["step"][2] is parts
        with weights_fixed():
            assert not torch.allclose(head(input_ids=ids, features=feats).features, plain) and calls
        handle.remove()
        with weights_fixed():
            one = head(input_ids=ids[:, :1], features=feats[:, :1]).features
            parts = head.__dict__["_decoding_parts"]["step"][2]
            head.set_attn_implementation("eager")
            eager = head(input_ids=ids[:, :1], features=feats[:, :1]).features  # one token: eager needs no mask
            assert head.__dict__["_decoding_parts"]["step"][2] is not parts
            assert head.__dict__["_decoding_parts"]["step"][2].attention.attention.__name__ == "eager_attention_forward"
            assert torch.allclose(eager, one, atol=1e-6)
            head.set_attn_implementation("sdpa")


def test_decoding_head_step_runs_hooks_and_adapters_on_its_projections(llama):
    """A projection with a hook (or replaced by an adapter layer) is called as its module while decoding, so what
    the hook does is in the output; the head's stacked products are used only for plain nn.Linear projections."""
    torch.manual_seed(4)
    head = FSPADDraftModel.from_target(llama).eval()
    ids, feats = torch.tensor([[5, 9, 11]]), torch.randn(1, 3, 64)
    with torch.no_grad():
        plain = head(input_ids=ids, features=feats).features
        calls = []
        for module in (head.self_attn.v_proj, head.gate_proj, head.down_proj):
            calls.append(0)

            def double(mod, args, out, i=len(calls) - 1):
                calls[i] += 1
                return out * 2

            handle = module.register_forward_hook(double)
            hooked = head(input_ids=ids, features=feats).features
            handle.remove()
            assert calls[-1] == 1 and not torch.allclose(hooked, plain)
        assert torch.equal(head(input_ids=ids, features=feats).features, plain)  # hooks gone: the stacked path again


def test_stacked_decoding_weights_follow_a_dtype_round_trip(llama):
    """head.to(bf16).to(float32) rounds the weights; the stacked decoding weights are rebuilt from the rounded
    ones: `.to()` drops them (the float32 storage's address may be handed out again, so a key on it is not
    enough)."""
    torch.manual_seed(5)
    head = FSPADDraftModel.from_target(llama).eval()
    ids, feats = torch.tensor([[5, 9, 11]]), torch.randn(1, 3, 64)
    with torch.no_grad():
        head(input_ids=ids, features=feats)
        assert "_stacked_linears" in head.self_attn.__dict__ and "_stacked_linears" in head.__dict__
        head.to(torch.bfloat16).to(torch.float32)
        assert "_stacked_linears" not in head.self_attn.__dict__ and "_stacked_linears" not in head.__dict__
        decoding = head(input_ids=ids, features=feats).features
    assert torch.equal(decoding, head(input_ids=ids, features=feats).features.detach())  # the module path
