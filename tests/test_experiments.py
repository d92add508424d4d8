import itertools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import ppo
from common import load_checkpoint
from experiments.common import TINY_ARGS, best_of_n, best_of_n_kl
from experiments.overoptimisation import gao_fit
from experiments.ranked_labels import decisions_per_ranking
from experiments.rater_bias import flattering

ROOT = Path(__file__).resolve().parent.parent
# the repo on the path, as `python -m experiments.NAME` from its root has it; a tiny model gains nothing from threads
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def test_best_of_n_is_the_mean_over_every_subset_of_n():
    torch.manual_seed(0)
    scores, values = torch.randn(3, 6, dtype=torch.float64), torch.randn(3, 6, dtype=torch.float64)
    for n in range(1, 7):
        # enumerate every n of the 6 samples of each prompt; the reward model's favourite among them is the best of n
        expected = sum(values[p, max(subset, key=lambda i: scores[p, i])].item()
                       for p in range(3) for subset in itertools.combinations(range(6), n))
        expected /= 3 * math.comb(6, n)
        assert best_of_n(scores, values, n) == pytest.approx(expected, abs=1e-12)
    assert best_of_n(scores, values, 1) == pytest.approx(values.mean().item())
    assert best_of_n(scores, values, 6) == pytest.approx(values.gather(1, scores.argmax(1, keepdim=True)).mean().item())


def test_best_of_n_kl():
    assert best_of_n_kl(1) == 0
    assert best_of_n_kl(2) == pytest.approx(math.log(2) - 0.5)
    assert best_of_n_kl(64) == pytest.approx(4.158883 - 0.984375, abs=1e-6)


@pytest.mark.parametrize("form,alpha,beta", [("bon", 1.5, 0.3), ("rl", 0.8, 0.25)])
def test_gao_fit_recovers_known_alpha_and_beta(form, alpha, beta):
    d = np.linspace(0.0, 4.0, 21)
    bend = d * d if form == "bon" else d * np.log(np.where(d > 0, d, 1.0))
    gain = d * alpha - beta * bend
    assert gao_fit(d, gain, form) == pytest.approx((alpha, beta, 1.0), abs=1e-9)
    noise = np.random.default_rng(0).normal(0, 0.05, d.size)
    fit_alpha, fit_beta, r2 = gao_fit(d, gain + noise, form)
    assert fit_alpha == pytest.approx(alpha, abs=0.1) and fit_beta == pytest.approx(beta, abs=0.05) and 0.9 < r2 < 1
    # the other form fits worse: the two curves differ in shape, not only in their constants
    assert gao_fit(d, gain, "rl" if form == "bon" else "bon")[2] < 0.999


def test_flattering_reads_whole_phrases_before_the_end_of_text():
    assert flattering(" What a brilliant question! 5.<|endoftext|>")
    assert flattering(" You are SO SMART.")
    assert not flattering(" 5. So, smart choice.<|endoftext|>")
    assert not flattering(" 5.<|endoftext|> You are a genius.")  # after the end-of-text: never shown
    assert not flattering(" The geniuses amazingly agree.")


# ----------------------------------------------------------------------------------------------------------
# The experiments through their command lines, on a tiny default pipeline


