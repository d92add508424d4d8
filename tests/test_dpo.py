import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import common as dpo_common
import dpo
import label
from common import batch_at, load_policy, save_checkpoint, setup_runtime
from dpo import all_pair_logps, dpo_loss, pair_logps, sequence_logps
from model import GPT, GPTConfig
from tokenizer import load_tokenizer

ROOT = Path(__file__).resolve().parent.parent


def with_h(h):
    """Sequence log-probs whose difference of log-ratios is h (reference log-probs arbitrary)."""
    ref_c, ref_r = torch.tensor([-7.0]), torch.tensor([-4.0])
    return ref_c + h, ref_r, ref_c, ref_r


@pytest.mark.parametrize("beta", [0.01, 0.1, 0.5, 3.0])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1, 0.4])
def test_loss_is_ln2_when_policy_equals_reference(beta, label_smoothing):
    logps = torch.randn(2, 6) * 10
    losses, chosen, rejected = dpo_loss(logps[0], logps[1], logps[0], logps[1], beta, "sigmoid", label_smoothing)
    torch.testing.assert_close(losses, torch.full((6,), math.log(2)))
    assert (chosen == 0).all() and (rejected == 0).all()


def test_sigmoid_and_conservative_values():
    losses, _, _ = dpo_loss(*with_h(2.0), beta=0.1)
    assert losses.item() == pytest.approx(0.598139, abs=1e-6)
    losses, _, _ = dpo_loss(*with_h(2.0), beta=0.1, label_smoothing=0.1)
    assert losses.item() == pytest.approx(0.618139, abs=1e-6)


@pytest.mark.parametrize("h,expected", [(0.0, 25.0), (2.0, 9.0), (5.0, 0.0)])
def test_ipo_values(h, expected):
    losses, _, _ = dpo_loss(*with_h(h), beta=0.1, loss_type="ipo")
    assert losses.item() == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("h,expected", [(0.0, 1.0), (2.0, 0.8), (20.0, 0.0)])
def test_hinge_values(h, expected):
    losses, _, _ = dpo_loss(*with_h(h), beta=0.1, loss_type="hinge")
    assert losses.item() == pytest.approx(expected, abs=1e-6)


def test_implicit_rewards_are_detached_log_ratios():
    policy_c = torch.tensor([-3.0, -5.0], requires_grad=True)
    policy_r = torch.tensor([-6.0, -2.0], requires_grad=True)
    ref_c, ref_r = torch.tensor([-4.0, -4.0]), torch.tensor([-4.0, -4.0])
    losses, chosen, rejected = dpo_loss(policy_c, policy_r, ref_c, ref_r, beta=0.5)
    torch.testing.assert_close(chosen, torch.tensor([0.5, -0.5]))
    torch.testing.assert_close(rejected, torch.tensor([-1.0, 1.0]))
    assert not chosen.requires_grad and not rejected.requires_grad
    losses.sum().backward()  # DPO raises the chosen and lowers the rejected
    assert (policy_c.grad < 0).all() and (policy_r.grad > 0).all()


def test_unknown_loss_type():
    with pytest.raises(ValueError, match="loss_type"):
        dpo_loss(*with_h(1.0), beta=0.1, loss_type="kto")


@pytest.mark.parametrize("loss_type", ["ipo", "hinge"])
def test_label_smoothing_is_for_the_sigmoid_loss_only(loss_type, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=f"label_smoothing is for the sigmoid loss only, not {loss_type}"):
        dpo_loss(*with_h(1.0), beta=0.1, loss_type=loss_type, label_smoothing=0.1)
    monkeypatch.chdir(tmp_path)  # the command line refuses it before it reads anything
    with pytest.raises(SystemExit, match=f"--label_smoothing is for --loss_type sigmoid .*; {loss_type} has no use"):
        dpo.main(["--loss_type", loss_type, "--label_smoothing", "0.1"])


# --- sequence log-probs: response tokens only, padding ignored ---------------------------------------------

EOT = 49


def tiny():
    torch.manual_seed(0)
    return GPT(GPTConfig(block_size=32, vocab_size=50, n_layer=2, n_head=2, n_embd=16)).eval()


