"""The training pipeline end to end on tiny models: data, self-distillation, feature shards, training, resume."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_target, train_killed_then_resumed

from hf_specdec import FSPADDraftModel, fspad_generate
from hf_specdec.training import data as data_mod
from hf_specdec.training import train as train_mod
from hf_specdec.training.features import extract_features, is_validation, last_hidden_states, load_samples, read_manifest


def random_samples(n: int, vocab: int = 128, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    samples = []
    for i in range(n):
        length = int(torch.randint(12, 40, (1,), generator=g))
        ids = torch.randint(1, vocab, (length,), generator=g).tolist()
        prompt = length // 3
        samples.append({"id": f"s{i}", "input_ids": ids, "loss_mask": [0] * prompt + [1] * (length - prompt)})
    return samples


# ------------------------------------------------------------------------------------------------ data
def test_read_conversations_both_forms(tmp_path):
    path = tmp_path / "p.jsonl"
    rows = [
        {"id": 7, "prompt": "Hi", "reference": "Hello"},
        {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]},
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "r"}]},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    convs = data_mod.read_conversations(path)
    assert [c.id for c in convs] == ["7", "1", "2"]
    assert convs[0].messages == [{"role": "user", "content": "Hi"}] and convs[0].reference == "Hello"
    assert len(convs[1].messages) == 3 and convs[1].reference is None
    assert convs[2].messages == [{"role": "user", "content": "q"}] and convs[2].reference == "r"


def test_held_out_prompts_are_left_out_of_every_data_builder(tmp_path, monkeypatch, caplog):
    """Rows holding a tuning prompt (training/held_out_pool.json names them by the sha1 of their text) never reach
    training: not as a first turn, not inside a later exchange, not as translation source text."""
    from hf_specdec.training import held_out, prompts

    kept_for_tuning = "What is the capital of the held-out kingdom?"
    monkeypatch.setattr(held_out, "held_out_digests", lambda: frozenset({held_out.prompt_digest(kept_for_tuning)}))
    path = tmp_path / "pool.jsonl"
    rows = [
        {"id": 1, "source": "s", "prompt": "Keep me."},
        {"id": 2, "source": "s", "prompt": kept_for_tuning},
        {"id": 3, "messages": [{"role": "user", "content": kept_for_tuning}, {"role": "assistant", "content": "x"},
                               {"role": "user", "content": "And then?"}]},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert [c.id for c in data_mod.read_conversations(path)] == ["1"]
    assert "left out 2 rows" in caplog.text
    assert [r["id"] for r in prompts._read_pool(path)] == [1, 3]  # translation reads prompts (row 3 has none)
    # the real file: 15 tuning and 45 calibration prompts, distinct
    rows = json.loads(held_out.HELD_OUT_FILE.read_text())["rows"]
    assert sorted(r["split"] for r in rows).count("tune") == 15 and len(rows) == 60
    assert len({r["sha1"] for r in rows}) == 60


def test_held_out_rows_refuse_a_file_that_is_not_the_pool(tmp_path):
    from hf_specdec.training.held_out import held_out_rows

    path = tmp_path / "other.jsonl"
    path.write_text(json.dumps({"id": 1, "source": "s", "prompt": "unrelated"}) + "\n")
    with pytest.raises(ValueError, match="holds 0 of the 15 held-out 'tune' prompts"):
        held_out_rows(path, "tune")
    with pytest.raises(ValueError, match="splits are 'tune' and 'calibration'"):
        held_out_rows(path, "test")


def test_read_conversations_rejects_rows_without_prompt(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"text": "no prompt"}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: a row needs a 'prompt' or a 'messages'"):
        data_mod.read_conversations(path)


@pytest.fixture(scope="module")
def smol_tokenizer():
    from transformers import AutoTokenizer

    from hf_specdec.default_model import default_target_path

    return AutoTokenizer.from_pretrained(default_target_path())


def test_reference_sample_masks_exactly_the_response(smol_tokenizer):
    conv = data_mod.Conversation("0", [{"role": "user", "content": "What is 2+2?"}], "It is 4.")
    s = data_mod.reference_sample(smol_tokenizer, conv)
    prompt = data_mod.prompt_ids(smol_tokenizer, conv.messages)
    assert s["input_ids"][: len(prompt)] == prompt
    response = [t for t, m in zip(s["input_ids"], s["loss_mask"]) if m]
    assert s["loss_mask"] == [0] * len(prompt) + [1] * len(response)
    assert smol_tokenizer.decode(response).startswith("It is 4.")
    assert data_mod.reference_sample(smol_tokenizer, data_mod.Conversation("1", conv.messages, None)) is None


def test_self_distill_is_greedy_and_resumes(smol_tokenizer, tmp_path):
    target = tiny_target("llama", vocab_size=len(smol_tokenizer))
    convs = [data_mod.Conversation(str(i), [{"role": "user", "content": "word " * (i + 1)}], None) for i in range(5)]
    out = tmp_path / "responses.jsonl"
    data_mod.self_distill(target, smol_tokenizer, convs[:2], out, batch_size=4, max_new_tokens=6)
    data_mod.self_distill(target, smol_tokenizer, convs, out, batch_size=4, max_new_tokens=6)
    rows = data_mod.read_samples(out)
    assert sorted(r["id"] for r in rows) == ["0", "1", "2", "3", "4"]  # nothing generated twice
    for r in rows:
        prompt = data_mod.prompt_ids(smol_tokenizer, convs[int(r["id"])].messages)
        alone = target.generate(torch.tensor([prompt]), max_new_tokens=6, do_sample=False)[0, len(prompt) :].tolist()
        assert r["input_ids"] == prompt + alone  # batched (left-padded) answers equal one-by-one greedy
        assert r["loss_mask"] == [0] * len(prompt) + [1] * len(alone)


def test_reference_samples_are_written_filtered_and_resume(smol_tokenizer, tmp_path):
    convs = [data_mod.Conversation("long", [{"role": "user", "content": "Count."}], "one two three four five six seven eight"),
             data_mod.Conversation("short", [{"role": "user", "content": "Yes?"}], "Yes"),
             data_mod.Conversation("none", [{"role": "user", "content": "Hi"}], None),
             data_mod.Conversation("wordy", [{"role": "user", "content": "word " * 60}], "a b c d e f g h i j")]
    out = tmp_path / "references.jsonl"
    data_mod.write_reference_samples(smol_tokenizer, convs[:1], out, max_prompt_tokens=40)
    data_mod.write_reference_samples(smol_tokenizer, convs, out, max_prompt_tokens=40)
    rows = data_mod.read_samples(out)
    # no row twice; too short an answer, no answer and too long a prompt are left out
    assert [r["id"] for r in rows] == ["long"]
    assert rows[0] == data_mod.reference_sample(smol_tokenizer, convs[0])


def test_distill_cli_writes_references_without_a_model(smol_tokenizer, tmp_path, monkeypatch):
    from hf_specdec.training import prepare

    pool = tmp_path / "pool.jsonl"
    rows = [{"id": i, "source": "s", "prompt": f"Question {i}?", "reference": "an answer of more than eight words here"}
            for i in range(4)]
    pool.write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setattr(prepare, "load_target_tokenizer", lambda name: smol_tokenizer)
    monkeypatch.setattr(prepare, "load_target", lambda *a: pytest.fail("--references must not load the model"))
    out = tmp_path / "refs.jsonl"
    assert prepare.distill_main(["--prompts", str(pool), "--references", "--skip-per-source", "1", "--per-source", "2",
                                 "--out", str(out)]) == 0
    assert [r["id"] for r in data_mod.read_samples(out)] == ["1", "2"]
    with pytest.raises(SystemExit):
        prepare.distill_main(["--prompts", str(pool), "--references", "--sample", "--out", str(out)])
    with pytest.raises(SystemExit):
        prepare.distill_main(["--prompts", str(pool), "--skip-per-source", "-1", "--out", str(out)])


# -------------------------------------------------------------------------------------------- features
def test_feature_shards_round_trip_and_resume(tmp_path):
    target = tiny_target("llama")
    samples = random_samples(10)
    extract_features(target, samples[:4], tmp_path, shard_samples=3)
    extract_features(target, samples, tmp_path, shard_samples=3)  # resumes: only the 6 missing
    manifest = read_manifest(tmp_path)
    assert [len(s["ids"]) for s in manifest["shards"]] == [3, 1, 3, 3]
    loaded = {s["id"]: s for s in load_samples(tmp_path)}
    assert sorted(loaded) == sorted(s["id"] for s in samples)
    for s in samples:
        got = loaded[s["id"]]
        assert got["input_ids"].tolist() == s["input_ids"]
        assert got["loss_mask"].tolist() == [bool(m) for m in s["loss_mask"]]
        want = last_hidden_states(target, torch.tensor([s["input_ids"]]))[0].to(torch.bfloat16)
        torch.testing.assert_close(got["features"], want, rtol=2e-2, atol=2e-2)  # batched with padding


def test_validation_split_is_stable():
    ids = [f"s{i}" for i in range(2000)]
    held = [i for i in ids if is_validation(i, 0.05)]
    assert 50 <= len(held) <= 150
    assert set(held) < {i for i in ids if is_validation(i, 0.10)}  # a larger fraction only adds samples


# -------------------------------------------------------------------------------------------- training
def _args(tmp_path, features, **overrides):
    args = train_mod.build_parser().parse_args(["--features", str(features), "--out", str(tmp_path / "run")])
    args.batch_tokens, args.lr, args.warmup_steps, args.log_every, args.val_fraction = 256, 1e-2, 2, 1, 0.2
    args.mixed_precision = "no"
    for k, v in overrides.items():
        setattr(args, k, v)
    return args


@pytest.fixture(scope="module")
def tiny_features(tmp_path_factory):
    target = tiny_target("llama")
    path = tmp_path_factory.mktemp("features")
    extract_features(target, random_samples(40), path)
    return target, path


@pytest.mark.parametrize("variant", ["fspad", "eagle2"])
def test_training_reduces_loss_and_round_trips(tiny_features, tmp_path, variant):
    target, features = tiny_features
    samples = load_samples(features)
    torch.manual_seed(0)
    before = train_mod.evaluate(FSPADDraftModel.from_target(target, variant=variant).float(), samples, 256)
    args = _args(tmp_path, features, variant=variant, max_steps=80, save_every=0)
    head_dir = train_mod.train(args, target=target)
    head = FSPADDraftModel.from_pretrained(head_dir).attach_target(target)
    assert head.config.variant == variant
    after = train_mod.evaluate(head, samples, 256)
    assert after["loss"] < 0.9 * before["loss"]
    assert after["top1"] > before["top1"]
    assert after["accept1"] > before["accept1"]  # the target's probability of the drafted token rose too
    for r in (before, after):
        assert 0 < r["accept1"] < r["accept4"] <= 1 and 0 < r["confidence1"] <= 1
    metrics = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert metrics[-1]["final"] and "top3" in metrics[-1]["val"]
    # the trained head serves generation and stays lossless
    prompt = torch.tensor([[5, 9, 17, 3]])
    stock = target.generate(prompt, max_new_tokens=12, do_sample=False)
    ours = target.generate(prompt, max_new_tokens=12, do_sample=False, custom_generate=fspad_generate, draft_model=head)
    assert torch.equal(stock, ours)


def test_training_with_draft_vocabulary(tiny_features, tmp_path):
    target, features = tiny_features
    head_dir = train_mod.train(_args(tmp_path, features, draft_vocab=32, max_steps=3, save_every=0), target=target)
    head = FSPADDraftModel.from_pretrained(head_dir).attach_target(target)
    assert head.config.draft_vocab_size == 32
    final = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert 0.0 < final["val"]["draft_vocab_coverage"] < 1.0  # random tokens over 127 ids: 32 cannot cover all
    assert head.draft_to_target.unique().numel() == 32 and head.draft_to_target.max() < 128


@pytest.mark.parametrize("draft_vocab_size", [None, 32])
def test_target_probabilities_are_the_targets_full_softmax(draft_vocab_size):
    """evaluate's T=1 acceptance reads the target's probabilities of the head's draft tokens, normalised over
    the whole vocabulary (a reduced draft vocabulary must not inflate them by renormalising over its part)."""
    target = tiny_target("llama")
    head = FSPADDraftModel.from_target(target, draft_vocab_size=draft_vocab_size).float()
    features = torch.randn(5, target.config.hidden_size)
    full = target.get_output_embeddings()(features).softmax(-1)
    want = full if draft_vocab_size is None else full[:, head.draft_to_target]
    with torch.no_grad():
        got = train_mod.target_probabilities(head, head.compute_logits(features), features)
    torch.testing.assert_close(got, want)
    assert draft_vocab_size is None or float(got.sum(-1).max()) < 1 - 1e-3


def test_resume_after_a_kill_gives_the_same_head(tiny_features, tmp_path, monkeypatch):
    target, features = tiny_features
    straight = train_mod.train(_args(tmp_path / "a", features, max_steps=8, save_every=3), target=target)

    resumed = train_killed_then_resumed(
        monkeypatch, _args(tmp_path / "b", features, max_steps=8, save_every=3), target, kill_at=6)

    a = FSPADDraftModel.from_pretrained(straight).state_dict()
    b = FSPADDraftModel.from_pretrained(resumed).state_dict()
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def test_max_minutes_stops_with_a_head_and_the_same_command_finishes_the_run(tiny_features, tmp_path, monkeypatch):
    """--max-minutes: the run stops at its budget with a checkpoint and the head so far (metrics say where it
    stopped); the same command without the budget continues the schedule to the head an uninterrupted run gives."""
    target, features = tiny_features
    straight = train_mod.train(_args(tmp_path / "a", features, max_steps=8, save_every=3), target=target)

    clock = iter(range(0, 10**6, 20))  # every reading of the clock is 20 s after the last
    monkeypatch.setattr(train_mod.time, "time", lambda: next(clock))
    timed = _args(tmp_path / "b", features, max_steps=8, save_every=3, max_minutes=1.5)
    head_dir = train_mod.train(timed, target=target)
    final = json.loads((tmp_path / "b" / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert final["final"] and 0 < final["step"] < 8 and "of 8" in final["stopped"]
    FSPADDraftModel.from_pretrained(head_dir)  # the head so far is there

    monkeypatch.undo()
    timed.max_minutes = None
    finished = train_mod.train(timed, target=target)
    last = json.loads((tmp_path / "b" / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["final"] and last["step"] == 8 and "stopped" not in last
    a, b = (FSPADDraftModel.from_pretrained(d).state_dict() for d in (straight, finished))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    with pytest.raises(ValueError, match=r"--max-minutes 1.0: .* \(--save-every > 0\)"):
        train_mod.train(_args(tmp_path / "c", features, max_steps=2, save_every=0, max_minutes=1.0), target=target)


def test_training_on_the_fly_matches_stored_features_and_resumes(tiny_features, tmp_path, monkeypatch):
    """--samples: the target computes each batch's features; the run sees the same batches and features as one
    on stored features (bf16, so they agree to rounding), unrolled training included, and resumes exactly."""
    target, features = tiny_features
    samples_path = tmp_path / "samples.jsonl"
    samples_path.write_text("".join(json.dumps(s) + "\n" for s in random_samples(40)))

    def on_the_fly(out, **overrides):
        args = _args(out, features, max_steps=8, save_every=3, unroll=2, **overrides)
        args.features, args.samples, args.feature_dtype = None, [str(samples_path)], "float32"
        return args

    stored = train_mod.train(_args(tmp_path / "stored", features, max_steps=8, save_every=0, unroll=2), target=target)
    fly = train_mod.train(on_the_fly(tmp_path / "fly"), target=target)
    losses = [[json.loads(line).get("loss") for line in open(tmp_path / run / "run" / "metrics.jsonl")][:8]
              for run in ("stored", "fly")]
    assert losses[0] == pytest.approx(losses[1], rel=1e-3)
    a, b = (FSPADDraftModel.from_pretrained(d).state_dict() for d in (stored, fly))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=1e-4, msg=k)

    resumed = train_killed_then_resumed(monkeypatch, on_the_fly(tmp_path / "cut"), target, kill_at=6)
    c = FSPADDraftModel.from_pretrained(resumed).state_dict()
    for k in b:
        torch.testing.assert_close(b[k], c[k], rtol=0, atol=0, msg=k)


def test_training_can_continue_from_a_trained_head(tiny_features, tmp_path):
    target, features = tiny_features
    first = train_mod.train(_args(tmp_path / "a", features, draft_vocab=32, max_steps=20, save_every=0), target=target)
    samples = load_samples(features)
    start = train_mod.evaluate(FSPADDraftModel.from_pretrained(first).attach_target(target).float(), samples, 256)
    second = train_mod.train(_args(tmp_path / "b", features, init=str(first), max_steps=20, save_every=0), target=target)
    head = FSPADDraftModel.from_pretrained(second).attach_target(target)
    assert torch.equal(head.draft_to_target, FSPADDraftModel.from_pretrained(first).draft_to_target)
    assert train_mod.evaluate(head.float(), samples, 256)["loss"] < start["loss"]  # it went on from there
    with pytest.raises(ValueError, match="--draft-vocab 64 with --init: the head drafts from 32 tokens"):
        train_mod.train(_args(tmp_path / "c", features, init=str(first), draft_vocab=64, max_steps=1), target=target)


def test_a_continued_head_can_grow_extra_layers(tiny_features, tmp_path):
    """--extra-layers with --init grows the continued head (with_extra_layers): before any step it is the head it
    started from; training moves the new layers off their zero output projections; a continued head never
    shrinks."""
    target, features = tiny_features
    samples = load_samples(features)
    first = train_mod.train(_args(tmp_path / "a", features, max_steps=4, save_every=0), target=target)
    start = train_mod.evaluate(FSPADDraftModel.from_pretrained(first).attach_target(target).float(), samples, 256)
    untouched = train_mod.train(_args(tmp_path / "b", features, init=str(first), extra_layers=1, epochs=0, save_every=0),
                                target=target)
    head = FSPADDraftModel.from_pretrained(untouched).attach_target(target).float()
    assert head.config.num_extra_layers == 1
    assert train_mod.evaluate(head, samples, 256)["loss"] == pytest.approx(start["loss"], rel=1e-6)
    trained = train_mod.train(_args(tmp_path / "c", features, init=str(first), extra_layers=1, max_steps=6,
                                    save_every=0), target=target)
    layer = FSPADDraftModel.from_pretrained(trained).extra_layers[0]
    assert layer.self_attn.o_proj.weight.abs().sum() > 0 and layer.mlp.down_proj.weight.abs().sum() > 0
    with pytest.raises(ValueError, match="a continued head only grows"):
        train_mod.train(_args(tmp_path / "d", features, init=str(trained), extra_layers=0, max_steps=1), target=target)


def test_extra_layers_train_at_their_own_rate(tiny_features, tmp_path):
    """--extra-layers-lr puts the extra layers in an optimizer group of their own: with a zero rate for them, the
    grown layer stays exactly at its start while the first layer moves (and with a zero rate for the rest, the
    reverse); without extra layers the option is an error that names the fix."""
    target, features = tiny_features
    first = train_mod.train(_args(tmp_path / "a", features, max_steps=2, save_every=0), target=target)
    grown = train_mod.train(_args(tmp_path / "g", features, init=str(first), extra_layers=1, epochs=0, save_every=0),
                            target=target)
    start = FSPADDraftModel.from_pretrained(grown).state_dict()  # the grown layer's initial weights (same seed)

    def moved(run_dir, **rates):
        out = train_mod.train(_args(run_dir, features, init=str(first), extra_layers=1, max_steps=3, save_every=0,
                                    **rates), target=target)
        after = FSPADDraftModel.from_pretrained(out).state_dict()
        changed = {k for k in start if not torch.equal(start[k], after[k])}
        return {k.startswith("extra_layers.") for k in changed}

    assert moved(tmp_path / "b", extra_layers_lr=0.0) == {False}
    assert moved(tmp_path / "c", lr=0.0, extra_layers_lr=1e-2) == {True}
    with pytest.raises(ValueError, match="--extra-layers n"):
        train_mod.train(_args(tmp_path / "d", features, init=str(first), extra_layers_lr=1e-3, max_steps=1), target=target)


def test_a_continued_head_keeps_its_variant(tiny_features, tmp_path):
    """--init of an EAGLE-2 head continues it as EAGLE-2 without --variant; a --variant that contradicts the head
    is an error naming both."""
    target, features = tiny_features
    first = train_mod.train(_args(tmp_path / "a", features, variant="eagle2", max_steps=2, save_every=0), target=target)
    second = train_mod.train(_args(tmp_path / "b", features, init=str(first), max_steps=2, save_every=0), target=target)
    assert FSPADDraftModel.from_pretrained(second).config.variant == "eagle2"
    with pytest.raises(ValueError, match="is a eagle2 head, not fspad; drop --variant"):
        train_mod.train(_args(tmp_path / "c", features, init=str(first), variant="fspad", max_steps=1), target=target)
    assert train_mod.build_parser().parse_args(["--features", "f", "--out", "o"]).variant is None


def test_continuing_with_a_smaller_draft_vocabulary_keeps_the_most_frequent_tokens(tiny_features, tmp_path):
    target, features = tiny_features
    first = train_mod.train(_args(tmp_path / "a", features, draft_vocab=32, max_steps=10, save_every=0), target=target)
    small = train_mod.train(_args(tmp_path / "b", features, init=str(first), draft_vocab=12, epochs=0, save_every=0),
                            target=target)
    big, shrunk = (FSPADDraftModel.from_pretrained(d).attach_target(target).float() for d in (first, small))
    samples = [s for s in load_samples(features) if not is_validation(s["id"], 0.2)]
    counts = train_mod.token_counts(samples, target.config.vocab_size)
    kept = shrunk.draft_to_target
    assert shrunk.config.draft_vocab_size == 12 and kept.shape == (12,) and torch.equal(kept, kept.sort().values)
    assert set(kept.tolist()) <= set(big.draft_to_target.tolist())
    dropped = sorted(set(big.draft_to_target.tolist()) - set(kept.tolist()))
    assert counts[kept].min() >= counts[dropped].max()  # the most frequent of the head's own tokens
    # no step taken: the same weights, so the kept tokens' logits are the big head's, only fewer of them
    hidden = torch.randn(3, target.config.hidden_size)
    rows = torch.searchsorted(big.draft_to_target, kept)
    torch.testing.assert_close(shrunk.compute_logits(hidden), big.compute_logits(hidden)[:, rows])


def test_train_takes_features_or_samples_not_both(tmp_path):
    with pytest.raises(SystemExit):
        train_mod.build_parser().parse_args(["--features", "f", "--samples", "s.jsonl", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        train_mod.build_parser().parse_args(["--out", str(tmp_path)])


def test_head_for_a_peft_adapted_target(tmp_path):
    from peft import LoraConfig, get_peft_model

    from hf_specdec.training import prepare

    base = tiny_target("llama")
    base.save_pretrained(tmp_path / "base")
    torch.manual_seed(0)
    lora = get_peft_model(tiny_target("llama"), LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    lora.save_pretrained(tmp_path / "adapter")
    samples = tmp_path / "samples.jsonl"
    samples.write_text("".join(json.dumps(s) + "\n" for s in random_samples(12)))

    # features come from the adapted model, and the manifest says which adapter
    prepare.features_main(["--samples", str(samples), "--out", str(tmp_path / "feat"), "--model", str(tmp_path / "base"),
                           "--adapter", str(tmp_path / "adapter"), "--dtype", "float32"])
    assert read_manifest(tmp_path / "feat")["adapter"] == str(tmp_path / "adapter")
    adapted, _ = prepare.load_target(str(tmp_path / "base"), torch.float32, str(tmp_path / "adapter"))
    stored = load_samples(tmp_path / "feat")[0]
    ids = stored["input_ids"][None]
    torch.testing.assert_close(stored["features"].float(), last_hidden_states(adapted, ids)[0], rtol=2e-2, atol=2e-2)
    assert not torch.allclose(last_hidden_states(base, ids)[0], last_hidden_states(adapted, ids)[0], atol=1e-2)

    # the head trained on them records the adapter
    head_dir = train_mod.train(_args(tmp_path, tmp_path / "feat", max_steps=2, save_every=0), target=adapted)
    assert FSPADDraftModel.from_pretrained(head_dir).config.target_adapter == str(tmp_path / "adapter")


def test_export_writes_serving_dtype_and_tree_defaults(tiny_features, tmp_path):
    from hf_specdec.strategies.fspad import TreeShape
    from hf_specdec.training.export import export_head

    target, features = tiny_features
    head_dir = train_mod.train(_args(tmp_path, features, max_steps=1, save_every=0), target=target)
    export_head(head_dir, tmp_path / "shipped", tree=(2, 3, 6))
    head = FSPADDraftModel.from_pretrained(tmp_path / "shipped")
    assert head.dtype == torch.bfloat16
    assert (head.generation_config.tree_top_k, head.generation_config.tree_depth,
            head.generation_config.tree_total_tokens) == (2, 3, 6)
    assert TreeShape.resolve(head) == TreeShape(2, 3, 6)


def test_evaluate_heads_matches_the_final_validation_and_checks_the_target(tiny_features, tmp_path, capsys):
    target, features = tiny_features
    head_dir = train_mod.train(_args(tmp_path, features, max_steps=5, save_every=0), target=target)
    final = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])["val"]
    result = train_mod.evaluate_heads([head_dir], features, val_fraction=0.2, batch_tokens=256, target=target)[str(head_dir)]
    assert result["tokens"] == final["tokens"] and result["top1"] == pytest.approx(final["top1"])
    foreign = tmp_path / "foreign"  # a head made for another (differently initialised) model
    FSPADDraftModel.from_target(tiny_target("llama", seed=1)).save_pretrained(foreign)
    with pytest.raises(ValueError, match="another target"):
        train_mod.evaluate_heads([foreign], features, val_fraction=0.2, batch_tokens=256, target=target)
    # the same split of the sample files, features computed on the fly: the same positions, the same accuracy
    jsonl = tmp_path / "samples.jsonl"
    jsonl.write_text("".join(json.dumps(s) + "\n" for s in random_samples(40)))
    on_the_fly = train_mod.evaluate_heads([head_dir], samples=[jsonl], val_fraction=0.2, batch_tokens=256,
                                          target=target, feature_dtype="float32")[str(head_dir)]
    assert on_the_fly["tokens"] == result["tokens"]
    assert on_the_fly["top1"] == pytest.approx(result["top1"], abs=0.02)
    with pytest.raises(ValueError, match="one of them"):
        train_mod.evaluate_heads([head_dir], features, samples=[jsonl], target=target)
    # the command: a row for all the files and one per file
    target.save_pretrained(tmp_path / "target")
    rows = random_samples(40)
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(s) + "\n" for s in rows[0::3]))
    (tmp_path / "b.jsonl").write_text("".join(json.dumps(s) + "\n" for s in rows[1::3]))
    (tmp_path / "other").mkdir()  # a file of the same name in another folder is a row of its own
    (tmp_path / "other" / "a.jsonl").write_text("".join(json.dumps(s) + "\n" for s in rows[2::3]))
    files = [str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl"), str(tmp_path / "other" / "a.jsonl")]
    capsys.readouterr()
    assert train_mod.evaluate_main([str(head_dir), "--samples", *files, "--model", str(tmp_path / "target"),
                                    "--val-fraction", "0.2", "--steps", "2"]) == 0
    rows = [line.split(" | ") for line in capsys.readouterr().out.splitlines() if "%" in line]
    counts = {row[1]: int(row[-1].rstrip(" |").replace(",", "")) for row in rows}
    assert set(counts) == {"all", files[0], "b.jsonl", files[2]}
    assert counts["all"] == result["tokens"] == counts[files[0]] + counts["b.jsonl"] + counts[files[2]]
    assert all(counts[name] for name in counts)  # every file holds held-back positions


def test_evaluation_runs_the_target_once_per_batch_for_all_heads(tmp_path):
    """evaluate with features on the fly remembers each batch's features: a second head reuses them (the same
    numbers as a fresh target forward), so N heads cost one target pass."""
    target = tiny_target("llama")
    jsonl = tmp_path / "samples.jsonl"
    jsonl.write_text("".join(json.dumps(s) + "\n" for s in random_samples(30)))
    val = train_mod.token_samples([jsonl], 2048)
    heads = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        heads.append(tmp_path / f"head{seed}")
        FSPADDraftModel.from_target(target).save_pretrained(heads[-1])
    groups = {"a": val[:10], "b": val[10:]}
    remembered = train_mod.OnTheFlyFeatures(target, torch.float32, remember=True)
    fresh = train_mod.OnTheFlyFeatures(target, torch.float32)
    got = dict(train_mod.held_back_sums(heads, groups, 256, 2, target, None, remembered))
    want = dict(train_mod.held_back_sums(heads, groups, 256, 2, target, None, fresh))
    assert got == want and got[str(heads[0])] != got[str(heads[1])]
    batches = sum(len(list(train_mod.make_batches(part, 256, seed=0))) for part in groups.values())
    assert remembered.forwards == batches and fresh.forwards == 2 * batches


def test_evaluation_sums_of_parts_add_up_to_the_whole(tiny_features):
    """evaluate's rows for several files come from each file's sums: the sums of disjoint parts are the sums of
    their union, and the means of those are evaluate's on the union."""
    target, features = tiny_features
    samples = load_samples(features)
    head = FSPADDraftModel.from_target(target).float()
    whole = train_mod.evaluate(head, samples, 256, steps=3)
    parts = [train_mod.evaluation_sums(head, part, 256, steps=3) for part in (samples[:13], samples[13:])]
    combined = train_mod.evaluation_means(train_mod.add_sums(parts))
    assert combined.keys() == whole.keys() and combined["tokens"] == whole["tokens"]
    assert {"accept1_step3", "top1_step2", "accept4", "confidence1"} <= whole.keys()
    for key in whole:
        assert combined[key] == pytest.approx(whole[key], rel=1e-4), key


