import gzip
import json
import shutil
from pathlib import Path

import pytest

from common import read_jsonl
from data.hh_rlhf import convert, prepare, split_dialogue

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "eval-data" / "hh-rlhf"


def test_split_dialogue_at_the_last_assistant_turn():
    text = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how are you?\n\nAssistant: Fine, thanks."
    assert split_dialogue(text) == ("\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how are you?\n\nAssistant:",
                                    " Fine, thanks.")


def write_gz(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)


def test_convert_skips_and_counts_bad_records(tmp_path):
    p = "\n\nHuman: q\n\nAssistant:"
    write_gz(tmp_path / "x.jsonl.gz", [
        {"chosen": p + " good", "rejected": p + " bad"},
        {"chosen": p + " good", "rejected": "\n\nHuman: other\n\nAssistant: bad"},
        {"chosen": p + " ", "rejected": p + " bad"},
        {"chosen": p + " same", "rejected": p + " same"},
        {"chosen": "no turn", "rejected": "no turn"},
    ])
    pairs, skipped = convert(tmp_path / "x.jsonl.gz")
    assert pairs == [{"prompt": p, "chosen": " good", "rejected": " bad"}]
    assert skipped == {"prompts differ": 1, "empty reply": 1, "identical replies": 1, "no assistant turn": 1}


@pytest.mark.skipif(not SHARED.exists(), reason="the shared HH-RLHF split is not beside this checkout")
def test_real_hh_rlhf_split(tmp_path):
    # the real harmless-base test split stands in for both splits: no download
    for split in ("train", "test"):
        (tmp_path / "raw" / "harmless-base").mkdir(parents=True, exist_ok=True)
        shutil.copy(SHARED / "harmless-base" / "test.jsonl.gz", tmp_path / "raw" / "harmless-base" / f"{split}.jsonl.gz")
    prepare(["harmless-base"], tmp_path / "raw", tmp_path / "out")
    pairs = read_jsonl(tmp_path / "out" / "prefs_val.jsonl", ("prompt", "chosen", "rejected"))
    assert 2250 < len(pairs) <= 2312
    for p in pairs:
        assert p["prompt"].startswith("\n\nHuman:") and p["prompt"].endswith("\n\nAssistant:")
        assert p["chosen"] != p["rejected"]
    sft = read_jsonl(tmp_path / "out" / "sft_train.jsonl", ("prompt", "response"))
    assert [s["response"] for s in sft] == [p["chosen"] for p in pairs]
    prompts = read_jsonl(tmp_path / "out" / "eval_prompts.jsonl", ("prompt",))
    assert len(prompts) == len({p["prompt"] for p in pairs})
