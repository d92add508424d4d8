import collections
import copy
import json
import math
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

import common
import reward
from common import load_policy, load_reward_model, pad, sample, save_checkpoint, setup_runtime
from data import world
from evaluate import members_spread
from model import REWARD_AGGREGATIONS, GPT, GPTConfig, RewardEnsemble, RewardModel, ensemble_reward
from reward import collate, preference_loss
from tokenizer import EOT, load_tokenizer, save_bpe, train_bpe

ROOT = Path(__file__).resolve().parent.parent


def test_preference_loss_known_values():
    zero = torch.zeros(5)
    assert preference_loss(zero, zero).item() == pytest.approx(math.log(2))
    assert preference_loss(torch.tensor([1.0]), torch.tensor([0.0])).item() == pytest.approx(0.313262, abs=1e-6)
    torch.manual_seed(0)
    c, r = torch.randn(8), torch.randn(8)
    # only the difference matters...
    torch.testing.assert_close(preference_loss(c + 3.7, r + 3.7), preference_loss(c, r))
    # ...a margin asks for that much more of it, one for all pairs or one per pair...
    torch.testing.assert_close(preference_loss(c, r, margin=0.5), preference_loss(c - 0.5, r))
    m = torch.rand(8)
    torch.testing.assert_close(preference_loss(c, r, margin=m), preference_loss(c - m, r))
    # ...and the centering term penalises the common level
    torch.testing.assert_close(preference_loss(c, r, center_coef=0.1), preference_loss(c, r) + 0.1 * ((c + r) ** 2).mean())


def test_gradient_raises_chosen_and_lowers_rejected():
    c, r = torch.zeros(3, requires_grad=True), torch.zeros(3, requires_grad=True)
    preference_loss(c, r).backward()
    assert (c.grad < 0).all() and (r.grad > 0).all()
    torch.testing.assert_close(c.grad, torch.full((3,), -0.5 / 3))  # -sigmoid(0) / N


EOT_ID = 49
PAIRS = [([5, 6, 7, 8, 9, EOT_ID], [5, 6, EOT_ID]),
         ([10, 11, EOT_ID], [10, 11, 12, 13, 14, 15, 16, 17, EOT_ID]),
         ([20, 21, 22, 23, EOT_ID], [20, 21, 22, 23, EOT_ID])]


@torch.no_grad()
def test_reward_is_read_at_end_of_text_whatever_the_padding():
    torch.manual_seed(0)
    rm = RewardModel(GPTConfig(block_size=32, vocab_size=50, n_layer=2, n_head=2, n_embd=16))
    rm.gain.fill_(1.5)
    rm.bias.fill_(0.25)
    seqs = [c for c, _ in PAIRS] + [r for _, r in PAIRS]
    # by hand: the head on the hidden state of each sequence's last token, its end-of-text, times the gain plus the bias
    expected = torch.stack([1.5 * rm.head(rm.gpt.hidden_states(torch.tensor([s]))[0, -1]) + 0.25 for s in seqs])
    for s, e in zip(seqs, expected):
        torch.testing.assert_close(rm(torch.tensor([s]), torch.ones(1, len(s))), e[None])
    # training's layout: chosen rows then rejected rows, right-padded with end-of-text
    torch.testing.assert_close(rm(*collate(PAIRS, EOT_ID, "cpu")), expected)
    # the padding id must not matter, on either side
    for pad_id, left in ((3, False), (EOT_ID, True), (3, True)):
        torch.testing.assert_close(rm(*pad(seqs, pad_id, left=left)), expected)
    # PPO's layout: a left-padded prompt, then a response right-padded after its end-of-text
    cuts = [1, 2, 3, 1, 2, 3]  # prompts of different lengths
    prompt, prompt_mask = pad([s[:k] for s, k in zip(seqs, cuts)], 3, left=True)
    response, response_mask = pad([s[k:] for s, k in zip(seqs, cuts)], EOT_ID)
    ids, mask = torch.cat([prompt, response], 1), torch.cat([prompt_mask, response_mask], 1)
    assert (mask[:, 0] == 0).any() and (mask[:, -1] == 0).any()
    torch.testing.assert_close(rm(ids, mask), expected)


