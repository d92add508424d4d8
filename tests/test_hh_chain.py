"""
The whole chain on real data from GPT-2 weights, offline. The data: Anthropic's HH-RLHF, the harmless-base test split
beside this checkout, laid out like the download and converted by data/hh_rlhf.py's command line. The weights: a tiny
randomly initialised GPT-2, saved as the Hugging Face hub saves GPT-2 (config.json and model.safetensors, the hub's
key names, the Conv1D matrices stored [in, out]). Every stage runs through its command line on them: sft.py,
label.py with a person typing two answers, reward.py on the human pairs, ppo.py on the prompts, dpo.py on the pairs,
report.py. The tokenizer is a small BPE trained on the data, passed with --tokenizer: tiktoken's gpt2 encoding
cannot be built offline (tiktoken checks the SHA-256 of GPT-2's vocabulary files and throws away a cached file that
does not match), so the last test checks that asking for it offline says how to provide it.
"""

import io
import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import tiktoken.load
import tiktoken.registry
import torch

import dpo
import label
import ppo
import report
import reward
import sft
from common import fit_pair_to_context, read_jsonl
from tokenizer import load_tokenizer, render, train_tokenizer

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "eval-data" / "hh-rlhf"
pytestmark = pytest.mark.skipif(not (SHARED / "harmless-base" / "test.jsonl.gz").exists(),
                                reason="the shared HH-RLHF split is not beside this checkout (../shared/eval-data)")

CONTEXT, NEW = 128, 16  # the context every stage trains at (GPT-2's 1024 cut to it), and the response length limit


def write_tiny_gpt2(path, vocab_size, eot, n_positions=256, n_layer=2, n_head=2, n_embd=32):
    """
    A random GPT-2 in the hub's layout: no "transformer." prefix, Conv1D weights [in, out], the causal-mask buffers
    (attn.bias) stored, lm_head not stored (tied to wte). Its end-of-text logit is raised to about 4 everywhere, so
    that a fair share of its replies end within a few tokens, as label.py needs.
    """
    g = torch.Generator().manual_seed(0)
    normal = lambda *shape: torch.randn(*shape, generator=g) * 0.02
    ones, zeros = torch.ones, torch.zeros
    state = {"wte.weight": normal(vocab_size, n_embd), "wpe.weight": normal(n_positions, n_embd),
             "ln_f.weight": ones(n_embd), "ln_f.bias": zeros(n_embd)}
    for i in range(n_layer):
        state.update({f"h.{i}.{k}": v for k, v in {
            "ln_1.weight": ones(n_embd), "ln_1.bias": zeros(n_embd),
            "attn.bias": torch.tril(ones(n_positions, n_positions)).view(1, 1, n_positions, n_positions),
            "attn.c_attn.weight": normal(n_embd, 3 * n_embd), "attn.c_attn.bias": zeros(3 * n_embd),
            "attn.c_proj.weight": normal(n_embd, n_embd), "attn.c_proj.bias": zeros(n_embd),
            "ln_2.weight": ones(n_embd), "ln_2.bias": zeros(n_embd),
            "mlp.c_fc.weight": normal(n_embd, 4 * n_embd), "mlp.c_fc.bias": zeros(4 * n_embd),
            "mlp.c_proj.weight": normal(4 * n_embd, n_embd), "mlp.c_proj.bias": zeros(n_embd)}.items()})
    state["wte.weight"][eot, 0] = 2.0
    state["ln_f.bias"][0] = 2.0
    header, blobs, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for name, t in state.items():
        blob = t.contiguous().numpy().tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    header = json.dumps(header).encode()
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"".join(blobs))
    (path / "config.json").write_text(json.dumps({
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "activation_function": "gelu_new",
        "n_positions": n_positions, "n_ctx": n_positions, "n_embd": n_embd, "n_head": n_head, "n_layer": n_layer,
        "vocab_size": vocab_size, "layer_norm_epsilon": 1e-5, "bos_token_id": eot, "eos_token_id": eot}))
    return state


