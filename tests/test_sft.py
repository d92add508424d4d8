import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import tiktoken
import torch

import common
import sft
from common import fit_to_context, parse_config, read_jsonl
from model import GPT, GPTConfig
from tokenizer import save_bpe, train_bpe

ROOT = Path(__file__).resolve().parent.parent


def test_loss_mask_ignores_prompt_tokens():
    torch.manual_seed(0)
    ids = torch.randint(0, 20, (2, 8))
    loss_mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 0], [0, 0, 0, 0, 0, 1, 1, 1]])
    full = torch.randn(2, 8, 20)
    model = lambda ids, where: full[where]  # fixed logits: only the targets change below
    base = sft.sft_loss(model, ids, loss_mask)
    changed = ids.clone()
    changed[0, 2] = (ids[0, 2] + 1) % 20  # a prompt token as a target
    changed[1, 4] = (ids[1, 4] + 1) % 20
    assert sft.sft_loss(model, changed, loss_mask) == base
    changed[0, 5] = (ids[0, 5] + 1) % 20  # a response token as a target
    assert sft.sft_loss(model, changed, loss_mask) != base
    # it is the mean cross-entropy over the masked targets
    ce = torch.nn.functional.cross_entropy(full[:, :-1].flatten(0, 1), ids[:, 1:].flatten(), reduction="none")
    torch.testing.assert_close(base, ce[loss_mask[:, 1:].flatten().bool()].mean())


def test_sft_loss_needs_logits_only_on_trained_positions():
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=16, vocab_size=50, n_layer=2, n_head=2, n_embd=16))
    ids = torch.randint(0, 50, (3, 10))
    loss_mask = (torch.arange(10) >= torch.tensor([[4], [6], [2]])).long()
    ce = torch.nn.functional.cross_entropy(model(ids)[:, :-1].flatten(0, 1), ids[:, 1:].flatten(), reduction="none")
    torch.testing.assert_close(sft.sft_loss(model, ids, loss_mask), ce[loss_mask[:, 1:].flatten().bool()].mean())


@pytest.mark.parametrize("line,message", [
    ("{not json", "not valid JSON"),
    ('{"prompt": "p"}', "missing field 'response'"),
    ('{"prompt": "p", "response": 3}', "field 'response' must be a string"),
    ('{"prompt": "p", "response": "  "}', "field 'response' is empty"),
    ('["p", "r"]', "expected a JSON object"),
])
def test_malformed_jsonl_names_file_and_line(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "a", "response": "b"}\n\n' + line + "\n")
    with pytest.raises(SystemExit, match=f"bad.jsonl:3: {message}"):
        read_jsonl(path, ("prompt", "response"))


def test_truncation_rule():
    ids, mask = list(range(10)), [0] * 6 + [1] * 4
    # the prompt loses tokens from the left first
    assert fit_to_context(ids, mask, 8) == (list(range(2, 10)), [0] * 4 + [1] * 4, True)
    # it keeps at least half the context, then the response loses its end
    assert fit_to_context(ids, mask, 4) == ([4, 5, 6, 7], [0, 0, 1, 1], True)
    assert fit_to_context(ids, mask, 10) == (ids, mask, False)


def test_command_line_from_dataclass(capsys):
    cfg, given = parse_config(sft.Config, ["--lr", "0.01", "--compile", "--out_dir", "x"])
    assert (cfg.lr, cfg.compile, cfg.out_dir, cfg.max_steps) == (0.01, True, "x", sft.Config.max_steps)
    assert given == {"lr", "compile", "out_dir"}
    with pytest.raises(SystemExit):
        parse_config(sft.Config, ["--lr", "fast"])
    assert "invalid float value: 'fast'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_config(sft.Config, ["--nonsense", "1"])
    assert "unrecognized arguments: --nonsense" in capsys.readouterr().err


def test_help_lists_every_field():
    out = subprocess.run([sys.executable, str(ROOT / "sft.py"), "--help"], capture_output=True, text=True).stdout
    for name in sft.Config.__dataclass_fields__:
        assert f"--{name}" in out
    assert "peak learning rate (default: 0.002)" in " ".join(out.split())


@pytest.fixture
def tiny_data(tmp_path):
    """A small {prompt, response} dataset and a BPE trained on it, in the real file formats."""
    rows = [{"prompt": f"\n\nHuman: What is {a} plus {b}?\n\nAssistant:", "response": f" {a} plus {b} is {a + b}."}
            for a in range(12) for b in range(12)]
    for name, part in (("train", rows[:120]), ("val", rows[120:])):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps({"prompt": r["prompt"]}) + "\n" for r in rows[120:]))
    save_bpe(train_bpe([r["prompt"] + r["response"] for r in rows], 300), tmp_path / "tok.tiktoken")
    return tmp_path