# ------------------------------------------------------------------------------------- closer data (v3)
def test_translation_prompts_from_pool_sentences():
    from hf_specdec.training import prompts

    pool = [
        {"id": 1, "prompt": "def f(x): return x", "reference": "x = {1: 2}"},  # code: no sentence to translate
        {"id": 2, "prompt": "Q?", "reference": "The cat sat on the warm mat all day. It was happy there, as always."},
        {"id": 3, "prompt": "Summarize: The river flooded the old town after three days of heavy rain.", "reference": "ok"},
    ]
    rows = prompts.translation_rows(pool, [("en", "de"), ("en", "fr")], limit=10)
    assert [r["id"] for r in rows] == ["tr-en-de-2", "tr-en-fr-3"]
    assert rows[0]["source"] == "translation-en-de" and "German" in rows[0]["prompt"] and "English" in rows[0]["prompt"]
    assert "cat sat" in rows[0]["prompt"] or "happy there" in rows[0]["prompt"]
    assert "river flooded" in rows[1]["prompt"] and "French" in rows[1]["prompt"]
    assert prompts.english_sentences("short one. x = y + 1 is code {here}. A sentence long enough to be kept here.") == [
        "A sentence long enough to be kept here."]


def test_back_translation_and_second_turn_rows():
    from hf_specdec.training import prompts

    tr = [{"id": "tr-en-de-2", "src_lang": "en", "tgt_lang": "de", "prompt": "..."},
          {"id": "tr-en-fr-3", "src_lang": "en", "tgt_lang": "fr", "prompt": "..."}]
    back = prompts.back_translation_rows(tr, {"tr-en-de-2": "Die Katze sass den ganzen Tag.", "tr-en-fr-3": "Oui"})
    assert len(back) == 1 and back[0]["id"] == "back-tr-en-de-2" and back[0]["source"] == "translation-de-en"
    assert "Die Katze sass" in back[0]["prompt"] and "English" in back[0]["prompt"]  # back into English

    convs = [data_mod.Conversation("7", [{"role": "user", "content": "Name a fruit."}], None),
             data_mod.Conversation("8", [{"role": "user", "content": "Say hi."}], None)]
    rows = prompts.second_turn_rows(convs, {"7": "An apple is a common fruit.", "8": "Hi"})
    assert [r["id"] for r in rows] == ["turn2-7"]  # a one-word first answer gets no follow-up
    roles = [m["role"] for m in rows[0]["messages"]]
    assert roles == ["user", "assistant", "user"] and rows[0]["messages"][1]["content"] == "An apple is a common fruit."
    assert rows[0]["messages"][2]["content"] in prompts.FOLLOW_UPS