def test_normalisation_known_values():
    raw = torch.tensor([1.0, 3.0, 5.0, 100.0])
    # over the three that ended: mean 3, standard deviation sqrt(8/3)
    gain, bias = reward.normalisation(raw, torch.tensor([True, True, True, False]))
    assert (gain.item(), bias.item()) == pytest.approx((math.sqrt(3 / 8), -3 * math.sqrt(3 / 8)))
    torch.testing.assert_close(gain * raw[:3] + bias, torch.tensor([-math.sqrt(1.5), 0.0, math.sqrt(1.5)]))
    # fewer than two ended: over all four (mean 27.25)
    gain, bias = reward.normalisation(raw, torch.tensor([False, False, True, False]))
    normalised = gain * raw + bias
    assert normalised.mean().item() == pytest.approx(0, abs=1e-6)
    assert normalised.std(correction=0).item() == pytest.approx(1)


@pytest.fixture
def tiny_task(tmp_path):
    """Preference pairs in the real file format (the right sum chosen over a wrong one), a BPE, a random 'SFT' model."""
    prompt = "\n\nHuman: What is {} plus {}?\n\nAssistant:"
    rows = [{"prompt": prompt.format(a, b), "chosen": f" {a} plus {b} is {a + b}.",
             "rejected": f" {a} plus {b} is {a + b + 1 + (a * b) % 3}."} for a in range(10) for b in range(10)]
    for name, part in (("train", rows[:80]), ("val", rows[80:])):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps({"prompt": r["prompt"]}) + "\n" for r in rows[:20]))
    tok = str(tmp_path / "tok.tiktoken")
    save_bpe(train_bpe([r["prompt"] + r["chosen"] + r["rejected"] for r in rows], 300), tok)
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(block_size=64, vocab_size=300, n_layer=1, n_head=2, n_embd=32))
    save_checkpoint(tmp_path / "sft.pt", {"kind": "policy", "model": gpt.state_dict(), "model_config": asdict(gpt.config),
                                          "tokenizer": tok})
    return tmp_path


def tiny_args(d, out):
    return ["--sft_ckpt", str(d / "sft.pt"), "--train_file", str(d / "train.jsonl"), "--val_file",
            str(d / "val.jsonl"), "--prompts_file", str(d / "prompts.jsonl"), "--out_dir", str(d / out),
            "--batch_size", "8", "--max_steps", "8", "--warmup_steps", "2", "--eval_interval", "4",
            "--ckpt_interval", "4", "--n_norm", "12", "--max_new_tokens", "8"]


def test_normalised_reward_scores_sft_samples_at_mean_zero_and_std_one(tiny_task):
    # a random "SFT" model rarely ends a response: raise its end-of-text logit by 4 so that most of them do
    sft = common.load_checkpoint(tiny_task / "sft.pt")
    enc = load_tokenizer(sft["tokenizer"])
    eot_embedding = sft["model"]["transformer.wte.weight"][enc.eot_token]
    sft["model"]["transformer.ln_f.bias"] = 4 * eot_embedding / eot_embedding.norm() ** 2
    save_checkpoint(tiny_task / "sft_ending.pt", sft)
    summary = reward.main(tiny_args(tiny_task, "rm") + ["--sft_ckpt", str(tiny_task / "sft_ending.pt")])
    rm, _ = load_reward_model(tiny_task / "rm" / "ckpt.pt")
    assert rm.bias.item() == summary["norm_bias"] != 0 and rm.gain.item() == summary["norm_gain"] != 1
    # score the SFT policy's samples again, from the checkpoints alone, the way PPO will
    policy, _, _ = load_policy(tiny_task / "sft_ending.pt")
    prompts = [json.loads(l)["prompt"] for l in (tiny_task / "prompts.jsonl").read_text().splitlines()][:12]
    rt = setup_runtime("cpu", "float32", 0)
    batches = sample(policy, common.encode_prompts(enc, prompts, 64, 8)[0], rt, enc.eot_token, 8, 1.0, 64, 0)
    with torch.no_grad():
        scores = torch.cat([rm(torch.cat([p, t], 1), torch.cat([pm, m], 1)) for p, pm, t, m in batches])
    ended = torch.cat([(t == enc.eot_token).any(1) for _, _, t, _ in batches])
    assert summary["norm_ended"] == ended.float().mean().item() and 2 <= ended.sum() < len(ended)
    # the samples that ended score mean 0 and standard deviation 1; the others do not count
    assert abs(scores[ended].mean().item()) < 1e-5
    assert scores[ended].std(correction=0).item() == pytest.approx(1, abs=1e-5)
    ckpt = common.load_checkpoint(tiny_task / "rm" / "ckpt.pt")
    assert set(ckpt) >= {"model", "model_config", "tokenizer", "config", "step", "summary"}
    assert ckpt["model_config"]["dropout"] == 0.0 and ckpt["step"] == 8


