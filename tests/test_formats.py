"""Heads in other projects' layouts (draft/formats.py): checkpoints written here with each layout's exact key
names and shapes (tiny sizes), loaded through load_draft and assistant_model="<folder>", checked against an
independent forward written from the layout's description."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import CHEAP_CURVE, tiny_target
from safetensors.torch import save_file

import hf_specdec
from hf_specdec import FSPADDraftModel, load_draft
from hf_specdec.draft.formats import save_layout

H, I, NH, NKV, D, V = 64, 128, 4, 2, 16, 128


# ------------------------------------------------------------------ the layouts' forward, from their description
def rms(x, w, eps=1e-6):
    return w * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def rope(x, theta=10000.0):
    """x [T, heads, D] at positions 0..T-1, rotating the two halves of each head."""
    T = x.shape[0]
    inv = 1.0 / theta ** (torch.arange(0, D, 2).float() / D)
    angles = torch.arange(T).float()[:, None] * inv[None]  # [T, D/2]
    cos, sin = torch.cat([angles.cos()] * 2, -1)[:, None], torch.cat([angles.sin()] * 2, -1)[:, None]
    x1, x2 = x[..., : D // 2], x[..., D // 2 :]
    return x * cos + torch.cat([-x2, x1], -1) * sin


def linear(x, w, b=None):
    return x @ w.T + (b if b is not None else 0)


def reference_logits(w: dict, layout: str, embedding, lm_head, tokens, features):
    """EAGLE-1/2: h = fc(cat(emb(x), f)); one decoder layer without input norm; lm_head(out), no final norm.
    FSPAD reference: fc.fc, then h + fc.mlp.down(SiLU(gate(e)) * up(norm(h))); the layer's MLP output is 2H
    wide: the first half (after the residual) goes to the lm_head."""
    fc = "fc.fc" if layout == "fspad-reference" else "fc"
    e = embedding[tokens]
    h = linear(torch.cat([e, features], -1), w[f"{fc}.weight"], w.get(f"{fc}.bias"))
    if layout == "fspad-reference":
        gate, up = linear(e, w["fc.mlp.gate_proj.weight"]), linear(rms(h, w["fc.post_attention_layernorm.weight"]), w["fc.mlp.up_proj.weight"])
        h = h + linear(torch.nn.functional.silu(gate) * up, w["fc.mlp.down_proj.weight"])
    a = "layers.0.self_attn"
    q = rope(linear(h, w[f"{a}.q_proj.weight"], w.get(f"{a}.q_proj.bias")).view(-1, NH, D))
    k = rope(linear(h, w[f"{a}.k_proj.weight"], w.get(f"{a}.k_proj.bias")).view(-1, NKV, D))
    v = linear(h, w[f"{a}.v_proj.weight"], w.get(f"{a}.v_proj.bias")).view(-1, NKV, D)
    k, v = k.repeat_interleave(NH // NKV, 1), v.repeat_interleave(NH // NKV, 1)
    scores = torch.einsum("qhd,khd->hqk", q, k) / D**0.5
    scores = scores.masked_fill(~torch.ones(len(tokens), len(tokens), dtype=torch.bool).tril(), float("-inf"))
    attn = torch.einsum("hqk,khd->qhd", scores.softmax(-1), v).reshape(len(tokens), NH * D)
    x = h + linear(attn, w[f"{a}.o_proj.weight"], w.get(f"{a}.o_proj.bias"))
    m = rms(x, w["layers.0.post_attention_layernorm.weight"])
    mlp = linear(torch.nn.functional.silu(linear(m, w["layers.0.mlp.gate_proj.weight"])) * linear(m, w["layers.0.mlp.up_proj.weight"]),
                 w["layers.0.mlp.down_proj.weight"])
    out = x + mlp[..., :H]
    return linear(out, lm_head)


def write_head(folder, layout, target, fc_bias=True, qkv_bias=False, fmt="safetensors", extra=None, drop=None, seed=0):
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=0.08):
        return torch.randn(*shape, generator=g) * scale

    fc = "fc.fc" if layout == "fspad-reference" else "fc"
    w = {f"{fc}.weight": rand(H, 2 * H)}
    if fc_bias:
        w[f"{fc}.bias"] = rand(H)
    a = "layers.0.self_attn"
    w.update({f"{a}.q_proj.weight": rand(NH * D, H), f"{a}.k_proj.weight": rand(NKV * D, H),
              f"{a}.v_proj.weight": rand(NKV * D, H), f"{a}.o_proj.weight": rand(H, NH * D)})
    if qkv_bias:
        w.update({f"{a}.q_proj.bias": rand(NH * D), f"{a}.k_proj.bias": rand(NKV * D), f"{a}.v_proj.bias": rand(NKV * D)})
    w.update({"layers.0.mlp.gate_proj.weight": rand(I, H), "layers.0.mlp.up_proj.weight": rand(I, H),
              "layers.0.mlp.down_proj.weight": rand(2 * H if layout == "fspad-reference" else H, I),
              "layers.0.post_attention_layernorm.weight": 1 + rand(H)})
    if layout == "fspad-reference":
        w.update({"fc.mlp.gate_proj.weight": rand(I, H), "fc.mlp.up_proj.weight": rand(I, H),
                  "fc.mlp.down_proj.weight": rand(H, I), "fc.post_attention_layernorm.weight": 1 + rand(H)})
    w["embed_tokens.weight"] = target.get_input_embeddings().weight.detach().clone()
    w.update(extra or {})
    for key in drop or ():
        del w[key]
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": H, "intermediate_size": I,
              "num_attention_heads": NH, "num_key_value_heads": NKV, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
              "max_position_embeddings": 2048, "vocab_size": V, "num_hidden_layers": 1, "bias": fc_bias}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    if fmt == "safetensors":
        save_file(w, folder / "model.safetensors")
    else:
        torch.save(w, folder / "pytorch_model.bin")
    return w


@pytest.fixture(scope="module")
def target():
    return tiny_target("llama")


def head_logits(head, tokens, features):
    out = head(input_ids=tokens[None], features=features[None])
    return head.compute_logits(out.hidden_states)[0].float()


@pytest.mark.parametrize("layout,fc_bias,qkv_bias,fmt", [
    ("eagle", True, False, "safetensors"), ("eagle", False, False, "bin"), ("eagle", True, True, "safetensors"),
    ("fspad-reference", True, False, "safetensors"),
])
def test_layout_loads_and_drafts_as_its_description(tmp_path, target, layout, fc_bias, qkv_bias, fmt):
    w = write_head(tmp_path / "head", layout, target, fc_bias, qkv_bias, fmt)
    head = load_draft(tmp_path / "head", target=target)
    assert head.config.source_layout == layout and head.config.variant == ("fspad" if layout != "eagle" else "eagle2")
    tokens = torch.randint(1, V, (9,), generator=torch.Generator().manual_seed(1))
    features = torch.randn(9, H, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = reference_logits(w, layout, w["embed_tokens.weight"], target.lm_head.weight, tokens, features)
        torch.testing.assert_close(head_logits(head, tokens, features), want, rtol=1e-4, atol=1e-4)


def test_a_folder_as_assistant_model_is_lossless_and_loaded_once(tmp_path, target):
    write_head(tmp_path / "head", "eagle", target)
    ids = torch.tensor([[3, 14, 15, 92, 65]])
    stock = target.generate(ids, max_new_tokens=16, do_sample=False)
    for strategy in ("fspad", "eagle"):
        out = target.generate(ids, max_new_tokens=16, do_sample=False, strategy=strategy, cost_curve=CHEAP_CURVE,
                              assistant_model=str(tmp_path / "head"))
        assert torch.equal(out, stock)
    cached = hf_specdec.hook._LOADED_DRAFTS[target]
    assert len(cached) == 1  # two calls, one load


def test_sampling_with_a_converted_head_runs(tmp_path, target):
    write_head(tmp_path / "head", "eagle", target)
    torch.manual_seed(0)
    out = target.generate(torch.tensor([[3, 14, 15]]), max_new_tokens=8, do_sample=True, strategy="fspad",
                          cost_curve=CHEAP_CURVE, assistant_model=str(tmp_path / "head"))
    assert out.shape == (1, 11)


@pytest.mark.parametrize("damage,message", [
    ({"drop": ["layers.0.mlp.down_proj.weight"]}, r"missing: layers\.0\.mlp\.down_proj\.weight"),
    ({"extra": {"layers.0.input_layernorm.weight": torch.ones(H)}}, r"unexpected: layers\.0\.input_layernorm\.weight"),
])
def test_incomplete_or_foreign_tensors_are_errors(tmp_path, target, damage, message):
    write_head(tmp_path / "head", "eagle", target, **damage)
    with pytest.raises(ValueError, match=message):
        load_draft(tmp_path / "head")


def test_a_head_for_another_target_is_refused(tmp_path, target):
    write_head(tmp_path / "head", "eagle", tiny_target("llama", seed=5))
    with pytest.raises(ValueError, match="trained for another target"):
        load_draft(tmp_path / "head", target=target)


def test_an_eagle3_head_missing_its_lm_head_is_an_error(tmp_path):
    from safetensors.torch import load_file

    target = tiny_target("llama", num_hidden_layers=6)
    write_eagle3(tmp_path / "head", target, "eagle")
    weights = load_file(tmp_path / "head" / "model.safetensors")
    del weights["lm_head.weight"]
    save_file(weights, tmp_path / "head" / "model.safetensors")
    with pytest.raises(ValueError, match=r"eagle3 head .* \(missing: lm_head\.weight\)"):
        load_draft(tmp_path / "head")


def test_a_pickle_that_runs_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (tmp_path / "head").mkdir()
    (tmp_path / "head" / "config.json").write_text(json.dumps({"model_type": "llama", "num_attention_heads": NH}))
    torch.save({"fc.weight": Payload()}, tmp_path / "head" / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"weights_only=True"):
        load_draft(tmp_path / "head")
    assert not marker.exists()


def test_a_hub_repo_id_from_the_offline_cache(tmp_path, target, monkeypatch):
    import huggingface_hub

    cache = tmp_path / "hub"
    snapshot = cache / "models--someone--eagle-tiny" / "snapshots" / ("a" * 40)
    write_head(snapshot, "eagle", target)
    (cache / "models--someone--eagle-tiny" / "refs").mkdir(parents=True)
    (cache / "models--someone--eagle-tiny" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    head = load_draft("someone/eagle-tiny", target=target, cache_dir=str(cache))
    assert head.config.source_layout == "eagle" and head.config.source == "someone/eagle-tiny"


# ---------------------------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("variant,layout", [("eagle2", "eagle"), ("fspad", "fspad-reference")])
def test_our_heads_round_trip_through_other_layouts(tmp_path, target, variant, layout):
    from hf_specdec.training.export import convert

    torch.manual_seed(3)
    ours = FSPADDraftModel.from_target(target, variant=variant)
    ours.save_pretrained(tmp_path / "ours")
    tokens, features = torch.randint(1, V, (7,)), torch.randn(7, H)
    with torch.no_grad():
        want = head_logits(ours, tokens, features)
        convert(str(tmp_path / "ours"), tmp_path / "converted")  # ours -> ours: identical drafts
        again = load_draft(tmp_path / "converted", target=target)
        assert torch.equal(head_logits(again, tokens, features), want)
        from transformers import AutoModel

        assert type(AutoModel.from_pretrained(tmp_path / "converted")) is FSPADDraftModel
        assert str(tmp_path / "ours") in (tmp_path / "converted" / "README.md").read_text()  # the card names the source
        save_layout(ours, tmp_path / layout, layout)  # ours -> theirs -> back
        back = load_draft(tmp_path / layout, target=target)
        assert back.config.source_layout == layout
        torch.testing.assert_close(head_logits(back, tokens, features), want, rtol=1e-5, atol=1e-5)


def test_fspad_heads_cannot_be_written_as_eagle(tmp_path, target):
    from hf_specdec.training.export import convert

    head = FSPADDraftModel.from_target(target, variant="fspad")
    with pytest.raises(ValueError, match="no feature-sampling block.*fspad-reference"):
        save_layout(head, tmp_path / "x", "eagle")
    head.save_pretrained(tmp_path / "ours")
    with pytest.raises(ValueError, match="--to eagle writes the target's embedding into the head: pass --target"):
        convert(str(tmp_path / "ours"), tmp_path / "y", to="eagle")


# ---------------------------------------------------------------------------------------------- EAGLE-3
def attention(x, w, prefix, causal_len):
    q = rope(linear(x, w[f"{prefix}.q_proj.weight"]).view(causal_len, NH, D))
    k = rope(linear(x, w[f"{prefix}.k_proj.weight"]).view(causal_len, NKV, D))
    v = linear(x, w[f"{prefix}.v_proj.weight"]).view(causal_len, NKV, D)
    k, v = k.repeat_interleave(NH // NKV, 1), v.repeat_interleave(NH // NKV, 1)
    scores = torch.einsum("qhd,khd->hqk", q, k) / D**0.5
    scores = scores.masked_fill(~torch.ones(causal_len, causal_len, dtype=torch.bool).tril(), float("-inf"))
    return linear(torch.einsum("hqk,khd->qhd", scores.softmax(-1), v).reshape(causal_len, NH * D), w[f"{prefix}.o_proj.weight"])


def mlp(x, w, prefix):
    return linear(torch.nn.functional.silu(linear(x, w[f"{prefix}.gate_proj.weight"])) * linear(x, w[f"{prefix}.up_proj.weight"]),
                  w[f"{prefix}.down_proj.weight"])


def reference_eagle3_logits(w, first, embedding, tokens, fused, norm_before_residual=False, extra_layers=0):
    """EAGLE-3: h = fc(fused); attention over [input_layernorm(e) ; hidden_norm(h)] (2H); + residual (h, or
    hidden_norm(h)); + MLP(post_attention_layernorm); plain decoder layers; logits = lm_head(norm(out))."""
    T = len(tokens)
    e, h = embedding[tokens], linear(fused, w["fc.weight"])
    nh = rms(h, w[f"{first}.hidden_norm.weight"])
    x = torch.cat([rms(e, w[f"{first}.input_layernorm.weight"]), nh], -1)
    out = (nh if norm_before_residual else h) + attention(x, w, f"{first}.self_attn", T)
    out = out + mlp(rms(out, w[f"{first}.post_attention_layernorm.weight"]), w, f"{first}.mlp")
    for i in range(1, 1 + extra_layers):
        out = out + attention(rms(out, w[f"layers.{i}.input_layernorm.weight"]), w, f"layers.{i}.self_attn", T)
        out = out + mlp(rms(out, w[f"layers.{i}.post_attention_layernorm.weight"]), w, f"layers.{i}.mlp")
    return linear(rms(out, w["norm.weight"]), w["lm_head.weight"])


def write_eagle3(folder, target, flavour="eagle", draft_ids=None, layers=None, norm_before_residual=False,
                 extra_layers=0, seed=0):
    """An EAGLE-3 checkpoint: the EAGLE repository's (`midlayer.*`, LlamaConfig-style config) or speculators'
    (`layers.0.*` + plain `layers.1..`, a nested transformer_layer_config)."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=0.08):
        return torch.randn(*shape, generator=g) * scale

    vocab = target.get_input_embeddings().weight.shape[0]
    draft_ids = torch.arange(vocab) if draft_ids is None else draft_ids
    first = "midlayer" if flavour == "eagle" else "layers.0"
    w = {"fc.weight": rand(H, 3 * H), "norm.weight": 1 + rand(H), "lm_head.weight": rand(len(draft_ids), H, scale=0.3),
         f"{first}.input_layernorm.weight": 1 + rand(H), f"{first}.hidden_norm.weight": 1 + rand(H),
         f"{first}.post_attention_layernorm.weight": 1 + rand(H),
         f"{first}.self_attn.q_proj.weight": rand(NH * D, 2 * H), f"{first}.self_attn.k_proj.weight": rand(NKV * D, 2 * H),
         f"{first}.self_attn.v_proj.weight": rand(NKV * D, 2 * H), f"{first}.self_attn.o_proj.weight": rand(H, NH * D),
         f"{first}.mlp.gate_proj.weight": rand(I, H), f"{first}.mlp.up_proj.weight": rand(I, H),
         f"{first}.mlp.down_proj.weight": rand(H, I)}
    for i in range(1, 1 + extra_layers):
        w.update({f"layers.{i}.input_layernorm.weight": 1 + rand(H), f"layers.{i}.post_attention_layernorm.weight": 1 + rand(H),
                  f"layers.{i}.self_attn.q_proj.weight": rand(NH * D, H), f"layers.{i}.self_attn.k_proj.weight": rand(NKV * D, H),
                  f"layers.{i}.self_attn.v_proj.weight": rand(NKV * D, H), f"layers.{i}.self_attn.o_proj.weight": rand(H, NH * D),
                  f"layers.{i}.mlp.gate_proj.weight": rand(I, H), f"layers.{i}.mlp.up_proj.weight": rand(I, H),
                  f"layers.{i}.mlp.down_proj.weight": rand(H, I)})
    if len(draft_ids) != vocab:
        w["d2t"] = draft_ids - torch.arange(len(draft_ids))
        t2d = torch.zeros(vocab, dtype=torch.bool)
        t2d[draft_ids] = True
        w["t2d"] = t2d
    shape = {"hidden_size": H, "intermediate_size": I, "num_attention_heads": NH, "num_key_value_heads": NKV,
             "rms_norm_eps": 1e-6, "vocab_size": vocab, "max_position_embeddings": 2048}
    if flavour == "eagle":
        config = {"architectures": ["LlamaForCausalLMEagle3"], "model_type": "llama", **shape,
                  "draft_vocab_size": len(draft_ids), "num_hidden_layers": 1}
    else:
        config = {"speculators_model_type": "eagle3", "architectures": ["Eagle3Speculator"],
                  "transformer_layer_config": {"model_type": "llama", **shape}, "draft_vocab_size": len(draft_ids),
                  "norm_before_residual": norm_before_residual, "target_hidden_size": H,
                  "eagle_aux_hidden_state_layer_ids": layers,
                  "speculators_config": {"algorithm": "eagle3", "verifier": {"name_or_path": "tiny"}}}
        w["embed_tokens.weight"] = target.get_input_embeddings().weight.detach().clone()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    save_file(w, folder / "model.safetensors")
    return w, first