def test_second_turn_answers_are_trained_with_the_first_exchange_in_context(smol_tokenizer, tmp_path):
    """make-prompts second-turn -> distill: the sample holds both turns; only the new answer is trained."""
    from hf_specdec.training import prepare, prompts

    target = tiny_target("llama", vocab_size=len(smol_tokenizer))
    pool = tmp_path / "pool.jsonl"
    pool.write_text(json.dumps({"id": 0, "source": "a", "prompt": "Tell me about rivers."}) + "\n")
    first = tmp_path / "first.jsonl"
    data_mod.self_distill(target, smol_tokenizer, data_mod.read_conversations(pool), first, max_new_tokens=6)
    answers = {s["id"]: prompts.response_text(smol_tokenizer, s) for s in data_mod.read_samples(first)}
    answers = {k: v + " more words here" for k, v in answers.items()}  # a random model's answer may be short
    turn2 = tmp_path / "turn2.jsonl"
    prompts._write_jsonl(prompts.second_turn_rows(data_mod.read_conversations(pool), answers), turn2)
    out = tmp_path / "second.jsonl"
    data_mod.self_distill(target, smol_tokenizer, prepare.select_per_source(turn2, None, None), out, max_new_tokens=5)
    (sample,) = data_mod.read_samples(out)
    text = smol_tokenizer.decode(sample["input_ids"])
    assert sample["id"] == "turn2-0" and "Tell me about rivers." in text and "more words here" in text
    n_answer = sum(sample["loss_mask"])
    assert 0 < n_answer <= 5 and sample["loss_mask"][-n_answer:] == [1] * n_answer