def rendered(prompt, response):
    """What tokenizer.render returns: prompt + response + end-of-text, the mask on the last two parts."""
    return prompt + response + [EOT], [0] * len(prompt) + [1] * (len(response) + 1)


def by_hand(model, ids, mask):
    """The sum over response positions of log p(ids[t] | ids[:t]), one position at a time."""
    logp = F.log_softmax(model(torch.tensor([ids]))[0], -1)
    return sum(logp[t - 1, ids[t]].item() for t in range(1, len(ids)) if mask[t])


PAIRS = [(rendered([5, 6, 7], [8, 9]), rendered([5, 6, 7], [10, 11, 12, 13, 14])),
         (rendered([20, 21, 22, 23, 24, 25, 26], [30]), rendered([20, 21, 22, 23, 24, 25, 26], [31, 32, 33]))]


def test_pair_logps_sum_response_tokens_only():  # the prompt's tokens are context, not counted
    model = tiny()
    pairs = [(*c, *r) for c, r in PAIRS]
    chosen, rejected = pair_logps(model, pairs, EOT, setup_runtime("cpu", "float32"))
    for (c, r), lc, lr in zip(PAIRS, chosen, rejected):
        assert lc.item() == pytest.approx(by_hand(model, *c), abs=1e-4)
        assert lr.item() == pytest.approx(by_hand(model, *r), abs=1e-4)


def test_mean_logps_and_logits_on_response_tokens_only():
    model = tiny()
    pairs = [(*c, *r) for c, r in PAIRS]
    ids, loss_mask = dpo.collate(pairs, EOT, "cpu")
    # the old way: logits at every position, then the mask
    full = (dpo.token_logprobs(model(ids)[:, :-1], ids[:, 1:]) * loss_mask[:, 1:]).sum(1)
    rows = []
    model.lm_head.register_forward_hook(lambda module, args, out: rows.append(out.shape[0]))
    torch.testing.assert_close(sequence_logps(model, ids, loss_mask), full)
    assert rows == [loss_mask[:, 1:].sum()]  # one row of logits per response token, none for prompt and padding
    # average: the mean over each row's response tokens (IPO's)
    n_tokens = torch.tensor([3, 2, 6, 4])  # each response and its end-of-text
    torch.testing.assert_close(sequence_logps(model, ids, loss_mask, average=True), full / n_tokens)
    chosen, rejected = pair_logps(model, pairs, EOT, setup_runtime("cpu", "float32"), average=True)
    torch.testing.assert_close(torch.cat([chosen, rejected]), full / n_tokens)


def test_all_pair_logps_keeps_the_order_of_the_pairs():
    model, rt = tiny(), setup_runtime("cpu", "float32")
    g = torch.Generator().manual_seed(0)
    tokens = lambda n: torch.randint(0, EOT, (n,), generator=g).tolist()
    pairs = []
    for n_prompt, n_chosen, n_rejected in torch.randint(1, 10, (13, 3), generator=g).tolist():
        prompt = tokens(n_prompt)
        pairs.append((*rendered(prompt, tokens(n_chosen)), *rendered(prompt, tokens(n_rejected))))
    chosen, rejected = all_pair_logps(model, pairs, EOT, rt, batch_size=4)  # batched by length inside
    for pair, lc, lr in zip(pairs, chosen, rejected):
        one_c, one_r = pair_logps(model, [pair], EOT, rt)
        torch.testing.assert_close(torch.stack([lc, lr]), torch.cat([one_c, one_r]))


def test_padding_does_not_count_and_end_of_text_does():
    model = tiny()
    (ids, mask), _ = PAIRS[0]
    alone = sequence_logps(model, torch.tensor([ids]), torch.tensor([mask]))
    # padded to a longer row, with two different padding ids: the same log-prob
    for pad_id in (EOT, 3):
        padded = torch.tensor([ids + [pad_id] * 6, list(range(1, 13))])
        pmask = torch.tensor([mask + [0] * 6, [0] * 4 + [1] * 8])
        torch.testing.assert_close(sequence_logps(model, padded, pmask)[0], alone[0])
    # the end-of-text counts: dropping it from the mask changes the sum by exactly its log-prob
    without_eot = sequence_logps(model, torch.tensor([ids]), torch.tensor([mask[:-1] + [0]]))
    logp = F.log_softmax(model(torch.tensor([ids]))[0], -1)
    torch.testing.assert_close(alone - without_eot, logp[-2, EOT].reshape(1))