@pytest.fixture(scope="module")
def hh(tmp_path_factory):
    """The converted split (its test file stands in for both of the download's files), a BPE of it, the GPT-2."""
    d = tmp_path_factory.mktemp("hh")
    for split in ("train", "test"):
        (d / "raw" / "harmless-base").mkdir(parents=True, exist_ok=True)
        shutil.copy(SHARED / "harmless-base" / "test.jsonl.gz", d / "raw" / "harmless-base" / f"{split}.jsonl.gz")
    subprocess.run([sys.executable, "-m", "data.hh_rlhf", "--src_dir", str(d / "raw"), "--subsets", "harmless-base",
                    "--out_dir", str(d / "data")], cwd=ROOT, check=True, capture_output=True)
    train_tokenizer([r["prompt"] + r["response"] for r in read_jsonl(d / "data" / "sft_train.jsonl", ("prompt", "response"))],
                    d / "tok.tiktoken", vocab_size=384)
    enc = load_tokenizer(str(d / "tok.tiktoken"))
    write_tiny_gpt2(d / "gpt2", enc.n_vocab, enc.eot_token)
    return d


def prompts_cut(enc, prompts):
    """How many prompts the truncation rule cuts to leave room for NEW tokens: those longer than CONTEXT - NEW."""
    return sum(len(enc.encode_ordinary(p)) > CONTEXT - NEW for p in prompts)