def test_distill_selects_sources_and_prompt_lengths(smol_tokenizer, tmp_path):
    from hf_specdec.training import prepare

    pool = tmp_path / "pool.jsonl"
    rows = [{"id": i, "source": "long" if i % 2 else "short", "prompt": "word " * (5 + 40 * (i % 2))} for i in range(6)]
    pool.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert [c.id for c in prepare.select_per_source(pool, None, None, ["long"])] == ["1", "3", "5"]
    assert [c.id for c in prepare.select_per_source(pool, 1, None, ["long", "short"])] == ["0", "1"]
    # skip: the prompts after those a --per-source run answered, per source
    assert [c.id for c in prepare.select_per_source(pool, 1, None, None, skip=1)] == ["2", "3"]
    assert [c.id for c in prepare.select_per_source(pool, None, None, ["long"], skip=2)] == ["5"]
    assert [c.id for c in prepare.select_per_source(pool, None, None, None, skip=3)] == []
    target = tiny_target("llama", vocab_size=len(smol_tokenizer))
    out = tmp_path / "long.jsonl"
    data_mod.self_distill(target, smol_tokenizer, prepare.select_per_source(pool, None, None), out,
                          max_new_tokens=2, min_prompt_tokens=40)
    assert sorted(s["id"] for s in data_mod.read_samples(out)) == ["1", "3", "5"]


