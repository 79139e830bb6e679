"""Diagnosis, not tuning: every cycle of strategy="fspad" against prompt lookup decoding on the Spec-Bench dev
questions of one category group (first turns, greedy, bf16): per question the tau of both, and per fspad cycle the
tree size, the lookup trie's size and match length and the tokens accepted. Writes a JSON of it.

    python examples/trace_lookup_cycles.py qa runs/diag/qa_trace.json
"""

import json
import sys

import torch

from hf_specdec.bench.specbench import DEV_QUESTIONS, group_of, load_heads, load_questions
from hf_specdec.strategies import fspad as fspad_module
from hf_specdec.training.prepare import load_target


def main(group: str = "qa", out: str = "qa_trace.json", per_category: int = 4) -> None:
    target, tok = load_target(None, torch.bfloat16)
    head = load_heads(target, tok, None, None, ["fspad"])["fspad"]
    questions = [q for q in load_questions(DEV_QUESTIONS, per_category) if group_of(q["category"]) == group]
    cycles, tries = [], []
    real_call, real_lookup = fspad_module.TreeDrafts.__call__, fspad_module.TreeDrafts.lookup

    def lookup(self, committed, index=None):
        trie = real_lookup(self, committed, index)
        tries.append(trie)
        return trie

    def call(self, committed, state, cached):
        tree = real_call(self, committed, state, cached)
        trie = tries[-1] if tries else None
        cycles.append({"committed": committed.shape[1], "tree_nodes": tree.num_nodes,
                       "trie_nodes": len(trie) if trie else 0, "match_length": trie.match_length if trie else 0})
        return tree

    fspad_module.TreeDrafts.__call__, fspad_module.TreeDrafts.lookup = call, lookup
    forwards = []
    hook = target.get_decoder().register_forward_pre_hook(lambda *args: forwards.append(1))
    report = []
    try:
        for q in questions:
            ids = tok.apply_chat_template([{"role": "user", "content": q["turns"][0]}], add_generation_prompt=True,
                                          return_tensors="pt", return_dict=True)["input_ids"]
            forwards.clear()
            pld = target.generate(ids, max_new_tokens=128, do_sample=False, prompt_lookup_num_tokens=10,
                                  pad_token_id=tok.eos_token_id)[0, ids.shape[1]:].tolist()
            pld_forwards = len(forwards)
            cycles.clear()
            tries.clear()
            result = target.generate(ids, assistant_model=head, strategy="fspad", max_new_tokens=128, do_sample=False,
                                  return_dict_in_generate=True, pad_token_id=tok.eos_token_id)
            new, stats = result.sequences[0, ids.shape[1]:].tolist(), result.spec_stats
            report.append({"question_id": q["question_id"], "answer": tok.decode(new), "same_text": new == pld,
                           "pld_tau": len(pld) / pld_forwards, "fspad_tau": len(new) / stats.target_forwards,
                           "accepted": stats.accepted_lengths, "cycles": list(cycles)})
            print(f"{q['question_id']}: PLD tau {report[-1]['pld_tau']:.2f}, fspad tau {report[-1]['fspad_tau']:.2f}, "
                  f"accepted per cycle {stats.accepted_lengths}")
    finally:
        hook.remove()
        fspad_module.TreeDrafts.__call__, fspad_module.TreeDrafts.lookup = real_call, real_lookup
    with open(out, "w") as f:
        json.dump(report, f, indent=1)


if __name__ == "__main__":
    main(*sys.argv[1:3])
