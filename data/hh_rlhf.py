"""
Anthropic's HH-RLHF preference data (Bai et al., 2022) in the files every stage reads.

Each HH-RLHF record is {"chosen": dialogue, "rejected": dialogue}, two dialogues that share everything up to
the final "\\n\\nAssistant:" and differ in the last reply. We split them there: the shared part is the prompt,
the two replies are chosen and rejected. SFT trains on the chosen replies.

    python -m data.hh_rlhf                                # download helpful-base and harmless-base
    python -m data.hh_rlhf --src_dir DIR --subsets harmless-base   # convert files you already have
    python sft.py --init_from gpt2 --train_file out/hh-rlhf/sft_train.jsonl \\
        --val_file out/hh-rlhf/sft_val.jsonl --eval_prompts out/hh-rlhf/eval_prompts.jsonl
"""

import argparse
import gzip
import json
from pathlib import Path

from common import download_file, write_jsonl
from tokenizer import ASSISTANT

URL = "https://huggingface.co/datasets/Anthropic/hh-rlhf/resolve/main/{subset}/{split}.jsonl.gz"
SUBSETS = ["helpful-base", "harmless-base", "helpful-online", "helpful-rejection-sampled", "red-team-attempts"]


def split_dialogue(text):
    """(prompt up to and including the last "\\n\\nAssistant:", the reply after it)."""
    i = text.rfind(ASSISTANT)
    if i < 0:
        raise ValueError("no assistant turn")
    return text[:i + len(ASSISTANT)], text[i + len(ASSISTANT):]


def convert(path):
    """Preference pairs of one HH-RLHF .jsonl.gz file, and counts of the records skipped, by reason."""
    pairs, skipped = [], {"prompts differ": 0, "empty reply": 0, "identical replies": 0, "no assistant turn": 0}
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            try:
                prompt, chosen = split_dialogue(rec["chosen"])
                other_prompt, rejected = split_dialogue(rec["rejected"])
            except ValueError:
                skipped["no assistant turn"] += 1
                continue
            if prompt != other_prompt:
                skipped["prompts differ"] += 1
            elif not chosen.strip() or not rejected.strip():
                skipped["empty reply"] += 1
            elif chosen == rejected:
                skipped["identical replies"] += 1
            else:
                pairs.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return pairs, skipped


def prepare(subsets, src_dir, out_dir):
    """Write prefs/sft/prompts files for the train split, and their _val/eval counterparts for the test split."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    for split, suffix, prompts_name in (("train", "train", "prompts_train"), ("test", "val", "eval_prompts")):
        pairs = []
        for subset in subsets:
            path = Path(src_dir) / subset / f"{split}.jsonl.gz"
            if not path.exists():
                download_file(URL.format(subset=subset, split=split), path)
            got, skipped = convert(path)
            print(f"{path}: {len(got)} pairs, skipped {sum(skipped.values())} ({skipped})")
            pairs += got
        write_jsonl(Path(out_dir) / f"prefs_{suffix}.jsonl", pairs)
        write_jsonl(Path(out_dir) / f"sft_{suffix}.jsonl", [{"prompt": p["prompt"], "response": p["chosen"]} for p in pairs])
        prompts = list(dict.fromkeys(p["prompt"] for p in pairs))
        write_jsonl(Path(out_dir) / f"{prompts_name}.jsonl", [{"prompt": p} for p in prompts])
    print(f"wrote {out_dir}/{{prefs,sft}}_{{train,val}}.jsonl, prompts_train.jsonl, eval_prompts.jsonl")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="Download and convert Anthropic's HH-RLHF.")
    ap.add_argument("--subsets", nargs="+", default=["helpful-base", "harmless-base"], choices=SUBSETS)
    ap.add_argument("--src_dir", default="out/hh-rlhf/raw", help="where the .jsonl.gz files are (or are downloaded to)")
    ap.add_argument("--out_dir", default="out/hh-rlhf")
    args = ap.parse_args()
    prepare(args.subsets, args.src_dir, args.out_dir)