def tiny_args(d, out, tokenizer=True):
    return ["--train_file", str(d / "train.jsonl"), "--val_file", str(d / "val.jsonl"), "--eval_prompts",
            str(d / "prompts.jsonl"), "--out_dir", str(d / out), "--n_layer", "1", "--n_embd", "32", "--n_head", "2",
            "--batch_size", "8", "--max_steps", "8", "--warmup_steps", "2", "--eval_interval", "4", "--ckpt_interval",
            "4", "--n_eval", "4", "--max_new_tokens", "8", "--dropout", "0.1"] + \
        (["--tokenizer", str(d / "tok.tiktoken")] if tokenizer else [])


def test_resume_after_a_kill_gives_the_same_weights_and_metrics(tiny_data, monkeypatch):
    sft.main(tiny_args(tiny_data, "straight"))
    straight = common.load_checkpoint(tiny_data / "straight" / "ckpt.pt")

    real_lr_at = sft.lr_at

    def killed_at_step_6(step, *args):  # two steps after the checkpoint of step 4, both already logged
        if step == 6:
            raise KeyboardInterrupt
        return real_lr_at(step, *args)

    monkeypatch.setattr(sft, "lr_at", killed_at_step_6)
    with pytest.raises(KeyboardInterrupt):
        sft.main(tiny_args(tiny_data, "interrupted"))
    assert common.load_checkpoint(tiny_data / "interrupted" / "ckpt.pt")["step"] == 4
    monkeypatch.setattr(sft, "lr_at", real_lr_at)
    sft.main(["--out_dir", str(tiny_data / "interrupted"), "--resume"])
    resumed = common.load_checkpoint(tiny_data / "interrupted" / "ckpt.pt")

    assert resumed["step"] == straight["step"] == 8
    for k, v in straight["model"].items():
        assert torch.equal(v, resumed["model"][k]), k
    # metrics.jsonl dropped the steps 5 and 6 that the checkpoint does not hold: each step once, in order, then
    # the final summary, exactly as the uninterrupted run logged them
    read = lambda run: [json.loads(l) for l in (tiny_data / run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in read("interrupted")] == list(range(1, 9)) + [8]
    assert [m["loss"] for m in read("interrupted")[:8]] == [m["loss"] for m in read("straight")[:8]]


def test_gradient_accumulation_equals_one_batch(tiny_data, monkeypatch):
    """Two micro-batches of 4 make the step of one batch of 8: the loss is the mean over all their trained tokens."""
    # batches in shuffle order, not grouped by length, so that batch k of 8 is micro-batches 2k and 2k+1 of 4
    monkeypatch.setattr(sft, "batch_at", lambda n, batch_size, k, seed, lengths: common.batch_at(n, batch_size, k, seed))
    # responses of different lengths: micro-batches of different numbers of trained tokens, which a mean of
    # micro-batch means would weigh wrongly
    rows = [json.loads(l) for l in (tiny_data / "train.jsonl").read_text().splitlines()]
    (tiny_data / "train.jsonl").write_text("".join(json.dumps({**r, "response": r["response"] + " Sure." * (i % 5)})
                                                   + "\n" for i, r in enumerate(rows)))
    enc = sft.load_tokenizer(str(tiny_data / "tok.tiktoken"))
    train = sft.load_examples(tiny_data / "train.jsonl", enc, 128)
    counts = [sum(sum(train[i][1][1:]) for i in common.batch_at(len(train), 4, k, 0)) for k in range(6)]
    assert all(counts[k] != counts[k + 1] for k in (0, 2, 4))
    steps = ["--max_steps", "3", "--dropout", "0"]
    accumulated = sft.main(tiny_args(tiny_data, "accumulated") + steps + ["--batch_size", "4", "--grad_accum", "2"])
    whole = sft.main(tiny_args(tiny_data, "whole") + steps)
    a = common.load_checkpoint(tiny_data / "accumulated" / "ckpt.pt")["model"]
    b = common.load_checkpoint(tiny_data / "whole" / "ckpt.pt")["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-5)
    assert accumulated["val_loss"] == pytest.approx(whole["val_loss"], abs=1e-6)


def test_more_processes_than_sequences_is_an_error(tiny_data, monkeypatch):
    four = lambda *a: common.Runtime(torch.device("cpu"), torch.float32, torch.amp.GradScaler("cpu", enabled=False),
                                     rank=3, world_size=4)
    monkeypatch.setattr(common, "setup_runtime", four)
    with pytest.raises(SystemExit, match="--batch_size 2 is smaller than the 4 processes"):
        sft.main(tiny_args(tiny_data, "four") + ["--batch_size", "2"])


def test_from_scratch_on_own_data_trains_its_tokenizer_offline(tiny_data, monkeypatch, capsys):
    """Without --init_from and --tokenizer, sft.py trains a BPE on the training file, as for the built-in task."""
    def no_network(*args, **kwargs):
        raise OSError("this test is offline")

    monkeypatch.setattr(tiktoken, "get_encoding", no_network)  # what the gpt2 tokenizer needs on first use
    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    sft.main(tiny_args(tiny_data, "own", tokenizer=False) + ["--max_steps", "2"])
    tokenizer = tiny_data / "own" / "tokenizer.tiktoken"  # beside the checkpoint, which names it
    assert "-token BPE on 120 texts" in capsys.readouterr().out
    ckpt = common.load_checkpoint(tiny_data / "own" / "ckpt.pt")
    assert ckpt["tokenizer"] == str(tokenizer)
    enc = sft.load_tokenizer(str(tokenizer))
    assert ckpt["model_config"]["vocab_size"] == enc.n_vocab < 2048  # the data runs out of merges first
    assert len(enc.encode_ordinary(" 7 plus 5 is 12.")) < len(" 7 plus 5 is 12.") / 2  # and it has learned them


def test_non_finite_loss_stops_with_clear_error(tiny_data, monkeypatch):
    monkeypatch.setattr(sft, "sft_loss", lambda *a: torch.tensor(float("nan"), requires_grad=True))
    with pytest.raises(FloatingPointError, match=r"loss is nan at step 0; stopping \(no checkpoint was written yet\)"):
        sft.main(tiny_args(tiny_data, "nan"))


def test_smoke_builtin_task_through_the_command_line(tmp_path):
    """The default run, shrunk: generates the built-in task and its tokenizer, trains, samples, reports."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "sft.py"), "--max_steps", "3", "--n_layer", "1", "--n_embd", "32",
         "--batch_size", "4", "--n_eval", "4", "--max_new_tokens", "8", "--eval_interval", "3"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "sft on 4 prompts of out/data/eval_prompts.jsonl: gold" in out.stdout and "evasive" in out.stdout
    ckpt = common.load_checkpoint(tmp_path / "out" / "sft" / "ckpt.pt")
    assert ckpt["step"] == 3 and ckpt["config"]["max_steps"] == 3
    assert set(ckpt["summary"]) >= {"gold", "eot_rate", "length", "val_loss", "distinct", "right", "wrong", "unsure"}
    # the samples the report card shows: each with the judge's verdict
    rows = common.read_jsonl(tmp_path / "out" / "sft" / "samples.jsonl", ("prompt", "response", "label"))
    assert len(rows) == 4 and all(r["label"] in ("right", "wrong", "unsure", "evasive") for r in rows)
    assert ckpt["tokenizer"] == str(tmp_path / "out" / "tokenizer.tiktoken")
    assert len((tmp_path / "out" / "sft" / "metrics.jsonl").read_text().splitlines()) == 4


def test_two_torchrun_processes_equal_one(tiny_data):
    """
    DDP on CPU (gloo): each process takes half of every batch; the weights match a single process.
    """
    # dropout masks differ per split; each run trains its tokenizer (the same), the torchrun ones on one process only
    args = lambda out: tiny_args(tiny_data, out, tokenizer=False) + ["--grad_accum", "2", "--dropout", "0"]
    sft.main(args("one"))
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          str(ROOT / "sft.py"), *args("two")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("saved") == 1  # the master alone reports and writes
    a = common.load_checkpoint(tiny_data / "one" / "ckpt.pt")["model"]
    b = common.load_checkpoint(tiny_data / "two" / "ckpt.pt")["model"]
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)
    # and training did happen: the losses fell alike
    losses = [[json.loads(l)["loss"] for l in (tiny_data / run / "metrics.jsonl").read_text().splitlines()[:8]]
              for run in ("one", "two")]
    assert losses[0][-1] < losses[0][0]
    assert losses[0] == pytest.approx(losses[1], abs=1e-4)