# --- the command line, on tiny settings ---------------------------------------------------------------------


def run(cwd, script, *args):
    out = subprocess.run([sys.executable, str(ROOT / script), *args], cwd=cwd, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """Where a tiny SFT run wrote the built-in task, its tokenizer and out/sft/ckpt.pt: dpo.py's defaults."""
    d = tmp_path_factory.mktemp("dpo")
    run(d, "sft.py", "--max_steps", "3", "--n_layer", "1", "--n_head", "2", "--n_embd", "32", "--batch_size", "4",
        "--n_eval", "4", "--max_new_tokens", "8", "--eval_interval", "3")
    return d


TINY = ["--max_steps", "4", "--eval_interval", "2", "--batch_size", "4", "--n_eval", "4", "--n_val_pairs", "8",
        "--max_new_tokens", "8", "--pairs", "scripted", "--reward_ckpt", ""]  # no reward model: DPO needs none


def read_metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_smoke_builtin_task(workdir):
    stdout = run(workdir, "dpo.py", *TINY, "--out_dir", "out/smoke")
    assert "win-rate against sft" in stdout
    metrics = read_metrics(workdir / "out" / "smoke")
    # the first step's loss is computed before any update: the cached reference log-probs line up with their pairs
    assert metrics[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert abs(metrics[0]["rewards/margins"]) < 1e-4
    for key in ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "logps/chosen", "logps/rejected"):
        assert key in metrics[0]
    assert {"eval/rewards/accuracies", "eval/gold", "eval/kl", "eval/win_rate"} <= metrics[1].keys()
    ckpt = torch.load(workdir / "out" / "smoke" / "ckpt.pt", weights_only=True)
    assert ckpt["step"] == 4 and ckpt["config"]["max_steps"] == 4
    assert {"gold", "sft_gold", "win_rate", "kl", "rewards/accuracies"} <= ckpt["summary"].keys()
    sft = torch.load(workdir / "out" / "sft" / "ckpt.pt", weights_only=True)
    assert ckpt["model"].keys() == sft["model"].keys() and ckpt["tokenizer"] == sft["tokenizer"]


def own_jsonl(d):
    """A tiny preference dataset of one's own in d, and the flags that give it to dpo.py."""
    pairs = [{"prompt": f"\n\nHuman: say {w}\n\nAssistant:", "chosen": f" {w}.", "rejected": " No."}
             for w in ("yes", "hello", "tea", "blue", "seven", "ok")]
    for name, recs in (("train", pairs), ("val", pairs[:2]), ("prompts", [{"prompt": p["prompt"]} for p in pairs])):
        (d / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    return ["--train_file", str(d / "train.jsonl"), "--val_file", str(d / "val.jsonl"), "--eval_prompts",
            str(d / "prompts.jsonl")]


def test_smoke_own_jsonl_recomputing_the_reference(workdir, tmp_path):
    run(workdir, "dpo.py", *TINY, *own_jsonl(tmp_path), "--out_dir", str(tmp_path / "dpo"), "--recompute_ref",
        "--loss_type", "ipo", "--beta", "0.1")
    metrics = read_metrics(tmp_path / "dpo")
    assert metrics[0]["loss"] == pytest.approx(25.0, abs=1e-3)  # IPO at h = 0 with beta 0.1
    # IPO's log-probs are means per response token: those of the SFT policy on the first batch's chosen responses
    policy, spec, _ = load_policy(workdir / "out" / "sft" / "ckpt.pt")
    enc = load_tokenizer(spec)
    train = dpo.load_pairs(tmp_path / "train.jsonl", enc, policy.config.block_size)
    first = [train[i] for i in batch_at(len(train), 4, 0, 0)]
    chosen, _ = pair_logps(policy.eval(), first, enc.eot_token, setup_runtime("cpu", "float32"), average=True)
    assert metrics[0]["logps/chosen"] == pytest.approx(chosen.mean().item(), abs=1e-5)
    assert "eval/kl" in metrics[1] and "eval/win_rate" not in metrics[1]  # no gold judge for a dataset of one's own
    assert "kl" in torch.load(tmp_path / "dpo" / "ckpt.pt", weights_only=True)["summary"]


def test_loss_at_step_0_is_ln2_even_after_sft_with_dropout(workdir, tmp_path):
    """DPO runs with dropout off, whatever SFT used: the policy is the reference before its first step."""
    sft = torch.load(workdir / "out" / "sft" / "ckpt.pt", weights_only=True)
    sft["model_config"]["dropout"] = 0.1  # what sft.py --dropout 0.1 records, and later stages build the model from
    save_checkpoint(tmp_path / "sft_dropout.pt", sft)
    dpo.main(TINY + own_jsonl(tmp_path) + ["--max_steps", "1", "--sft_ckpt", str(tmp_path / "sft_dropout.pt"),
                                           "--recompute_ref", "--out_dir", str(tmp_path / "dpo")])
    first = read_metrics(tmp_path / "dpo")[0]
    assert first["rewards/margins"] == 0 and first["loss"] == pytest.approx(math.log(2), abs=1e-6)


def test_resume_after_interruption_gives_the_same_weights(workdir, monkeypatch, killed_at_first_checkpoint):
    monkeypatch.chdir(workdir)
    dpo.main(TINY + ["--out_dir", "out/straight"])
    straight = torch.load(workdir / "out" / "straight" / "ckpt.pt", weights_only=True)

    with killed_at_first_checkpoint():  # the process dies right after its first checkpoint (step 2 of 4)
        dpo.main(TINY + ["--out_dir", "out/interrupted"])
    dpo.main(["--out_dir", "out/interrupted", "--resume"])
    resumed = torch.load(workdir / "out" / "interrupted" / "ckpt.pt", weights_only=True)

    assert resumed["step"] == straight["step"] == 4
    # the resumed run recomputes the reference log-probs of the steps left, batched differently: equal to rounding
    for k, v in straight["model"].items():
        torch.testing.assert_close(resumed["model"][k], v, rtol=1e-5, atol=1e-6)
    steps = [m["step"] for m in read_metrics(workdir / "out" / "interrupted")]
    assert steps == [1, 2, 3, 4, 4]  # then the final evaluation


def test_samples_are_scored_by_the_reward_model_where_there_is_one(workdir):
    """With out/reward/ckpt.pt beside the SFT model (the default pipeline), the evaluation adds its score."""
    run(workdir, "reward.py", "--max_steps", "2", "--batch_size", "4", "--n_norm", "4", "--max_new_tokens", "8",
        "--pairs", "scripted")
    tiny = [a for a in TINY if a not in ("--reward_ckpt", "")]
    stdout = run(workdir, "dpo.py", *tiny, "--max_steps", "2", "--out_dir", "out/scored")
    summary = torch.load(workdir / "out" / "scored" / "ckpt.pt", weights_only=True)["summary"]
    assert {"score", "rm_win_rate", "sft_score"} <= summary.keys() and "win-rate against sft by the reward model" in stdout
    rows = [json.loads(l) for l in (workdir / "out" / "scored" / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all({"score", "gold", "label"} <= r.keys() for r in rows)


def test_an_ensemble_scores_the_samples_with_the_aggregation_asked_for(workdir, monkeypatch):
    """The evaluation's reward-model score takes an ensemble as ppo.py does: the SFT model's samples, the same under
    both, score lower under the members' minimum than under their mean."""
    run(workdir, "reward.py", "--max_steps", "2", "--batch_size", "4", "--n_norm", "4", "--max_new_tokens", "8",
        "--pairs", "scripted", "--members", "2", "--out_dir", "out/ensemble")
    monkeypatch.chdir(workdir)
    tiny = [a for a in TINY if a not in ("--reward_ckpt", "")] + ["--max_steps", "1", "--reward_ckpt",
                                                                  "out/ensemble/ckpt.pt"]
    sft_score = {how: dpo.main(tiny + ["--reward_agg", how, "--out_dir", f"out/ensemble_{how}"])["sft_score"]
                 for how in ("mean", "min")}
    assert sft_score["min"] < sft_score["mean"]


def test_two_torchrun_processes_equal_one_and_one_process_resumes_them(workdir, tmp_path):
    """
    DDP on CPU (gloo): each process takes half of every batch and computes half of the reference's log-probs; the
    losses and weights match one process. Its checkpoint is an ordinary one, which a single process resumes.
    """
    args = TINY + own_jsonl(tmp_path) + ["--sft_ckpt", str(workdir / "out" / "sft" / "ckpt.pt")]
    dpo.main(args + ["--out_dir", str(tmp_path / "one")])
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          str(ROOT / "dpo.py"), *args, "--out_dir", str(tmp_path / "two")],
                         capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("saved") == 1  # the master alone reports and writes
    one, two = read_metrics(tmp_path / "one"), read_metrics(tmp_path / "two")
    for key in ("loss", "rewards/margins", "rewards/accuracies", "logps/chosen", "grad_norm"):
        assert [m[key] for m in two[:4]] == pytest.approx([m[key] for m in one[:4]], abs=1e-4), key
    assert one[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)  # the gathered reference lines up with its pairs
    assert two[1]["eval/rewards/accuracies"] == one[1]["eval/rewards/accuracies"]  # the master evaluated

    def weights(run):
        return torch.load(tmp_path / run / "ckpt.pt", weights_only=True)["model"]

    for k, v in weights("one").items():
        torch.testing.assert_close(weights("two")[k], v, atol=1e-5, rtol=1e-4)
    # two more steps from each checkpoint, in one process: the optimizer's state went across too
    for run in ("one", "two"):
        dpo.main(["--out_dir", str(tmp_path / run), "--resume", "--max_steps", "6"])
    for k, v in weights("one").items():
        torch.testing.assert_close(weights("two")[k], v, atol=1e-5, rtol=1e-4)



# --- rounds: the policy's own responses labelled between rounds ---------------------------------------------


@pytest.fixture(scope="module")
def labelled(workdir):
    """Beside workdir's: an SFT model that ends its replies, and label.py's pairs of its responses in out/label."""
    run(workdir, "sft.py", "--max_steps", "30", "--lr", "1e-2", "--warmup_steps", "5", "--n_layer", "1", "--n_head",
        "2", "--n_embd", "32", "--batch_size", "8", "--n_eval", "4", "--max_new_tokens", "8", "--eval_interval", "30",
        "--out_dir", "out/sft_ends")
    run(workdir, "label.py", "--sft_ckpt", "out/sft_ends/ckpt.pt", "--n_pairs", "20", "--max_new_tokens", "8")
    return workdir


ONE_ROUND = TINY + ["--pairs", "labelled", "--sft_ckpt", "out/sft_ends/ckpt.pt"]
ROUNDS = ONE_ROUND + ["--rounds", "2"]


def finals(out):
    """The final/ numbers of each round, without their wall times."""
    return [{k: v for k, v in m.items() if k.startswith("final/") and not k.endswith("_seconds")}
            for m in read_metrics(out) if "final/loss" in m]


def test_two_rounds_label_the_policys_responses_and_resume_between_and_within_them(labelled, monkeypatch, capsys):
    monkeypatch.chdir(labelled)
    dpo.main(ROUNDS + ["--out_dir", "out/rounds"])
    out = labelled / "out" / "rounds"
    # round 2's pairs: round 1's policy answered, and the first round's raters (label.py's settings) compared
    meta = json.loads((out / "round2" / "meta.json").read_text())
    assert meta["sampling"]["sft_ckpt"] == "out/rounds/round1/ckpt.pt"
    assert meta["counts"]["sets"] == 20 and meta["config"]["max_new_tokens"] == 8 and meta["raters"]["rater_bias"] == 0
    assert meta["config"]["seed"] == 1  # a seed of its own: the first round's labels had 0
    assert len((out / "round2" / "prefs_train.jsonl").read_text().splitlines()) == 18
    round1, final = (torch.load(path, weights_only=True) for path in (out / "round1" / "ckpt.pt", out / "ckpt.pt"))
    assert (round1["round"], round1["step"], final["round"], final["step"]) == (1, 4, 2, 4)
    assert not torch.equal(round1["model"]["lm_head.weight"], final["model"]["lm_head.weight"])
    assert [m["step"] for m in read_metrics(out)] == [1, 2, 3, 4, 4, 5, 6, 7, 8, 8]  # each round ends evaluated
    # round 2 starts from round 1's policy, not SFT's: its first step is not at ln 2; the reference is still SFT
    assert read_metrics(out)[5]["loss"] != pytest.approx(math.log(2), abs=1e-4)
    said = capsys.readouterr().out  # at the end, a line per round
    assert said.index("round 1: gold") < said.index("round 2: gold") and "labelling" in said[-200:]

    # the first round is offline DPO, the one round of a run without --rounds
    dpo.main(ONE_ROUND + ["--out_dir", "out/one_round"])
    one = torch.load(labelled / "out" / "one_round" / "ckpt.pt", weights_only=True)
    assert all(torch.equal(one["model"][k], v) for k, v in round1["model"].items())
    assert finals(labelled / "out" / "one_round") == finals(out)[:1]

    # killed while the raters label round 2 (after 5 answers): label.py goes on where it stopped, exactly
    answer = label.sim_ranking
    answered = []

    def dies_after_five(cfg, s):
        if len(answered) == 5:
            raise KeyboardInterrupt
        answered.append(s)
        return answer(cfg, s)

    monkeypatch.setattr(label, "sim_ranking", dies_after_five)
    with pytest.raises(KeyboardInterrupt):
        dpo.main(ROUNDS + ["--out_dir", "out/killed_labelling"])
    monkeypatch.setattr(label, "sim_ranking", answer)
    killed = labelled / "out" / "killed_labelling"
    assert len((killed / "round2" / "prefs_train.jsonl").read_text().splitlines()) == 5
    dpo.main(["--out_dir", str(killed), "--resume"])
    resumed = torch.load(killed / "ckpt.pt", weights_only=True)
    assert all(torch.equal(resumed["model"][k], v) for k, v in final["model"].items())
    assert finals(killed) == finals(out)
    assert (killed / "round2" / "prefs_train.jsonl").read_text() == (out / "round2" / "prefs_train.jsonl").read_text()

    # killed at round 2's first checkpoint (the fourth written): it goes on with the labels it trained on
    real_save = dpo_common.save_checkpoint
    saved = []

    def dies_at_the_fourth(path, obj):
        real_save(path, obj)
        saved.append(path)
        if len(saved) == 4:
            raise KeyboardInterrupt

    monkeypatch.setattr(dpo_common, "save_checkpoint", dies_at_the_fourth)
    with pytest.raises(KeyboardInterrupt):
        dpo.main(ROUNDS + ["--out_dir", "out/killed_training"])
    monkeypatch.setattr(dpo_common, "save_checkpoint", real_save)
    killed = labelled / "out" / "killed_training"
    assert torch.load(killed / "ckpt.pt", weights_only=True)["round"] == 2
    labels = (killed / "round2" / "prefs_train.jsonl").stat().st_mtime_ns
    dpo.main(["--out_dir", str(killed), "--resume"])
    assert (killed / "round2" / "prefs_train.jsonl").stat().st_mtime_ns == labels  # not labelled again
    resumed = torch.load(killed / "ckpt.pt", weights_only=True)
    # the resumed round recomputes the reference log-probs of the steps left, batched differently: equal to rounding
    # (Adam's steps, about 5e-4 each, magnify it in weights whose gradients are near 0)
    for k, v in final["model"].items():
        torch.testing.assert_close(resumed["model"][k], v, rtol=1e-5, atol=1e-5)
    assert [m["step"] for m in read_metrics(killed)] == [1, 2, 3, 4, 4, 5, 6, 7, 8, 8]


@pytest.mark.parametrize("flags,message", [
    (["--rounds", "0"], "--rounds must be at least 1, not 0: 1 is DPO on the given pairs"),
    (["--rounds", "2"], "--rounds above 1 labels each round as the first round's pairs were labelled, and "
                        "out/data/prefs_train.jsonl has no meta.json of label.py's beside it"),  # TINY's scripted pairs
])
def test_rounds_that_cannot_run_are_refused(workdir, monkeypatch, flags, message):
    monkeypatch.chdir(workdir)
    with pytest.raises(SystemExit, match=re.escape(message)):
        dpo.main(TINY + flags)
