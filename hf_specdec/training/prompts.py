"""Prompt files closer to how a head is used, built from the training pool and the target's own answers
(never from Spec-Bench or the test sets it samples). Each writes a prompts JSONL that `hf-specdec distill`
answers with the target:

    hf-specdec make-prompts translation  --pool POOL --pairs en-de en-fr --limit 600 --out tr.jsonl
    hf-specdec make-prompts back-translation --prompts tr.jsonl --answers tr_answers.jsonl --out back.jsonl
    hf-specdec make-prompts second-turn  --prompts POOL --answers answers.jsonl --out turn2.jsonl

translation: sentences of the pool's English texts, to translate into another language; back-translation:
the target's own translations, to translate back into English (the direction Spec-Bench's WMT14 de-en asks,
with source text the pool has none of); second-turn: a first exchange (a pool prompt and the target's answer)
followed by a templated follow-up, so that the answer to it is trained with a conversation in context.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

from .data import read_conversations, read_samples
from .held_out import is_held_out

LANGUAGES = {"en": "English", "de": "German", "fr": "French", "es": "Spanish"}
# Phrasings of the request, WMT14-style prompts among them.
TRANSLATION_TEMPLATES = (
    "Translate {src} to {tgt}: {text}",
    "Translate the following {src} text into {tgt}.\n\n{text}",
    "{text}\n\nTranslate this sentence from {src} to {tgt}.",
    "How do you say this in {tgt}? \"{text}\"",
)
FOLLOW_UPS = (
    "Can you make your answer shorter?",
    "Explain your answer in more detail.",
    "Rewrite your answer as a bulleted list.",
    "Give me an example.",
    "Why? Explain step by step.",
    "Now summarize everything in one sentence.",
    "Can you say that in simpler words?",
    "What would change if the question were the other way around?",
)
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def english_sentences(text: str, min_words: int = 6, max_words: int = 40) -> list[str]:
    """Whole sentences of a text between min_words and max_words words, without code or markup."""
    out = []
    for sentence in _SENTENCE.split(text.replace("\n", " ")):
        sentence = sentence.strip()
        words = sentence.split()
        if min_words <= len(words) <= max_words and sentence[:1].isupper() and not re.search(r"[{}<>=#_\\|`@]", sentence):
            out.append(sentence)
    return out


def translation_rows(pool_rows: list[dict], pairs: list[tuple[str, str]], limit: int, seed: int = 0,
                     max_sentences: int = 3) -> list[dict]:
    """Up to `limit` rows {id, source, prompt, src_lang, tgt_lang}: 1..max_sentences consecutive English
    sentences of a pool row (its reference or prompt), to translate into a target language of `pairs`."""
    rng = random.Random(seed)
    rows = []
    for row in pool_rows:
        sentences = english_sentences(row.get("reference") or "") or english_sentences(row.get("prompt") or "")
        if not sentences:
            continue
        src, tgt = pairs[len(rows) % len(pairs)]
        start = rng.randrange(len(sentences))
        text = " ".join(sentences[start : start + rng.randint(1, max_sentences)])
        prompt = rng.choice(TRANSLATION_TEMPLATES).format(src=LANGUAGES[src], tgt=LANGUAGES[tgt], text=text)
        rows.append({"id": f"tr-{src}-{tgt}-{row['id']}", "source": f"translation-{src}-{tgt}", "prompt": prompt,
                     "src_lang": src, "tgt_lang": tgt})
        if len(rows) >= limit:
            break
    return rows


def response_text(tokenizer, sample: dict) -> str:
    """The decoded response of a distilled sample (its loss-masked tokens), special tokens dropped."""
    response = [t for t, m in zip(sample["input_ids"], sample["loss_mask"]) if m]
    return tokenizer.decode(response, skip_special_tokens=True).strip()


def back_translation_rows(prompt_rows: list[dict], answers: dict[str, str], seed: int = 0) -> list[dict]:
    """For each translation prompt the target answered: its answer, to translate back into the source
    language (so the new source text is the target's own German / French / Spanish)."""
    rng = random.Random(seed)
    rows = []
    for row in prompt_rows:
        text = answers.get(row["id"], "")
        if len(text.split()) < 4:  # an empty or one-word answer is no source text
            continue
        src, tgt = row["tgt_lang"], row["src_lang"]
        prompt = rng.choice(TRANSLATION_TEMPLATES).format(src=LANGUAGES[src], tgt=LANGUAGES[tgt], text=text)
        rows.append({"id": f"back-{row['id']}", "source": f"translation-{src}-{tgt}", "prompt": prompt,
                     "src_lang": src, "tgt_lang": tgt})
    return rows


def second_turn_rows(conversations, answers: dict[str, str], seed: int = 0, min_answer_words: int = 3) -> list[dict]:
    """Chat rows {id, source, messages}: the first exchange (prompt turns + the target's answer), then a
    templated follow-up as the last user turn."""
    rng = random.Random(seed)
    rows = []
    for conv in conversations:
        answer = answers.get(conv.id, "")
        if len(answer.split()) < min_answer_words:
            continue
        messages = conv.messages + [{"role": "assistant", "content": answer},
                                    {"role": "user", "content": rng.choice(FOLLOW_UPS)}]
        rows.append({"id": f"turn2-{conv.id}", "source": "second-turn", "messages": messages})
    return rows


def _read_jsonl(path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _read_pool(path) -> list[dict]:
    """Pool rows ({id, source, prompt, ...}) without the held-out ones (training/held_out.py)."""
    return [row for row in _read_jsonl(path) if not is_held_out([{"role": "user", "content": row.get("prompt", "")}])]


def _write_jsonl(rows: list[dict], path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def _answers(path, model) -> dict[str, str]:
    from .prepare import load_target_tokenizer

    tokenizer = load_target_tokenizer(model)
    return {s["id"]: response_text(tokenizer, s) for s in read_samples(path)}


def main(argv=None):
    p = argparse.ArgumentParser(prog="hf-specdec make-prompts", description=__doc__.split("\n")[0])
    p.add_argument("kind", choices=["translation", "back-translation", "second-turn"])
    p.add_argument("--out", required=True, help="prompts JSONL to write (answer it with `hf-specdec distill`)")
    p.add_argument("--pool", help="translation: the training pool JSONL")
    p.add_argument("--pairs", nargs="+", default=["en-de", "en-fr"], help="translation: language pairs src-tgt")
    p.add_argument("--prompts", help="back-translation: the translation prompts; second-turn: the first-turn prompts")
    p.add_argument("--answers", help="the target's answers to --prompts (written by `hf-specdec distill`)")
    p.add_argument("--model", default=None, help="whose tokenizer decodes --answers (default: the embedded target)")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.kind == "translation":
        if not args.pool:
            p.error("translation needs --pool")
        pairs = [tuple(pair.split("-")) for pair in args.pairs]
        unknown = sorted({lang for pair in pairs for lang in pair} - set(LANGUAGES))
        if unknown or any(len(pair) != 2 for pair in pairs):
            p.error(f"--pairs are src-tgt codes of {', '.join(LANGUAGES)}; got {' '.join(args.pairs)}")
        rows = translation_rows(_read_pool(args.pool), pairs, args.limit or 10**9, args.seed)
    else:
        if not (args.prompts and args.answers):
            p.error(f"{args.kind} needs --prompts and --answers")
        answers = _answers(args.answers, args.model)
        if args.kind == "back-translation":
            rows = back_translation_rows(_read_jsonl(args.prompts), answers, args.seed)
        else:
            rows = second_turn_rows(read_conversations(args.prompts), answers, args.seed)
        rows = rows[: args.limit]
    _write_jsonl(rows, args.out)
    print(f"wrote {len(rows)} prompts to {args.out}")
    return 0


LENGTH_BINS = (256, 512, 1024, 2048)


def sample_stats(samples: list[dict]) -> dict:
    """Samples, tokens, trained (response) tokens and the sequence-length histogram of distilled samples."""
    lengths = [len(s["input_ids"]) for s in samples]
    bins = {f"<={b}": 0 for b in LENGTH_BINS} | {f">{LENGTH_BINS[-1]}": 0}
    for n in lengths:
        key = next((f"<={b}" for b in LENGTH_BINS if n <= b), f">{LENGTH_BINS[-1]}")
        bins[key] += 1
    return {"samples": len(samples), "tokens": sum(lengths), "trained_tokens": sum(sum(s["loss_mask"]) for s in samples),
            "lengths": bins}


def stats_main(argv=None):
    p = argparse.ArgumentParser(prog="hf-specdec data-stats",
                                description="Token counts and sequence-length histogram of distilled sample files.")
    p.add_argument("samples", nargs="+", help="JSONL files written by `hf-specdec distill`")
    args = p.parse_args(argv)
    header = "| file | samples | tokens | trained tokens | " + " | ".join(
        [f"<={b}" for b in LENGTH_BINS] + [f">{LENGTH_BINS[-1]}"]) + " |"
    print(header + "\n" + "|---" * (header.count("|") - 1) + "|")
    for path in args.samples:
        s = sample_stats(read_samples(path))
        print(f"| {path} | {s['samples']:,} | {s['tokens']:,} | {s['trained_tokens']:,} | "
              + " | ".join(str(v) for v in s["lengths"].values()) + " |")
    return 0