def test_the_whole_chain_on_hh_rlhf_from_gpt2_weights(hh, monkeypatch, capsys):
    data, out, tok = hh / "data", hh / "out", str(hh / "tok.tiktoken")
    enc = load_tokenizer(tok)
    device = ["--device", "cpu"]

    def stage(module, *args):
        capsys.readouterr()
        result = module.main([*map(str, args), *device])
        return result, capsys.readouterr().out

    # SFT on the chosen replies, from the GPT-2 files, its context cut from their 256 positions to CONTEXT
    summary, said = stage(sft, "--init_from", hh / "gpt2", "--tokenizer", tok, "--train_file", data / "sft_train.jsonl",
                          "--val_file", data / "sft_val.jsonl", "--eval_prompts", data / "eval_prompts.jsonl",
                          "--out_dir", out / "sft", "--block_size", CONTEXT, "--max_steps", 4, "--batch_size", 4,
                          "--lr", 1e-4, "--eval_interval", 100, "--n_eval", 8, "--max_new_tokens", NEW)
    demos = read_jsonl(data / "sft_train.jsonl", ("prompt", "response"))
    long = sum(len(render(enc, r["prompt"], r["response"])[0]) > CONTEXT for r in demos)
    assert long > len(demos) // 2  # most dialogues are longer than the context: the cut is exercised
    eval_prompts = [r["prompt"] for r in read_jsonl(data / "eval_prompts.jsonl", ("prompt",))]
    assert "context cut from the initial model's 256 tokens to --block_size 128" in said
    assert f"sft_train.jsonl: {len(demos)} examples, {long} truncated to {CONTEXT} tokens" in said
    assert f"eval_prompts.jsonl: 8 prompts, {prompts_cut(enc, eval_prompts[:8])} cut to their " \
           f"last {CONTEXT - NEW} tokens" in said
    assert "(no gold judge" in said and "gold" not in summary and {"val_loss", "length", "eot_rate"} <= summary.keys()
    ckpt = torch.load(out / "sft" / "ckpt.pt", weights_only=True)
    assert ckpt["model_config"]["block_size"] == CONTEXT and ckpt["model"]["transformer.wpe.weight"].shape[0] == CONTEXT
    assert ckpt["tokenizer"] == tok

    # a person labels two comparison sets of the SFT model's replies to HH prompts, then quits
    monkeypatch.setattr(sys, "stdin", io.StringIO("1\n2\nq\n"))
    meta, said = stage(label, "--sft_ckpt", out / "sft" / "ckpt.pt", "--prompts_file", data / "prompts_train.jsonl",
                       "--rater", "human", "--out_dir", out / "label", "--n_pairs", 3, "--max_new_tokens", NEW,
                       "--batch_size", 32)
    train_prompts = [r["prompt"] for r in read_jsonl(data / "prompts_train.jsonl", ("prompt",))]
    assert f"prompts_train.jsonl: {len(train_prompts)} prompts, {prompts_cut(enc, train_prompts)} cut" in said
    assert meta["counts"]["answered"] == meta["counts"]["train_pairs"] == 2
    sets = [json.loads(line) for line in (out / "label" / "samples.jsonl").read_text().splitlines()]
    pairs = [json.loads(line) for line in (out / "label" / "prefs_train.jsonl").read_text().splitlines()]
    for s, p in zip(sets, pairs):
        assert p["rater"] == "human" and p["prompt"] == s["prompt"] in train_prompts
        assert p["chosen"] != p["rejected"] and {p["chosen"], p["rejected"]} <= set(s["responses"])

    # the reward model on the human pairs of HH-RLHF
    summary, said = stage(reward, "--sft_ckpt", out / "sft" / "ckpt.pt", "--train_file", data / "prefs_train.jsonl",
                          "--val_file", data / "prefs_val.jsonl", "--prompts_file", data / "prompts_train.jsonl",
                          "--out_dir", out / "reward", "--max_steps", 3, "--batch_size", 4, "--n_norm", 8,
                          "--max_new_tokens", NEW)
    prefs = read_jsonl(data / "prefs_val.jsonl", ("prompt", "chosen", "rejected"))
    long = sum(fit_pair_to_context(*(render(enc, p["prompt"], p[side]) for side in ("chosen", "rejected")),
                                   CONTEXT)[2] for p in prefs)
    assert f"prefs_val.jsonl: {len(prefs)} pairs, {long} truncated to {CONTEXT} tokens" in said
    assert f"prompts_train.jsonl: 8 prompts, {prompts_cut(enc, train_prompts[:8])} cut" in said
    assert "no gold judge for these pairs" in said and "val_gold_agreement" not in summary
    assert 0 <= summary["val_accuracy"] <= 1

    # PPO on the prompts, scored by that reward model
    summary, said = stage(ppo, "--sft_ckpt", out / "sft" / "ckpt.pt", "--reward_ckpt", out / "reward" / "ckpt.pt",
                          "--prompts_file", data / "prompts_train.jsonl", "--eval_prompts", data / "eval_prompts.jsonl",
                          "--out_dir", out / "ppo", "--iterations", 2, "--rollout_batch", 4, "--minibatch", 2,
                          "--n_eval", 8, "--max_new_tokens", NEW)
    for path, n, cut in ((data / "prompts_train.jsonl", len(train_prompts), prompts_cut(enc, train_prompts)),
                         (data / "eval_prompts.jsonl", 8, prompts_cut(enc, eval_prompts[:8]))):
        assert f"{path}: {n} prompts, {cut} cut to their last {CONTEXT - NEW} tokens" in said
    assert {"score", "rm_win_rate", "kl", "length", "eot_rate", "sft_score"} <= summary.keys()
    assert not any("gold" in k for k in summary) and "win-rate against sft by the reward model" in said
    rows = [json.loads(line) for line in (out / "ppo" / "samples.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in rows] == eval_prompts[:8] and all("score" in r and "gold" not in r for r in rows)

    # DPO on the pairs, its samples scored by the same reward model
    summary, said = stage(dpo, "--sft_ckpt", out / "sft" / "ckpt.pt", "--reward_ckpt", out / "reward" / "ckpt.pt",
                          "--train_file", data / "prefs_train.jsonl", "--val_file", data / "prefs_val.jsonl",
                          "--eval_prompts", data / "eval_prompts.jsonl", "--out_dir", out / "dpo", "--max_steps", 2,
                          "--batch_size", 4, "--n_eval", 8, "--n_val_pairs", 16, "--max_new_tokens", NEW)
    assert {"rewards/accuracies", "score", "rm_win_rate", "kl"} <= summary.keys()
    assert not any("gold" in k for k in summary) and "(no gold judge" in said

    # the report card: no gold column, the reward model's win-rate labelled as its
    text = report.main(["--out_dir", str(out)])
    assert "| policy | reward model | KL to SFT | win-rate vs SFT by the reward model | length |" in text
    assert "gold" not in text.split("## The same held-out prompts")[0]


def test_gpt2_weights_with_the_gpt2_tokenizer_offline_say_how_to_provide_it(hh, tmp_path, monkeypatch):
    """sft.py from GPT-2 weights reads the gpt2 encoding; offline, tiktoken's download fails, and the error says what to do."""
    fetched = []

    def offline(url):
        fetched.append(url)
        raise ConnectionError(f"cannot reach {url}")

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(tiktoken.load, "read_file", offline)  # what tiktoken fetches a file with
    monkeypatch.delitem(tiktoken.registry.ENCODINGS, "gpt2", raising=False)  # loaded earlier in this process
    data = hh / "data"
    with pytest.raises(SystemExit, match="TIKTOKEN_CACHE_DIR set to a folder, copy that folder here"):
        sft.main(["--init_from", str(hh / "gpt2"), "--train_file", str(data / "sft_train.jsonl"), "--val_file",
                  str(data / "sft_val.jsonl"), "--eval_prompts", str(data / "eval_prompts.jsonl"), "--out_dir",
                  str(tmp_path / "sft"), "--device", "cpu"])
    assert fetched and fetched[0].startswith("https://openaipublic.blob.core.windows.net/gpt-2/")
