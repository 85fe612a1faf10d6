"""What `generation.no_repeat_ngram_size` forbids on real references: the share of the real dev summaries
that a model could never produce under the ban, with koBART's tokenizer after dialsum adds the speaker/mask
tags as single tokens, plainly (transformers' processor) and with those tags exempt (dialsum's processor).

    python benchmarks/no_repeat.py [--sizes 2 3 4]
"""

from __future__ import annotations

import argparse

from common import ROOT, real_dev_or_sample


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2, 3, 4])
    args = parser.parse_args()
    from transformers import AutoTokenizer

    from dialsum.data import load_dialogues
    from dialsum.encode import add_seq2seq_special_tokens
    from dialsum.suppress import NoRepeatNGramExceptTags, tag_token_ids

    folder = ROOT.parent / "shared" / "models" / "kobart"
    if not folder.is_dir():
        print("../shared/models/kobart not present")
        return
    dialogues = [d for d in load_dialogues(real_dev_or_sample()) if d.references]
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    add_seq2seq_special_tokens(tokenizer, dialogues)
    encoded = [tokenizer(d.references[0], add_special_tokens=False)["input_ids"] for d in dialogues]
    tags = tag_token_ids(tokenizer)
    print(f"{len(encoded)} references, koBART tokenizer + {len(tags)} tag tokens")
    for size in args.sizes:
        shares = []
        for exempt in ([], tags):
            ban = NoRepeatNGramExceptTags(size, exempt)
            impossible = sum(any(ids[i] in ban.banned(ids[:i]) for i in range(len(ids))) for ids in encoded)
            shares.append(impossible / len(encoded))
        print(
            f"no_repeat_ngram_size={size}: {shares[0]:.1%} of references impossible; with tags exempt {shares[1]:.1%}"
        )


if __name__ == "__main__":
    main()
