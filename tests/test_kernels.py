"""The Triton kernels against their torch references, run in Triton's interpreter on CPU (conftest sets
TRITON_INTERPRET=1 when there is no GPU), and the decoding loop with the kernels forced on."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import DynamicCache

pytest.importorskip("triton")
import hf_specdec_kernels as K  # noqa: E402

from hf_specdec import TREE_ATTENTION, FSPADDraftModel, kernel_mode  # noqa: E402
from hf_specdec.accel import get_kernel_mode, kernels_serve, set_kernel_mode  # noqa: E402
from hf_specdec.tree import DraftTree, compact_cache, pack_tree_mask, tree_attention_mask  # noqa: E402
from hf_specdec.tree.attention import tree_attention_forward, tree_attention_reference  # noqa: E402
from hf_specdec.tree.cache import compact_cache_reference  # noqa: E402
from hf_specdec.tree.masks import unpack_tree_mask  # noqa: E402
from hf_specdec.verification import greedy_tree_walk, verify_greedy  # noqa: E402

from conftest import oracle_head, tiny_target  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOLERANCE = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}


def random_parents(kind: str, n: int, gen: torch.Generator) -> list[int]:
    """Parent arrays (parents before children) of the tree shapes the kernels must handle."""
    if kind == "chain":
        return [-1] + list(range(n - 1))
    if kind == "star":
        return [-1] + [0] * (n - 1)
    if kind == "deep":  # mostly a chain, with a few side branches
        return [-1] + [i - 1 if torch.rand(1, generator=gen) < 0.8 else int(torch.randint(0, i, (1,), generator=gen))
                       for i in range(1, n)]
    if kind == "wide":  # parents among the first few nodes
        return [-1] + [int(torch.randint(0, min(i, 4), (1,), generator=gen)) for i in range(1, n)]
    return [-1] + [int(torch.randint(0, i, (1,), generator=gen)) for i in range(1, n)]  # "random"


def random_tree(kind: str, n: int, batch: int = 1, seed: int = 0) -> DraftTree:
    """Random trees whose siblings carry distinct tokens (as top-k children do)."""
    gen = torch.Generator().manual_seed(seed)
    parents = torch.tensor([random_parents(kind, n, gen) for _ in range(batch)])
    tokens = torch.randperm(1000, generator=gen)[: batch * n].reshape(batch, n) % 50
    # distinct sibling tokens: a node's token is 50 * (its rank among its siblings) + something below 50
    rank = torch.zeros_like(parents)
    for b in range(batch):
        seen = {}
        for i in range(n):
            p = int(parents[b, i])
            rank[b, i] = seen.get(p, 0)
            seen[p] = rank[b, i] + 1
    return DraftTree.from_parents(tokens + 50 * rank, parents)


TREES = [("chain", 1), ("chain", 9), ("star", 17), ("deep", 40), ("wide", 33), ("random", 64), ("random", 70)]


# ------------------------------------------------------------------------------------------- tree attention
@pytest.mark.parametrize("kind,n", TREES)
def test_packed_mask_is_the_dense_mask(kind, n):
    tree = random_tree(kind, n, batch=2, seed=n)
    packed = pack_tree_mask(tree.ancestors, prefix_len=5)
    assert packed.dtype == torch.int32 and packed.shape == (2, 1, n, 1 + -(-n // 32))
    dense = tree_attention_mask(tree.ancestors, 5, torch.float32)
    assert torch.equal(unpack_tree_mask(packed, 5 + n), dense == 0)


def attention_case(n_queries, n_slots, prefix, heads, kv_heads, head_dim, dtype, seed, batch=1, kind="random"):
    gen = torch.Generator().manual_seed(seed)
    tree = random_tree(kind, n_slots, batch, seed)
    ancestors = tree.ancestors[:, n_slots - n_queries:]  # the last n_queries slots query (tree growth)
    kv = prefix + n_slots
    q = torch.randn(batch, n_queries, heads, head_dim, generator=gen).transpose(1, 2)  # strided like transformers'
    k = torch.randn(batch, kv_heads, kv, head_dim, generator=gen)
    v = torch.randn(batch, kv_heads, kv, head_dim, generator=gen)
    to = dict(device=DEVICE, dtype=dtype)
    return q.to(**to), k.to(**to), v.to(**to), pack_tree_mask(ancestors, prefix).to(DEVICE)


@pytest.mark.parametrize("kind,n", TREES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_tree_attention_kernel_matches_reference(kind, n, dtype):
    q, k, v, mask = attention_case(n, n, prefix=3 + n, heads=4, kv_heads=2, head_dim=32, dtype=dtype, seed=n, kind=kind)
    ref = tree_attention_reference(q.float(), k.float(), v.float(), mask, scaling=0.3)
    for splits in (1, 2):
        out = K.tree_attention(q, k, v, mask, scaling=0.3, block_n=16, num_splits=splits)
        assert out.shape == ref.shape and out.dtype == dtype
        torch.testing.assert_close(out.float(), ref, atol=TOLERANCE[dtype], rtol=TOLERANCE[dtype])


@pytest.mark.parametrize(
    "n_queries,n_slots,prefix,heads,kv_heads,head_dim,batch",
    [
        (1, 1, 0, 2, 2, 16, 1),      # one node, no prefix
        (1, 1, 7, 8, 1, 16, 1),      # MQA
        (3, 12, 50, 6, 2, 24, 2),    # growth: the new slots query all slots; head dim not a power of two
        (17, 17, 64, 4, 4, 64, 1),   # prefix a whole number of key tiles
        (40, 40, 129, 12, 3, 8, 1),  # GQA 4; more rows than one block
        (5, 33, 1, 2, 1, 128, 2),    # slots across two mask words
    ],
)
def test_tree_attention_kernel_odd_shapes(n_queries, n_slots, prefix, heads, kv_heads, head_dim, batch):
    q, k, v, mask = attention_case(n_queries, n_slots, prefix, heads, kv_heads, head_dim, torch.float32, seed=prefix,
                                   batch=batch)
    torch.testing.assert_close(K.tree_attention(q, k, v, mask), tree_attention_reference(q, k, v, mask),
                               atol=2e-5, rtol=2e-5)
    # Tile sizes and key splits (flash-decoding; some splits see no key of some rows) leave the result alone.
    for block_m, block_n, splits in [(16, 16, 1), (32, 64, 1), (16, 16, 2), (16, 16, 5), (64, 32, 3)]:
        out = K.tree_attention(q, k, v, mask, block_m=block_m, block_n=block_n, num_splits=splits)
        torch.testing.assert_close(out, tree_attention_reference(q, k, v, mask), atol=2e-5, rtol=2e-5)


def test_tree_attention_reference_is_sdpa_with_the_dense_mask():
    q, k, v, mask = attention_case(9, 9, 11, 4, 2, 16, torch.float32, seed=1)
    dense = tree_attention_mask(random_tree("random", 9, 1, 1).ancestors, 11, torch.float32)
    ref = torch.nn.functional.scaled_dot_product_attention(
        q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), attn_mask=dense).transpose(1, 2)
    torch.testing.assert_close(tree_attention_reference(q, k, v, mask), ref)


def test_masked_keys_do_not_leak():
    """Changing a key/value a query must not see changes nothing for it."""
    q, k, v, mask = attention_case(8, 8, 4, 2, 1, 16, torch.float32, seed=3, kind="star")
    out = K.tree_attention(q, k, v, mask)
    k2, v2 = k.clone(), v.clone()
    k2[:, :, 4 + 5], v2[:, :, 4 + 5] = 100.0, -100.0  # node 5 of a star: only node 5 sees it
    out2 = K.tree_attention(q, k2, v2, mask)
    others = [i for i in range(8) if i != 5]
    torch.testing.assert_close(out2[:, others], out[:, others])
    assert not torch.allclose(out2[:, 5], out[:, 5])


def test_attention_function_dispatch_and_errors():
    q, k, v, mask = attention_case(4, 4, 6, 2, 1, 16, torch.float32, seed=2)
    module = torch.nn.Module()
    module.is_causal, module.num_key_value_groups = True, 2
    with kernel_mode("torch"):
        ref, _ = tree_attention_forward(module, q, k, v, mask)
    with kernel_mode("triton"):
        out, _ = tree_attention_forward(module, q, k, v, mask)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=2e-5)
    with pytest.raises(NotImplementedError, match="softcap"):
        tree_attention_forward(module, q, k, v, mask, softcap=30.0)
    dense = tree_attention_mask(random_tree("random", 4, 1, 2).ancestors, 6, torch.float32)  # sdpa serves it
    plain, _ = tree_attention_forward(module, q, k, v, dense)
    torch.testing.assert_close(plain, ref, atol=2e-5, rtol=2e-5)


# ---------------------------------------------------------------------------------- greedy tree verification
def target_choices(tree: DraftTree, follow: float, seed: int) -> torch.Tensor:
    """Target argmaxes that follow a random child with probability `follow` at every node (else a token no
    child carries): accepted paths of every length."""
    gen = torch.Generator().manual_seed(seed)
    B, N = tree.tokens.shape
    choice = torch.full((B, N), 10_000)
    for b in range(B):
        for node in range(N):
            children = (tree.parents[b] == node).nonzero().flatten()
            if len(children) and torch.rand(1, generator=gen) < follow:
                choice[b, node] = tree.tokens[b, children[torch.randint(len(children), (1,), generator=gen)]]
    return choice


@pytest.mark.parametrize("kind,n", TREES)
@pytest.mark.parametrize("follow", [0.0, 0.7, 1.0])
def test_greedy_tree_walk_kernel_matches_reference(kind, n, follow):
    tree = random_tree(kind, n, batch=3, seed=n + 1)
    target_next = target_choices(tree, follow, seed=n)
    path, length, next_token = K.greedy_tree_walk(tree.tokens.to(DEVICE), tree.parents.to(DEVICE), target_next.to(DEVICE))
    ref_path, ref_length, ref_next = greedy_tree_walk(tree, target_next)
    assert torch.equal(path.cpu(), ref_path) and torch.equal(length.cpu(), ref_length)
    assert torch.equal(next_token.cpu(), ref_next)
    if follow == 0.0:
        assert length.tolist() == [1, 1, 1]
    if follow == 1.0:  # every path runs to a leaf
        leaf = ref_path.gather(1, (ref_length - 1)[:, None])
        assert not (tree.parents[:, None, :] == leaf[..., None]).any()


def test_verify_greedy_same_verdict_with_kernels():
    tree = random_tree("deep", 30, batch=1, seed=4)
    scores = torch.nn.functional.one_hot(target_choices(tree, 0.8, seed=4) % 2000, 2000).float()
    with kernel_mode("torch"):
        ref = verify_greedy(tree, scores)
    with kernel_mode("triton"):
        out = verify_greedy(tree, scores)
    assert torch.equal(out.path, ref.path) and torch.equal(out.next_tokens, ref.next_tokens)
    assert ref.path.shape[1] > 1


# ------------------------------------------------------------------------------------------- KV compaction
def filled_cache(layers, batch, heads, length, head_dim, dtype, seed, crop_to=None):
    gen = torch.Generator().manual_seed(seed)
    cache = DynamicCache()
    for layer in range(layers):
        k = torch.randn(batch, heads, length, head_dim, generator=gen).to(device=DEVICE, dtype=dtype)
        cache.update(k, -k + layer, layer)
    if crop_to is not None:  # layers become strided views, as after an earlier compaction
        cache.crop(crop_to - length)
    return cache


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("prefix,path", [(5, [0]), (5, [0, 1, 2]), (9, [0, 2, 3, 7]), (1, [0, 4, 9, 13, 14, 20])])
@pytest.mark.parametrize("crop", [False, True])
def test_compaction_matches_index_select(dtype, prefix, path, crop):
    n_tree = 21
    length = prefix + n_tree
    make = lambda: filled_cache(3, 2, 2, length + 4 * crop, 24, dtype, seed=prefix, crop_to=length if crop else None)  # noqa: E731
    path = torch.tensor(path, device=DEVICE)
    expected = make()
    compact_cache_reference(expected, prefix, path)
    for mode in ("torch", "triton"):
        cache = make()
        with kernel_mode(mode):
            compact_cache(cache, prefix, path)
        assert cache.get_seq_length() == prefix + len(path)
        for got, want in zip(cache.layers, expected.layers):
            assert torch.equal(got.keys, want.keys) and torch.equal(got.values, want.values), mode


def test_compaction_kernel_moves_every_tensor_in_one_launch():
    tensors = [torch.arange(2 * 3 * 10 * 4, dtype=torch.float16).reshape(2, 3, 10, 4) + 1000 * i for i in range(5)]
    originals = [t.clone() for t in tensors]
    K.compact_kv(tensors, 4, torch.tensor([0, 3, 5]))
    for t, o in zip(tensors, originals):
        assert torch.equal(t[:, :, :4], o[:, :, :4])
        assert torch.equal(t[:, :, 4:7], o[:, :, [4, 7, 9]])
    with pytest.raises(ValueError, match="one shape"):
        K.compact_kv([tensors[0], tensors[1][:, :, :5]], 4, torch.tensor([0]))


# ------------------------------------------------------------------------------------------- decoding loop
def count_kernel_calls(monkeypatch):
    calls = {"tree_attention": 0, "greedy_tree_walk": 0, "compact_kv": 0}
    for name in calls:
        original = getattr(K, name)

        def counted(*args, _name=name, _original=original, **kwargs):
            calls[_name] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(K, name, counted)
    return calls


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_fspad_greedy_with_kernels_forced_equals_stock_greedy(family, monkeypatch):
    target = tiny_target(family, seed=7)
    calls = count_kernel_calls(monkeypatch)
    gen = torch.Generator().manual_seed(1)
    for i in range(2):
        ids = torch.randint(1, 128, (1, 5 + 3 * i), generator=gen)
        ref = target.generate(ids, max_new_tokens=20, do_sample=False)
        heads = [FSPADDraftModel.from_target(target), oracle_head(target, ref, accuracy=0.8, seed=i)]
        for head in heads:
            with kernel_mode("triton"):
                out = target.generate(ids, assistant_model=head, strategy="fspad", max_new_tokens=20,
                                      tree_top_k=3, tree_depth=4, tree_total_tokens=12, return_dict_in_generate=True)
            assert torch.equal(out.sequences, ref)
            assert target.config._attn_implementation == "sdpa" and head.config._attn_implementation == "sdpa"
    assert max(out.spec_stats.accepted_lengths) > 1
    assert all(count > 0 for count in calls.values()), calls  # the kernels served, not the torch reference


def test_spechub_runs_on_the_kernels(monkeypatch, llama):
    calls = count_kernel_calls(monkeypatch)
    ids = torch.tensor([[5, 9, 3]])
    ref = llama.generate(ids, max_new_tokens=8, do_sample=False)
    # a copy of the target as the draft: its drafts are accepted, so accepted paths move cache entries (a cycle
    # that accepts nothing moves none)
    draft = tiny_target("llama")
    with kernel_mode("triton"):  # top_k=1 makes sampling greedy
        out = llama.generate(ids, assistant_model=draft, strategy="spechub", do_sample=True, top_k=1, max_new_tokens=8)
    assert torch.equal(out, ref)
    assert calls["tree_attention"] > 0 and calls["compact_kv"] > 0


def test_registered_implementation_serves_ordinary_generate(llama):
    ids = torch.tensor([[3, 1, 4, 1, 5], [0, 0, 9, 2, 6]])
    mask = (ids != 0).long()
    ref = llama.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False)
    llama.set_attn_implementation(TREE_ATTENTION)
    try:
        out = llama.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False)
        with kernel_mode("torch"):  # the model keeps tree attention; packed masks, torch reference
            spec = llama.generate(ids[:1], assistant_model=FSPADDraftModel.from_target(llama), strategy="fspad",
                                  max_new_tokens=6)
    finally:
        llama.set_attn_implementation("sdpa")
    assert torch.equal(out, ref)
    assert torch.equal(spec, ref[:1])


# ------------------------------------------------------------------------------------------------- switches
def test_kernel_modes(monkeypatch):
    assert get_kernel_mode() == "auto"
    assert not kernels_serve(torch.device("cpu"))  # auto: CUDA only
    with kernel_mode("torch"):
        assert not kernels_serve(torch.device("cuda"))
    with pytest.raises(ValueError, match="Unknown kernel mode 'fast'"):
        set_kernel_mode("fast")
    monkeypatch.setenv("HF_SPECDEC_KERNELS", "triton")
    assert get_kernel_mode() == "triton"
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        kernels_serve(torch.device("cpu"))
    monkeypatch.setenv("HF_SPECDEC_KERNELS", "turbo")
    with pytest.raises(ValueError, match="HF_SPECDEC_KERNELS"):
        get_kernel_mode()


def test_kernels_folder_does_not_shadow_hugging_face_kernels():
    root = Path(__file__).resolve().parents[1]
    assert not (root / "kernels" / "__init__.py").exists()  # a regular `kernels` package here would shadow HF's
    assert Path(K.__file__).parent == root / "kernels" / "hf_specdec_kernels" or "site-packages" in K.__file__


def test_kernels_compile_for_hopper(tmp_path):
    """What the interpreter cannot check: every kernel compiles for sm_90 (triton ships ptxas; no GPU needed)."""
    pytest.importorskip("triton.backends.nvidia")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)
    result = subprocess.run([sys.executable, "-m", "hf_specdec_kernels.aot", "--arch", "90"], env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count(": ok") == 9, result.stdout


def test_kernel_benchmark_smoke(tmp_path, capsys):
    """bench-kernels end to end at toy sizes (on CPU: the interpreter; the numbers mean nothing here)."""
    from hf_specdec.bench import kernels as bench

    out = tmp_path / "kernels.json"
    assert bench.main(["--device", DEVICE, "--dtype", "float32", "--tree-sizes", "16", "--prefixes", "40",
                       "--head-dims", "16", "--layers", "2", "--vocab", "300", "--reps", "3", "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    assert results["kernels"] is True
    assert results["tree_attention"][0]["max_abs_diff"] < 1e-4
    assert results["greedy_verify"][0]["same_verdict"] and results["compaction"][0]["identical"]
    assert "KV-cache compaction, 2 layers" in capsys.readouterr().out