@pytest.fixture(scope="module")
def deep_target():
    return tiny_target("llama", num_hidden_layers=6)  # EAGLE-3's default layers (2, 3, 3) exist


@pytest.mark.parametrize("flavour,norm_before_residual,extra_layers,layers", [
    ("eagle", False, 0, None), ("speculators", True, 1, [1, 2, 4]), ("speculators", False, 0, [0, 3, 5]),
])
def test_eagle3_layouts_draft_as_their_description(tmp_path, deep_target, flavour, norm_before_residual,
                                                   extra_layers, layers):
    from hf_specdec import Eagle3DraftModel
    from hf_specdec.strategies.engine import target_forward

    draft_ids = torch.tensor(sorted(torch.randperm(V, generator=torch.Generator().manual_seed(3))[:48].tolist()))
    w, first = write_eagle3(tmp_path / "head", deep_target, flavour, draft_ids, layers, norm_before_residual, extra_layers)
    head = load_draft(tmp_path / "head", target=deep_target)
    assert isinstance(head, Eagle3DraftModel) and head.config.source_layout == (
        "eagle3" if flavour == "eagle" else "speculators-eagle3")
    assert head.feature_layers == tuple(layers or (2, 3, 3))
    assert torch.equal(head.draft_to_target, draft_ids)
    tokens = torch.randint(1, V, (1, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        # the engine's capture of the fused features = the target's hidden states entering those layers
        from transformers import DynamicCache

        fused, _ = target_forward(deep_target, tokens, DynamicCache(config=deep_target.config),
                                  torch.arange(10)[None], feature_layers=head.feature_layers)
        states = deep_target(tokens, output_hidden_states=True).hidden_states
        torch.testing.assert_close(fused[0], torch.cat([states[i][0] for i in head.feature_layers], -1))
        out = head(input_ids=tokens[:, 1:], features=fused[:, :-1])
        want = reference_eagle3_logits(w, first, deep_target.get_input_embeddings().weight, tokens[0, 1:],
                                       fused[0, :-1], norm_before_residual, extra_layers)
        torch.testing.assert_close(head.compute_logits(out.hidden_states)[0], want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("flavour,extra_layers", [("eagle", 0), ("speculators", 1)])
def test_eagle3_greedy_is_identical_to_stock(tmp_path, deep_target, flavour, extra_layers):
    """Also with a decoder layer after the first (some speculators heads), whose attention updates the drafter's
    cache through transformers' own LlamaAttention."""
    draft_ids = torch.arange(0, V, 2)
    write_eagle3(tmp_path / "head", deep_target, flavour, draft_ids, [1, 2, 4], False, extra_layers)
    for seed, n in ((0, 4), (1, 9), (2, 17)):
        ids = torch.randint(1, V, (1, n), generator=torch.Generator().manual_seed(seed))
        stock = deep_target.generate(ids, max_new_tokens=20, do_sample=False)
        for shape in ({"cost_curve": CHEAP_CURVE}, {"tree_top_k": 3, "tree_depth": 4, "tree_total_tokens": 12}):
            out = deep_target.generate(ids, max_new_tokens=20, do_sample=False, strategy="eagle",
                                       assistant_model=str(tmp_path / "head"), **shape)
            assert torch.equal(out, stock)


def test_eagle3_sampling_distribution_is_the_targets(tmp_path):
    from conftest import chi_square_pvalue, exact_sequence_probs

    vocab, new = 6, 3
    target = tiny_target(vocab_size=vocab, seed=21, initializer_range=0.5, num_hidden_layers=4)
    target.generation_config.eos_token_id = None
    write_eagle3(tmp_path / "head", target, "eagle", torch.tensor([0, 2, 3, 5]))  # a 4-token draft vocabulary
    head = load_draft(tmp_path / "head", target=target)
    ids, draws, gen_kwargs = torch.tensor([[1, 2, 3]]), 1500, {"temperature": 0.9}
    torch.manual_seed(0)
    counts = {}
    for _ in range(draws):
        out = target.generate(ids, assistant_model=head, strategy="fspad", do_sample=True, max_new_tokens=new,
                              tree_top_k=3, tree_depth=2, tree_total_tokens=6, **gen_kwargs)
        key = tuple(out[0, 3:].tolist())
        counts[key] = counts.get(key, 0) + 1
    assert chi_square_pvalue(counts, exact_sequence_probs(target, ids, gen_kwargs, vocab, new), draws) > 1e-3


def test_eagle3_fused_layers_beyond_the_target_are_a_pairing_error(tmp_path, deep_target):
    write_eagle3(tmp_path / "head", deep_target, "speculators", layers=[1, 2, 9])
    with pytest.raises(ValueError, match=r"fused layers \[1, 2, 9\]: the target has 6 layers"):
        load_draft(tmp_path / "head", target=deep_target)
    wider = tiny_target("llama", num_hidden_layers=6, hidden_size=32, intermediate_size=64)
    write_eagle3(tmp_path / "head2", deep_target, "eagle")
    with pytest.raises(ValueError, match=r"hidden size: head 64, target 32"):
        load_draft(tmp_path / "head2", target=wider)


def test_an_eagle3_head_saved_by_us_loads_back_identically(tmp_path, deep_target):
    from transformers import AutoModel as Auto

    write_eagle3(tmp_path / "eagle", deep_target, "speculators", layers=[1, 2, 4], extra_layers=1)
    head = load_draft(tmp_path / "eagle", target=deep_target)
    head.save_pretrained(tmp_path / "ours")
    for again in (load_draft(tmp_path / "ours", target=deep_target), Auto.from_pretrained(tmp_path / "ours")):
        again.attach_target(deep_target)
        assert type(again) is type(head) and again.feature_layers == head.feature_layers
        tokens, features = torch.randint(1, V, (1, 6)), torch.randn(1, 6, 3 * H)
        with torch.no_grad():
            a = head.compute_logits(head(input_ids=tokens, features=features).hidden_states)
            b = again.compute_logits(again(input_ids=tokens, features=features).hidden_states)
        assert torch.equal(a, b)


def test_a_head_that_is_not_there_is_a_clear_error(tmp_path, target, monkeypatch):
    import huggingface_hub

    with pytest.raises(FileNotFoundError, match="No draft head folder at"):
        target.generate(torch.tensor([[1, 2, 3]]), assistant_model=str(tmp_path / "missing"), strategy="fspad")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(OSError, match="Could not get the draft head 'someone/absent'"):
        load_draft("someone/absent", cache_dir=str(tmp_path / "empty-cache"))