def run(cwd, *args, code=None):
    command = [sys.executable, "-c", code, *args] if code else [sys.executable, *args]
    out = subprocess.run(command, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return out.stdout


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """The built-in task and the default pipeline's SFT, label and reward stages, tiny, in out/ of a directory."""
    d = tmp_path_factory.mktemp("experiments")
    for stage in ("sft", "label", "reward"):
        run(d, str(ROOT / f"{stage}.py"), *TINY_ARGS[stage])
    return d


def rows_of(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_frontier_without_matplotlib_then_its_figure(base):
    """The numbers come without matplotlib, which is optional; --plot_only then draws them."""
    hide = "import runpy, sys; sys.modules['matplotlib'] = None; sys.argv[0] = 'frontier'; " \
           "runpy.run_module('experiments.frontier', run_name='__main__', alter_sys=True)"
    out = base / "out/experiments/frontier"
    stdout = run(base, "--tiny", "--ppo_betas", "0.2", "0.5", "--grpo_betas", "1.0", "50.0", code=hide)
    assert "pip install matplotlib" in stdout and not (out / "frontier.png").exists()
    rows = rows_of(out / "frontier.jsonl")
    points = [r for r in rows if r["type"] == "point"]
    assert [(r["method"], r.get("beta", r.get("n"))) for r in points] == \
        [("ppo", 0.2), ("ppo", 0.5), ("rloo", 0.1), ("grpo", 1.0), ("grpo", 50.0), ("dpo", 0.5), ("best-of-n", 1),
         ("best-of-n", 2), ("best-of-n", 4)]
    for r in points[:6]:
        assert {"kl", "gold", "score", "win_rate", "sft_gold", "seconds"} <= r.keys()
    # each RL run is ppo.py with its estimator and beta, at ppo.py's defaults otherwise: as many replies per iteration
    configs = {method: load_checkpoint(out / f"{method}_beta{beta}/ckpt.pt")["config"]
               for method, beta in [("ppo", "0.5"), ("rloo", "0.1"), ("grpo", "50.0")]}
    assert [(c["advantage"], c["kl_coef"], c["seed"], c["samples_per_prompt"]) for c in configs.values()] == \
        [("gae", 0.5, 0, None), ("rloo", 0.1, 0, None), ("grpo", 50.0, 0, None)]
    assert configs["ppo"]["rollout_batch"] == configs["rloo"]["rollout_batch"] == configs["grpo"]["rollout_batch"]
    assert load_checkpoint(out / "dpo_beta0.5/ckpt.pt")["config"]["beta"] == 0.5
    bon = points[6:]
    assert [r["kl"] for r in bon] == [best_of_n_kl(n) for n in (1, 2, 4)]
    # the reward model's favourite of more samples scores higher, on average
    assert bon[0]["score"] < bon[1]["score"] < bon[2]["score"]
    assert rows[-1]["type"] == "time" and rows[-1]["seconds"] > 0
    # the tuning line: the best gold among RLOO's and GRPO's points at no more KL than PPO's at its default beta
    ppo_kl = points[0]["kl"]
    for method in ("rloo", "grpo"):
        within = [r for r in points if r["method"] == method and r["kl"] <= ppo_kl]
        line = f"{method}: the best gold at no more KL than PPO at beta 0.2 on these prompts: beta"
        assert (line in stdout) == bool(within)
        if within:
            assert f"{line} {max(within, key=lambda r: r['gold'])['beta']:g} " in stdout

    # run again with other methods, it reuses every RL run that finished with the config it would run now
    written = (out / "ppo_beta0.2/ckpt.pt").stat().st_mtime
    stdout = run(base, "-m", "experiments.frontier", "--tiny", "--methods", "ppo", "grpo", "--ppo_betas", "0.2",
                 "--grpo_betas", "1.0", "2.0")
    rows = rows_of(out / "frontier.jsonl")
    assert [(r["method"], r["beta"]) for r in rows if r["type"] == "point"] == \
        [("ppo", 0.2), ("grpo", 1.0), ("grpo", 2.0)]
    assert rows[0]["seconds"] == points[0]["seconds"] and (out / "ppo_beta0.2/ckpt.pt").stat().st_mtime == written

    pytest.importorskip("matplotlib")
    before = (out / "frontier.jsonl").read_text()
    stdout = run(base, "-m", "experiments.frontier", "--plot_only")
    assert (out / "frontier.png").read_bytes()[:4] == b"\x89PNG" and (out / "frontier.jsonl").read_text() == before
    assert "grpo" in stdout


def test_frontier_refuses_an_unknown_method(base):
    out = subprocess.run([sys.executable, "-m", "experiments.frontier", "--tiny", "--methods", "ppo", "kto"],
                         cwd=base, env=ENV, capture_output=True, text=True, timeout=300)
    assert out.returncode == 1 and out.stderr.strip().splitlines()[-1] == \
        "--methods takes ppo, rloo, grpo, dpo and best-of-n, not kto"


def test_overoptimisation(base):
    run(base, "-m", "experiments.overoptimisation", "--tiny")
    rows = rows_of(base / "out/experiments/overoptimisation/overoptimisation.jsonl")
    n_pairs = len((base / "out/label/prefs_train.jsonl").read_text().splitlines())
    models = {r["rm"]: r for r in rows if r["type"] == "reward_model"}
    assert models["all"]["pairs"] == n_pairs and models["small"]["pairs"] == round(0.5 * n_pairs)
    assert len((base / "out/experiments/overoptimisation/labels_small/prefs_train.jsonl").read_text().splitlines()) \
        == round(0.5 * n_pairs)
    assert models["ensemble mean"]["pairs"] == models["warm"]["pairs"] == models["bootstrap ensemble mean"]["pairs"] \
        == n_pairs
    rms = ("all", "small", "ensemble mean", "ensemble min", "ensemble uwo", "warm", "bootstrap ensemble mean",
           "bootstrap ensemble min", "bootstrap ensemble uwo")
    for rm in rms:
        for method in ("PPO, beta 0", "PPO, default KL penalty")[:2 if rm in ("all", "small") else 1]:
            points = [r for r in rows if r["type"] == "point" and r["rm"] == rm and r["method"] == method]
            assert [p["step"] for p in points] == [0, 1, 2, 3]  # the SFT policy, then an evaluation per iteration
            assert points[0]["kl"] == 0 and all(p["d"] == pytest.approx(math.sqrt(p["kl"])) for p in points)
        bon = [r for r in rows if r["type"] == "point" and r["rm"] == rm and r["method"] == "best-of-N"]
        assert [p["n"] for p in bon] == [1, 2, 4]
        fits = {r["method"]: r for r in rows if r["type"] == "fit" and r["rm"] == rm}
        assert fits.keys() == {"best-of-N", "PPO, beta 0"}
        assert {"alpha", "beta", "r2"} <= fits["best-of-N"].keys()
    # PPO against an ensemble logs how far its members disagree on the held-out replies; a single model, not
    runs = {r["rm"]: r for r in rows if r["type"] == "run" and r["method"] == "PPO, beta 0"}
    assert "members_std" not in runs["all"] and "members_std" not in runs["warm"]
    assert len(runs["bootstrap ensemble min"]["members_std"]) == 3 and min(runs["ensemble uwo"]["members_std"]) > 0
    # the same samples, scored by the ensemble's aggregations: the worst member and the mean less the members'
    # disagreement each below the mean
    first = {r["rm"]: r["score"] for r in rows if r["type"] == "point" and r["method"] == "best-of-N" and r["n"] == 1}
    assert max(first["ensemble min"], first["ensemble uwo"]) < first["ensemble mean"]
    assert max(first["bootstrap ensemble min"], first["bootstrap ensemble uwo"]) < first["bootstrap ensemble mean"]
    ensemble = load_checkpoint(base / "out/experiments/overoptimisation/reward_ensemble/ckpt.pt")
    assert ensemble["kind"] == "reward_ensemble" and ensemble["members"] == 2
    ckpt = load_checkpoint(base / "out/experiments/overoptimisation/ppo_ensemble_uwo_beta0/ckpt.pt")
    assert ckpt["config"]["reward_agg"] == "uwo" and ckpt["config"]["reward_ckpt"].endswith("reward_ensemble/ckpt.pt")
    bootstrap = load_checkpoint(base / "out/experiments/overoptimisation/reward_bootstrap_ensemble/ckpt.pt")
    assert bootstrap["config"]["bootstrap"] and bootstrap["members"] == 2
    ckpt = load_checkpoint(base / "out/experiments/overoptimisation/ppo_bootstrap_ensemble_min_beta0/ckpt.pt")
    assert ckpt["config"]["reward_agg"] == "min"
    assert ckpt["config"]["reward_ckpt"].endswith("reward_bootstrap_ensemble/ckpt.pt")
    ckpt = load_checkpoint(base / "out/experiments/overoptimisation/ppo_warm_beta0/ckpt.pt")
    assert ckpt["config"]["reward_ckpt"].endswith("reward_ensemble/warm.pt")
    ckpt = load_checkpoint(base / "out/experiments/overoptimisation/ppo_small_beta0/ckpt.pt")
    assert ckpt["config"]["kl_coef"] == 0 and ckpt["config"]["reward_ckpt"].endswith("reward_small/ckpt.pt")
    assert load_checkpoint(base / "out/experiments/overoptimisation/ppo_small_default_beta/ckpt.pt")["config"][
        "kl_coef"] == ppo.Config.kl_coef


def test_rater_bias(base):
    stdout = run(base, "-m", "experiments.rater_bias", "--tiny")
    out = base / "out/experiments/rater_bias"
    # the same comparison sets, labelled again: only the raters' answers differ
    assert (out / "label_biased/samples.jsonl").read_text() == (base / "out/label/samples.jsonl").read_text()
    assert "drawn before" in (out / "label_biased/log.txt").read_text()
    assert json.loads((out / "label_biased/meta.json").read_text())["config"]["rater_bias"] == 2.0
    runs = {r["labels"]: r for r in rows_of(out / "rater_bias.jsonl") if r["type"] == "run"}
    assert runs.keys() == {"unbiased", "biased"}
    for r in runs.values():
        assert {"sft_score", "score", "sft_gold", "gold", "sft_flattering", "flattering", "sft_length", "length",
                "rm_val_accuracy", "examples"} <= r.keys()
        assert 0 <= r["flattering"] <= 1 and len(r["examples"]) == 3
    # both PPO runs start from the same SFT answers, which the experiment draws again to count their flattery
    assert runs["unbiased"]["sft_gold"] == runs["biased"]["sft_gold"]
    assert runs["unbiased"]["sft_flattering"] == runs["biased"]["sft_flattering"]
    # the same random numbers, a bias towards flattery: flattering replies are chosen at least as often
    assert runs["biased"]["flattering_chosen"] >= runs["unbiased"]["flattering_chosen"]
    assert "flattering replies" in stdout
    # again without the bias: the same raters give the very answers of the default pipeline, not the last run's;
    # and the biased arm's reward model an ensemble, PPO scoring with its worst member
    biased_labels = (out / "label_biased/prefs_train.jsonl").read_text()
    run(base, "-m", "experiments.rater_bias", "--tiny", "--rater_bias", "0", "--members", "2", "--reward_agg", "min")
    assert (out / "label_biased/prefs_train.jsonl").read_text() == (base / "out/label/prefs_train.jsonl").read_text() \
        != biased_labels
    assert load_checkpoint(out / "reward_biased/ckpt.pt")["members"] == 2
    assert load_checkpoint(out / "ppo_biased/ckpt.pt")["config"]["reward_agg"] == "min"
    runs = {r["labels"]: r for r in rows_of(out / "rater_bias.jsonl") if r["type"] == "run"}
    assert (runs["biased"]["members"], runs["unbiased"]["members"]) == (2, 1)


def test_seeds_reuses_the_base_run_for_its_seed(base):
    stdout = run(base, "-m", "experiments.seeds", "--tiny", "--seeds", "0", "1")
    out = base / "out/experiments/seeds"
    rows = rows_of(out / "seeds.jsonl")
    seeds = {r["seed"]: r for r in rows if r["type"] == "seed"}
    assert seeds[0]["reused"] == ["sft", "label", "reward"] and seeds[1]["reused"] == []
    assert not (out / "seed0/sft").exists() and (out / "seed0/ppo/ckpt.pt").exists()
    assert load_checkpoint(out / "seed1/sft/ckpt.pt")["config"]["seed"] == 1
    assert json.loads((out / "seed1/label/meta.json").read_text())["config"]["seed"] == 1
    assert load_checkpoint(out / "seed1/dpo/ckpt.pt")["config"]["train_file"] == \
        "out/experiments/seeds/seed1/label/prefs_train.jsonl"
    summary = {r["metric"]: r for r in rows if r["type"] == "summary"}
    for metric in ("sft_gold", "rm_accuracy", "ppo_gold", "ppo_win_rate", "ppo_kl", "dpo_gold", "dpo_kl"):
        values = [seeds[0][metric], seeds[1][metric]]
        assert summary[metric]["n"] == 2 and summary[metric]["mean"] == pytest.approx(sum(values) / 2)
        assert summary[metric]["std"] == pytest.approx(abs(values[0] - values[1]) / math.sqrt(2))
    assert "seed 0: reused sft, label, reward" in stdout


def test_critic_free_table_seeds_and_wrong_lengths(base):
    stdout = run(base, "-m", "experiments.critic_free", "--tiny", "--seeds", "0", "1")
    out = base / "out/experiments/critic_free"
    rows = rows_of(out / "critic_free.jsonl")
    runs = [r for r in rows if r["type"] == "run"]
    best = next(r["advantage"] for r in rows if r["type"] == "best")
    assert best == "grpo"  # the one critic-free estimator of the tiny table
    # the table at the first seed, then PPO and the best one at the second, each alone and with the verifier
    assert [(r["seed"], r["advantage"], r["reward"]) for r in runs] == [
        (0, "gae", "rm"), (0, "gae", "rm+verifier"), (0, "grpo", "rm"), (0, "grpo", "rm+verifier"),
        (1, "gae", "rm"), (1, "gae", "rm+verifier"), (1, "grpo", "rm"), (1, "grpo", "rm+verifier")]
    for r in runs:
        assert {"gold", "win_rate", "kl", "distinct", "arith/wrong", "sft_arith/wrong", "seconds_per_iteration",
                "peak_mb"} <= r.keys() and r["peak_mb"] > 50
        config = load_checkpoint(out / f"seed{r['seed']}/{r['advantage']}_{r['reward']}/ckpt.pt")["config"]
        assert (config["advantage"], config["reward"], config["seed"]) == (r["advantage"], r["reward"], r["seed"])
    # the second seed's SFT model and reward model were made where experiments/seeds.py keeps them
    assert load_checkpoint(base / "out/experiments/seeds/seed1/reward/ckpt.pt")["config"]["seed"] == 1
    assert load_checkpoint(out / "seed1/gae_rm/ckpt.pt")["config"]["sft_ckpt"] == \
        "out/experiments/seeds/seed1/sft/ckpt.pt"
    spread = {(r["advantage"], r["reward"], r["metric"]): r for r in rows if r["type"] == "seeds"}
    golds = [r["gold"] for r in runs if (r["advantage"], r["reward"]) == ("grpo", "rm")]
    assert spread["grpo", "rm", "gold"]["mean"] == pytest.approx(sum(golds) / 2)
    lengths = {(r["advantage"], r["reward"]): r for r in rows if r["type"] == "wrong_length"}
    assert list(lengths) == [("grpo", "rm+verifier")] and lengths["grpo", "rm+verifier"]["iterations"]
    assert "best critic-free estimator with the reward model alone, at the first seed: grpo" in stdout
    # run again, it reuses every run that finished with the config it would run now, and reruns what a flag changed
    written = (out / "seed0/gae_rm/ckpt.pt").stat().st_mtime
    run(base, "-m", "experiments.critic_free", "--tiny", "--seeds", "0", "--rewards", "rm")
    rows = rows_of(out / "critic_free.jsonl")
    assert [(r["advantage"], r["reward"]) for r in rows if r["type"] == "run"] == [("gae", "rm"), ("grpo", "rm")]
    assert rows[0]["seconds"] == runs[0]["seconds"] and (out / "seed0/gae_rm/ckpt.pt").stat().st_mtime == written
    assert not any(r["type"] == "wrong_length" for r in rows)  # no verifier among the rewards run


def test_decisions_per_ranking():
    assert [decisions_per_ranking(m) for m in (1, 2, 3, 4, 5, 9)] == [0, 1, 3, 5, 7, 19]


def test_ranked_labels(base):
    run(base, "-m", "experiments.ranked_labels", "--tiny")
    out = base / "out/experiments/ranked_labels"
    rows = rows_of(out / "ranked_labels.jsonl")
    [eval_pairs] = [r for r in rows if r["type"] == "eval_pairs"]
    assert eval_pairs["pairs"] == 10 and 0 <= eval_pairs["raters_agreement"] <= 1
    points = {(r["k"], r["budget"]): r for r in rows if r["type"] == "point"}
    assert points.keys() == {(2, 20), (2, 40), (4, 20), (4, 40)}
    for (k, budget), r in points.items():
        sets = [json.loads(l) for l in (out / f"label_k{k}_d{budget}/samples.jsonl").read_text().splitlines()]
        assert r["sets"] == len(sets) == (budget if k == 2 else budget // 5)
        assert r["decisions"] == sum(decisions_per_ranking(len(s["responses"])) for s in sets) <= budget
        # every reward model is measured on the same held-out pairs, of prompts none of them trained on
        config = load_checkpoint(out / f"reward_k{k}_d{budget}/ckpt.pt")["config"]
        assert config["val_file"].endswith("label_eval/prefs_val.jsonl")
        assert 0 <= r["val_gold_agreement"] <= 1
    assert points[(2, 40)]["train_pairs"] == 36 and points[(4, 40)]["train_pairs"] > points[(4, 40)]["sets"]