def test_sample_stats_counts_tokens_and_lengths():
    from hf_specdec.training.prompts import sample_stats

    samples = [{"input_ids": [1] * n, "loss_mask": [0] * (n // 2) + [1] * (n - n // 2)} for n in (10, 300, 300, 3000)]
    s = sample_stats(samples)
    assert s["samples"] == 4 and s["tokens"] == 3610 and s["trained_tokens"] == 5 + 150 + 150 + 1500
    assert s["lengths"] == {"<=256": 1, "<=512": 2, "<=1024": 0, "<=2048": 0, ">2048": 1}


def test_accepted_lengths_count_levels_until_the_first_miss():
    """The chain rooted at p accepts level j only if step i hit at p + i - 1 for every i <= j."""
    hits = [torch.tensor([[1, 1, 0, 1, 1]]), torch.tensor([[0, 1, 1, 1, 0]]), torch.tensor([[1, 1, 1, 1, 1]])]
    got = train_mod.accepted_lengths([h.bool() for h in hits])
    # p=0: step1@0 hit, step2@1 hit, step3@2 hit -> 3; p=1: step1@1, step2@2, step3@3 -> 3; p=2: step1@2 miss -> 0;
    # p=3: step1@3, step2@4 miss -> 1; p=4: step1@4 hit, no step 2 beyond the end -> 1
    assert got.tolist() == [[3.0, 3.0, 0.0, 1.0, 1.0]]


def test_evaluate_chain_lengths_agree_with_the_step_accuracies(tiny_features):
    """One level deep, the chain's accepted length is top-1 and the 4-ary tree's is top-4 agreement; deeper, the
    lengths grow, the tree's at least the chain's, and never more than the depth."""
    target, features = tiny_features
    samples = load_samples(features)
    torch.manual_seed(0)
    head = FSPADDraftModel.from_target(target).float()
    one = train_mod.evaluate(head, samples, 256, top_k=4, steps=1)
    assert one["chain1"] == pytest.approx(one["top1"]) and one["chain4"] == pytest.approx(one["top4"])
    three = train_mod.evaluate(head, samples, 256, steps=3)
    assert one["chain1"] <= three["chain1"] <= three["chain4"] <= 3
    assert three["chain4"] > one["chain4"]


def test_training_runs_whatever_the_callers_grad_mode(tiny_features, tmp_path):
    """`train` enables gradients itself: called under torch.no_grad() (as from a notebook cell that evaluated
    first) it still takes its steps and moves the head."""
    target, features = tiny_features
    torch.manual_seed(0)
    start = FSPADDraftModel.from_target(target).state_dict()
    with torch.no_grad():
        out = train_mod.train(_args(tmp_path, features, max_steps=2, save_every=0), target=target)
    after = FSPADDraftModel.from_pretrained(out).state_dict()
    assert any(not torch.equal(start[k], after[k]) for k in start if k in after and start[k].is_floating_point())
