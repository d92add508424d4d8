"""The README's worked example, "Add your own loss", applied and run as a forker would: it stays true."""
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from common import save_checkpoint
from model import GPT, GPTConfig
from tokenizer import load_tokenizer, save_bpe, train_bpe

ROOT = Path(__file__).resolve().parent.parent


def example(language):
    """The first ```language block of the README's "Add your own loss" section."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Add your own loss", 1)[1].split("\n## ", 1)[0]
    return re.search(rf"```{language}\n(.*?)```", section, re.S).group(1)


@pytest.mark.skipif(shutil.which("git") is None, reason="applying the README's diff needs git")
def test_add_your_own_loss_as_the_readme_shows(tmp_path):
    shutil.copy(ROOT / "dpo.py", tmp_path / "dpo.py")
    applied = subprocess.run(["git", "apply", "-v", "-"], input=example("diff"), cwd=tmp_path, capture_output=True,
                             text=True)
    assert applied.returncode == 0, f"the README's diff no longer applies to dpo.py: {applied.stderr}"
    # git applies a hunk found a few lines off, but a reader follows its line numbers: they must be dpo.py's
    assert "offset" not in applied.stderr, f"the README's diff names lines that have moved in dpo.py: {applied.stderr}"

    # the forker's test, against the patched dpo.py
    spec = importlib.util.spec_from_file_location("dpo_with_simpo", tmp_path / "dpo.py")
    patched = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(patched)
    namespace = {"dpo": patched, "torch": torch, "pytest": pytest}
    exec(example("python"), namespace)
    tests = [f for name, f in namespace.items() if name.startswith("test_")]
    assert tests
    for test in tests:
        test()

    # and the patched stage trains with it through its command line
    pairs = [{"prompt": f"\n\nHuman: say {w}\n\nAssistant:", "chosen": f" {w}.", "rejected": " No."}
             for w in ("yes", "hello", "tea", "blue", "seven", "ok")]
    for name, recs in (("train", pairs), ("val", pairs[:2]), ("prompts", [{"prompt": p["prompt"]} for p in pairs])):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    tok = str(tmp_path / "tok.tiktoken")
    save_bpe(train_bpe([p["prompt"] + p["chosen"] + p["rejected"] for p in pairs], 270), tok)
    config = GPTConfig(block_size=32, vocab_size=load_tokenizer(tok).n_vocab, n_layer=1, n_head=2, n_embd=16)
    save_checkpoint(tmp_path / "sft.pt", {"kind": "policy", "model": GPT(config).state_dict(),
                                          "model_config": asdict(config), "tokenizer": tok})
    out = subprocess.run(
        [sys.executable, str(tmp_path / "dpo.py"), "--loss_type", "simpo", "--beta", "2", "--simpo_gamma", "1",
         "--sft_ckpt", str(tmp_path / "sft.pt"), "--train_file", str(tmp_path / "train.jsonl"), "--val_file",
         str(tmp_path / "val.jsonl"), "--eval_prompts", str(tmp_path / "prompts.jsonl"), "--reward_ckpt", "",
         "--out_dir", str(tmp_path / "out"), "--max_steps", "3", "--batch_size", "2", "--eval_interval", "3",
         "--n_eval", "2", "--max_new_tokens", "4"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr[-2000:]
    losses = [json.loads(line)["loss"] for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()[:3]]
    # SimPO's loss at the first step is -log sigmoid(2 * (gap of mean log-probs) - 1), not DPO's ln 2
    assert len(losses) == 3 and abs(losses[0] - 0.693147) > 1e-3
    assert json.loads((tmp_path / "out" / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 3