def test_resume_after_interruption_gives_the_same_weights(tiny_task, killed_at_first_checkpoint):
    reward.main(tiny_args(tiny_task, "straight"))
    straight = common.load_checkpoint(tiny_task / "straight" / "ckpt.pt")
    with killed_at_first_checkpoint():  # the process dies right after its first checkpoint (step 4 of 8)
        reward.main(tiny_args(tiny_task, "interrupted"))
    reward.main(["--out_dir", str(tiny_task / "interrupted"), "--resume"])
    resumed = common.load_checkpoint(tiny_task / "interrupted" / "ckpt.pt")
    for k, v in straight["model"].items():
        assert torch.equal(v, resumed["model"][k]), k
    assert resumed["summary"] == straight["summary"]


def test_two_torchrun_processes_equal_one(tiny_task):
    """
    DDP on CPU (gloo): each process takes half of every batch of pairs, and the losses and weights match one process;
    the normalisation is set from the samples of both processes, each of which answered half of the prompts.
    """
    # the centering term pins the rewards' common level, which the loss alone leaves to rounding noise (that Adam
    # would blow up into steps of the learning rate)
    args = lambda out: tiny_args(tiny_task, out) + ["--center_coef", "0.1"]
    reward.main(args("one"))
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          str(ROOT / "reward.py"), *args("two")], capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("saved") == 1  # the master alone reports and writes
    a, b = (common.load_checkpoint(tiny_task / run / "ckpt.pt")["model"] for run in ("one", "two"))
    for k in a.keys() - {"gain", "bias"}:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)
    read = lambda run: [json.loads(l) for l in (tiny_task / run / "metrics.jsonl").read_text().splitlines()]
    for x, y in zip(read("one")[:8], read("two")[:8]):
        assert (x["loss"], x["accuracy"]) == pytest.approx((y["loss"], y["accuracy"]), abs=1e-5)
    assert read("two")[3]["val_accuracy"] == pytest.approx(read("one")[3]["val_accuracy"])  # the master evaluated

    # process r sampled prompts r, r + 2, ... with seed r: over all of them the raw rewards set the gain and bias
    policy, spec, _ = load_policy(tiny_task / "sft.pt")
    enc = load_tokenizer(spec)
    rm, _ = load_reward_model(tiny_task / "two" / "ckpt.pt")
    rm.gain.fill_(1.0)
    rm.bias.zero_()
    prompts = [json.loads(l)["prompt"] for l in (tiny_task / "prompts.jsonl").read_text().splitlines()][:12]
    rt = setup_runtime("cpu", "float32", 0)
    raw, ended = [], []
    for rank in (0, 1):
        ids, _ = common.encode_prompts(enc, prompts[rank::2], 64, 8)
        for p, pm, t, m in sample(policy, ids, rt, enc.eot_token, 8, 1.0, 64, rank):
            with torch.no_grad():
                raw.append(rm(torch.cat([p, t], 1), torch.cat([pm, m], 1)))
            ended.append((t == enc.eot_token).any(1))
    gain, bias = reward.normalisation(torch.cat(raw), torch.cat(ended))
    assert (b["gain"].item(), b["bias"].item()) == pytest.approx((gain.item(), bias.item()), rel=1e-4)
    assert b["gain"] != a["gain"]  # not one process's normalisation: its samples are others


