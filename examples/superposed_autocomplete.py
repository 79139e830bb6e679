"""Several autocomplete suggestions for the price of about one greedy run: strategy="superposed" on the
embedded SmolLM2 target.

    python examples/superposed_autocomplete.py "The best way to learn a new language is" --k 3 --tokens 10
"""

import argparse

import hf_specdec


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("text", nargs="?", default="The best way to learn a new language is")
    p.add_argument("--k", type=int, default=3, help="number of suggestions")
    p.add_argument("--tokens", type=int, default=10, help="tokens per suggestion")
    p.add_argument("--ngram", default=None, help="n-gram table path / Hub id (default: the shipped one); 'off' to disable")
    args = p.parse_args()
    target, tok = hf_specdec.default_target()
    ids = tok(args.text, return_tensors="pt").input_ids
    ngram = False if args.ngram == "off" else args.ngram
    out = target.generate(ids, strategy="superposed", num_return_sequences=args.k, max_new_tokens=args.tokens,
                          ngram=ngram, tokenizer=tok, return_dict_in_generate=True)
    for rank, (seq, score) in enumerate(zip(out.sequences, out.sequences_scores), 1):
        text = tok.decode(seq[ids.shape[1]:], skip_special_tokens=True)
        print(f"{rank}. {args.text}{text}    (mean log score {score:.2f})")


if __name__ == "__main__":
    main()
