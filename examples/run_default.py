"""Speculative decoding on the embedded default model with the shipped FSPAD head, in a dozen lines."""

import hf_specdec

target, tok = hf_specdec.default_target()  # SmolLM2-135M-Instruct, bf16, CPU
draft = hf_specdec.default_draft(target, tok)  # the trained head shipped in the package
ids = tok.apply_chat_template([{"role": "user", "content": "Name three colours."}], add_generation_prompt=True,
                              return_tensors="pt", return_dict=True)["input_ids"]
out = target.generate(ids, assistant_model=draft, strategy="fspad", max_new_tokens=64, do_sample=False,
                      return_dict_in_generate=True, tokenizer=tok)
print(tok.decode(out.sequences[0, ids.shape[1]:], skip_special_tokens=True))
print(out.spec_stats.to_dict())