def test_help_lists_every_field():
    out = subprocess.run([sys.executable, str(ROOT / "reward.py"), "--help"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    for name in reward.Config.__dataclass_fields__:
        assert f"--{name}" in out.stdout


def test_flags_need_all_three_files(tiny_task):
    with pytest.raises(SystemExit, match="also give --val_file and --prompts_file"):
        reward.main(["--sft_ckpt", str(tiny_task / "sft.pt"), "--train_file", str(tiny_task / "train.jsonl")])


def test_smoke_builtin_task_through_the_command_line(tmp_path):
    """sft.py then reward.py, shrunk, on the built-in task: gold agreement and the raters' ceiling get reported."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # a tiny model gains nothing from threads, which only contend
    run = lambda script, *args: subprocess.run([sys.executable, str(ROOT / script), *args], cwd=tmp_path, env=env,
                                               capture_output=True, text=True, timeout=300)
    out = run("sft.py", "--max_steps", "3", "--n_layer", "1", "--n_embd", "32", "--batch_size", "4", "--n_eval", "4",
              "--max_new_tokens", "8")
    assert out.returncode == 0, out.stderr
    tiny = ["--max_steps", "4", "--batch_size", "4", "--eval_interval", "2", "--n_norm", "8", "--max_new_tokens", "8"]
    # by default the pairs are label.py's: without them it says what to run
    out = run("reward.py", *tiny)
    assert out.returncode != 0 and "run `python label.py` first" in out.stderr
    assert run("reward.py", *tiny, "--pairs", "scripted").returncode == 0
    # label.py's files (here the scripted pairs, standing in) are what the default reads
    (tmp_path / "out" / "label").mkdir()
    for name in ("prefs_train.jsonl", "prefs_val.jsonl"):
        (tmp_path / "out" / "label" / name).write_text((tmp_path / "out" / "data" / name).read_text())
    out = run("reward.py", *tiny)
    assert out.returncode == 0, out.stderr
    assert "out/label/prefs_train.jsonl: 10000 pairs" in out.stdout and "agreement with the gold judge" in out.stdout
    summary = common.load_checkpoint(tmp_path / "out" / "reward" / "ckpt.pt")["summary"]
    assert set(summary) >= {"val_loss", "val_accuracy", "val_reward_mean", "val_reward_std", "val_margin",
                            "val_gold_agreement", "raters_ceiling", "norm_bias"}
    assert 0 < summary["raters_ceiling"] < 1
    logged = [json.loads(l) for l in (tmp_path / "out" / "reward" / "metrics.jsonl").read_text().splitlines()]
    assert [l["step"] for l in logged] == [1, 2, 3, 4, 4] and "val_gold_agreement" in logged[1]
    # the agreement within each pair of the judge's classes (better > worse) adds up to the overall agreement
    val = [json.loads(l) for l in (tmp_path / "out" / "label" / "prefs_val.jsonl").read_text().splitlines()]
    judged = [(world.judge(v["prompt"], v["chosen"] + EOT), world.judge(v["prompt"], v["rejected"] + EOT)) for v in val]
    counts = collections.Counter(f"{max(a, b)[1]}>{min(a, b)[1]}" for a, b in judged)
    overall = sum(n * summary[f"val_gold_agreement/{k}"] for k, n in counts.items()) / len(val)
    assert overall == pytest.approx(summary["val_gold_agreement"])
    right_wrong = summary["val_gold_agreement/right>wrong"]
    assert counts["right>wrong"] > 50 and f"right>wrong {right_wrong:.0%} of {counts['right>wrong']}" in out.stdout


def test_final_validation_numbers_are_on_the_scale_of_the_training_curve(tiny_task):
    """reward.py's last validation numbers, like every earlier one, are of the head before normalisation."""
    summary = reward.main(tiny_args(tiny_task, "rm"))
    rm, spec = load_reward_model(tiny_task / "rm" / "ckpt.pt")
    assert summary["norm_gain"] != pytest.approx(1.0, abs=0.01)
    rm.gain.fill_(1.0)
    rm.bias.zero_()
    enc = load_tokenizer(spec)
    _, pairs = reward.load_pairs(tiny_task / "val.jsonl", enc, 64, lambda *a: None)
    raw = reward.evaluate(rm, pairs, reward.Config(), setup_runtime("cpu"), enc.eot_token)
    for key in ("val_loss", "val_margin", "val_reward_mean", "val_reward_std", "val_accuracy"):
        assert summary[key] == pytest.approx(raw[key], abs=1e-6), key


def test_ensemble_aggregations_known_values():
    scores = torch.tensor([[1.0, 0.0, -2.0], [3.0, 0.0, 2.0]])  # 2 members x 3 responses
    assert ensemble_reward(scores, "mean").tolist() == [2.0, 0.0, 0.0]
    assert ensemble_reward(scores, "min").tolist() == [1.0, 0.0, -2.0]
    # the members' variance (over members, not n - 1): [1, 0, 4]; less half of it
    assert ensemble_reward(scores, "uwo", 0.5).tolist() == [1.5, 0.0, -2.0]
    assert ensemble_reward(scores, "uwo", 0.0).tolist() == [2.0, 0.0, 0.0]
    for how in REWARD_AGGREGATIONS:  # one member is that member, whatever the aggregation
        assert torch.equal(ensemble_reward(scores[1:], how, 3.0), scores[1])
    with pytest.raises(ValueError, match="unknown aggregation 'max'"):
        ensemble_reward(scores, "max")


@torch.no_grad()
def test_weight_average_is_the_mean_of_the_weights():
    torch.manual_seed(0)
    config = GPTConfig(block_size=32, vocab_size=50, n_layer=1, n_head=2, n_embd=16)
    a, b = RewardModel(config), RewardModel(config)
    ids, mask = collate(PAIRS, EOT_ID, "cpu")
    same = reward.weight_average([a, copy.deepcopy(a)])  # of identical members: each of them
    for k, v in a.state_dict().items():
        assert torch.equal(same.state_dict()[k], v), k
    torch.testing.assert_close(same(ids, mask), a(ids, mask), rtol=0, atol=0)
    mixed = reward.weight_average([a, b])
    for k, v in mixed.state_dict().items():
        torch.testing.assert_close(v, (a.state_dict()[k] + b.state_dict()[k]) / 2)
    assert not torch.equal(mixed(ids, mask), a(ids, mask))


@torch.no_grad()
def test_members_spread_known_values():
    torch.manual_seed(0)
    config = GPTConfig(block_size=32, vocab_size=50, n_layer=1, n_head=2, n_embd=16)
    a = RewardModel(config)
    b, c = copy.deepcopy(a), copy.deepcopy(a)
    b.bias.fill_(2.0)  # b scores every response 2 above a
    prompt, prompt_mask = torch.tensor([[0, 5, 6], [7, 8, 9]]), torch.tensor([[0, 1, 1], [1, 1, 1]])
    tokens, mask = torch.tensor([[3, 4, 0], [10, 11, 12]]), torch.tensor([[1, 1, 0], [1, 1, 1]])
    batches, rt = [(prompt, prompt_mask, tokens, mask)], setup_runtime(device="cpu")
    assert members_spread(RewardEnsemble([a, c]), batches, rt) == [0.0, 0.0]  # members that agree
    assert members_spread(RewardEnsemble([a, b]), batches, rt) == pytest.approx([1.0, 1.0])  # 2 apart: std 1


def test_an_ensemble_of_members_warm_and_resume(tiny_task, killed_at_first_checkpoint):
    single = reward.main(tiny_args(tiny_task, "one"))
    three = lambda out: tiny_args(tiny_task, out) + ["--members", "3", "--warm"]
    summary = reward.main(three("three"))
    one = common.load_checkpoint(tiny_task / "one" / "ckpt.pt")
    ensemble, _ = load_reward_model(tiny_task / "three" / "ckpt.pt")
    assert isinstance(ensemble, RewardEnsemble) and len(ensemble.members) == 3
    # member 0 is the single model, normalisation included: the same head, data order and samples
    for k, v in one["model"].items():
        assert torch.equal(ensemble.members[0].state_dict()[k], v), k
    assert not torch.equal(ensemble.members[1].head.proj.weight, ensemble.members[0].head.proj.weight)
    assert summary["member0/val_accuracy"] == pytest.approx(single["val_accuracy"])
    assert summary["member0/norm_gain"] == pytest.approx(single["norm_gain"])

    # scored as one: the mean of the members, or the aggregation asked for
    enc = load_tokenizer(one["tokenizer"])
    _, pairs = reward.load_pairs(tiny_task / "val.jsonl", enc, 64, lambda *a: None)
    ids, mask = collate(pairs, enc.eot_token, "cpu")
    with torch.no_grad():
        members = ensemble.member_rewards(ids, mask)
        torch.testing.assert_close(ensemble(ids, mask), members.mean(0))
        worst, _ = load_reward_model(tiny_task / "three" / "ckpt.pt", how="min")
        torch.testing.assert_close(worst(ids, mask), members.min(0).values)
        cautious, _ = load_reward_model(tiny_task / "three" / "ckpt.pt", how="uwo", uwo_lambda=2.0)
        torch.testing.assert_close(cautious(ids, mask), members.mean(0) - 2 * members.var(0, correction=0))

        # the weight average: one ordinary reward model, the members' mean weights, normalised on its own
        warm, _ = load_reward_model(tiny_task / "three" / "warm.pt")
        assert isinstance(warm, RewardModel)
        for k, v in warm.state_dict().items():
            if k not in ("gain", "bias"):
                torch.testing.assert_close(v, torch.stack([m.state_dict()[k] for m in ensemble.members]).mean(0))
        assert warm.gain.item() == summary["warm/norm_gain"] not in [summary[f"member{m}/norm_gain"] for m in range(3)]

    # killed within member 0, or at the end of member 0 (no checkpoint before it), each resumes to the same end
    for out, extra in (("killed_in_member0", []), ("killed_between", ["--ckpt_interval", "100"])):
        with killed_at_first_checkpoint():
            reward.main(three(out) + extra)
        assert common.load_checkpoint(tiny_task / out / "ckpt.pt")["step"] == (4 if not extra else 8)
        reward.main(["--out_dir", str(tiny_task / out), "--resume"])
        resumed = common.load_checkpoint(tiny_task / out / "ckpt.pt")
        for k, v in common.load_checkpoint(tiny_task / "three" / "ckpt.pt")["model"].items():
            assert torch.equal(v, resumed["model"][k]), (out, k)
        assert resumed["summary"] == summary
        steps = [json.loads(l)["step"] for l in (tiny_task / out / "metrics.jsonl").read_text().splitlines()]
        assert steps == list(range(1, 25)) + [24]


def test_ensemble_refusals(tiny_task):
    with pytest.raises(SystemExit, match="--warm averages the members' weights: give --members 2 or more"):
        reward.main(tiny_args(tiny_task, "warm1") + ["--warm"])
    with pytest.raises(SystemExit, match="--members must be at least 1, not 0"):
        reward.main(tiny_args(tiny_task, "none") + ["--members", "0"])
    reward.main(tiny_args(tiny_task, "one"))
    with pytest.raises(SystemExit, match="is one reward model, and --reward_agg min aggregates an ensemble"):
        load_reward_model(tiny_task / "one" / "ckpt.pt", how="min")
    with pytest.raises(SystemExit, match="--reward_agg must be one of mean, min, uwo, not 'max'"):
        load_reward_model(tiny_task / "one" / "ckpt.pt", how="max")


def test_bootstrap_gives_each_member_its_own_resample(tiny_task):
    pairs = list(range(1000))
    drawn = reward.bootstrap(pairs, 0)
    assert len(drawn) == 1000 and set(drawn) <= set(pairs)
    assert 0.60 < len(set(drawn)) / 1000 < 0.66  # with replacement: 1 - 1/e of them, about, some twice or more
    assert drawn == reward.bootstrap(pairs, 0) != reward.bootstrap(pairs, 1)
    # through the command line: member 0 no longer learns what the single model learns (same seed, other pairs)
    reward.main(tiny_args(tiny_task, "one"))
    reward.main(tiny_args(tiny_task, "resampled") + ["--members", "2", "--bootstrap"])
    one = common.load_checkpoint(tiny_task / "one" / "ckpt.pt")["model"]
    members = common.load_checkpoint(tiny_task / "resampled" / "ckpt.pt")["model"]
    assert not torch.equal(members["members.0.head.proj.weight"], one["head.proj.weight"])
    with pytest.raises(SystemExit, match="--bootstrap gives each member of an ensemble its own resample"):
        reward.main(tiny_args(tiny_task, "boot1") + ["--bootstrap"])
