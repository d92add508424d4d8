"""
Reward over-optimisation (Gao et al. 2022, "Scaling laws for reward model overoptimization"): optimise a reward
model hard enough and its score keeps rising while the gold score it stands in for peaks and falls.

PPO runs long with no KL penalty (--kl_coef), evaluated on held-out prompts every --eval_interval iterations, against
the default pipeline's reward model, trained on all the labels, one trained on a small --fraction of them, an
ensemble of --members reward models on all the labels (reward.py --members) optimised through each aggregation of
their scores (ppo.py --reward_agg mean, min, uwo: Coste et al. 2024), and the members' weight average (reward.py
--warm; Rame et al. 2024, WARM), and a second ensemble whose members each learn from their own bootstrap resample
of the labels (reward.py --bootstrap), through each aggregation. The same long run with ppo.py's default KL penalty
shows what the penalty does for the first two, and best-of-N sampling from the SFT policy (N = 1 ... 64) is the
other way to optimise each reward model. Against d = sqrt(KL to SFT), each method's gold gain over the SFT policy is
fitted with Gao et al.'s forms by least squares:

    best-of-N:  gold(d) - gold(0) = d (alpha - beta d)
    RL (PPO):   gold(d) - gold(0) = d (alpha - beta log d)

and alpha, beta and R^2 are reported for each reward model.

It needs the default pipeline's SFT model, labels and reward model (python sft.py && python label.py && python
reward.py); it trains the small reward model, the two ensembles and eleven PPO runs, each its own one-thread process,
--jobs at a time, and reuses those that finished before with the settings they would run with now. 34 minutes on
two CPU cores with the defaults below; --tiny runs it in seconds.

    python -m experiments.overoptimisation
    python -m experiments.overoptimisation --fraction 0.2 --kl_coef 0.01 --eval_prompts out/data/val_prompts.jsonl
"""

import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from data import world
from experiments.common import (TINY_ARGS, best_of_n, best_of_n_kl, experiment_main, held_out_prompts, needs,
                                powers_of_two, run_missing, sample_pool)
from model import REWARD_AGGREGATIONS, ensemble_reward
from report import final_metrics


@dataclass
class Config:
    base: str = "out"  # the finished default pipeline: its SFT model, its labels and its reward model (trained on all)
    out_dir: str = "out/experiments/overoptimisation"  # the runs, overoptimisation.jsonl and overoptimisation.png
    eval_prompts: str = ""  # held-out JSONL of {prompt}; empty: the built-in task's (tune on out/data/val_prompts.jsonl)
    fraction: float = 0.1  # share of the labelled training pairs the small reward model learns from
    iterations: int = 90  # PPO iterations of every run (ppo.py's default run is shorter)
    eval_interval: int = 3  # evaluate on held-out prompts every this many iterations (with no penalty gold peaks early)
    n_eval: int = 128  # held-out prompts per evaluation
    kl_coef: float = 0.0  # the weak (or no) KL penalty of the over-optimising runs
    members: int = 4  # reward models in the ensemble (reward.py --members), all on the default pipeline's labels
    uwo_lambda: float = 0.5  # the ensemble's uncertainty-weighted aggregation: mean - uwo_lambda * variance
    jobs: int = 2  # runs at a time, each a process with one CPU thread
    bon_max: int = 64  # best-of-N for N = 1, 2, 4, ... up to this, from bon_max samples per prompt
    bon_prompts: int = 128  # held-out prompts for best-of-N
    max_new_tokens: int = 64  # best-of-N's response length limit (the stages' default)
    seed: int = 0  # of the small reward model's pairs, every run, and best-of-N's samples
    tiny: bool = False  # a smoke run in seconds: tiny stages, 3 iterations evaluated after each, N up to 4
    plot_only: bool = False  # only draw overoptimisation.png from the overoptimisation.jsonl of an earlier run


TINY = {"fraction": 0.5, "iterations": 3, "eval_interval": 1, "n_eval": 8, "members": 2, "bon_max": 4, "bon_prompts": 4,
        "max_new_tokens": 16}


def gao_fit(d, gain, form):
    """
    Least-squares fit of Gao et al.'s form for the gold gain over the initial policy against d = sqrt(KL):
    form "bon", gain = d (alpha - beta d); form "rl", gain = d (alpha - beta log d). Both are linear in (alpha, beta).
    Returns (alpha, beta, R^2), R^2 = 1 - residual sum of squares / total sum of squares about the mean gain.
    """
    d, gain = np.asarray(d, dtype=float), np.asarray(gain, dtype=float)
    bend = d * d if form == "bon" else d * np.log(np.where(d > 0, d, 1.0))  # d log d -> 0 as d -> 0
    x = np.stack([d, -bend], 1)
    (alpha, beta), *_ = np.linalg.lstsq(x, gain, rcond=None)
    residual = gain - x @ np.array([alpha, beta])
    return float(alpha), float(beta), float(1 - (residual ** 2).sum() / ((gain - gain.mean()) ** 2).sum())


def small_labels(base, out_dir, fraction, seed):
    """
    A random fraction of the default pipeline's labelled training pairs, written to out_dir. Returns (the file, the
    pairs in it, the pairs of the default pipeline).
    """
    pairs = Path(base, "label", "prefs_train.jsonl").read_text().splitlines()
    kept = random.Random(seed).sample(pairs, max(1, round(fraction * len(pairs))))
    path = Path(out_dir, "labels_small", "prefs_train.jsonl")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in kept))
    return path, len(kept), len(pairs)


def curve(run_dir, rm, method):
    """A PPO run's evaluations, from its metrics.jsonl: the SFT policy at d = 0, then every eval/ line."""
    lines = [json.loads(line) for line in Path(run_dir, "metrics.jsonl").read_text().splitlines()]
    sft = next(l for l in lines if "eval/sft_gold" in l)
    points = [(0, 0.0, sft["eval/sft_gold"], sft["eval/sft_score"], sft.get("eval/sft_members_std"))]
    points += [(l["step"], max(l["eval/kl"], 0.0), l["eval/gold"], l["eval/score"], l.get("eval/members_std"))
               for l in lines if "eval/gold" in l]
    return [{"type": "point", "rm": rm, "method": method, "step": step, "kl": kl, "d": math.sqrt(kl), "gold": gold,
             "score": score, **({"members_std": spread} if spread is not None else {})}
            for step, kl, gold, score, spread in points]


def run(cfg, bar):
    needs(cfg.base, "sft", "label", "reward")
    sft_ckpt = f"{cfg.base}/sft/ckpt.pt"
    data_dir = world.builtin_task()[0]
    eval_prompts = cfg.eval_prompts or f"{data_dir}/eval_prompts.jsonl"
    rows = []

    # the reward models: the default pipeline's (all), one on a small fraction of its labels, an ensemble on all of
    # them (member 0 is trained as the default pipeline's), each of its aggregations, its weight average (WARM), and
    # an ensemble whose members each learn from their own bootstrap resample of the labels, each aggregation
    small, n_small, n_all = small_labels(cfg.base, cfg.out_dir, cfg.fraction, cfg.seed)
    files = ["--sft_ckpt", sft_ckpt, "--val_file", f"{cfg.base}/label/prefs_val.jsonl", "--prompts_file",
             f"{data_dir}/prompts_train.jsonl", "--seed", cfg.seed]
    reward_args = lambda name, *extra: (["reward.py", *(TINY_ARGS["reward"] if cfg.tiny else []), *files, *extra,
                                         "--out_dir", f"{cfg.out_dir}/reward_{name}"],
                                        f"{cfg.out_dir}/reward_{name}/log.txt")
    ensembles = {"ensemble": "--warm", "bootstrap ensemble": "--bootstrap"}  # name: what its members add
    trainings = [reward_args("small", "--train_file", small)]
    trainings += [reward_args(name.replace(" ", "_"), "--train_file", f"{cfg.base}/label/prefs_train.jsonl",
                              "--members", cfg.members, extra) for name, extra in ensembles.items()]
    ensemble_paths = {name: f"{cfg.out_dir}/reward_{name.replace(' ', '_')}/ckpt.pt" for name in ensembles}
    aggregated = lambda name: {f"{name} {how}": (ensemble_paths[name], ["--reward_agg", how, "--uwo_lambda",
                                                                         cfg.uwo_lambda])
                               for how in REWARD_AGGREGATIONS}
    reward_models = {"all": (f"{cfg.base}/reward/ckpt.pt", []), "small": (f"{cfg.out_dir}/reward_small/ckpt.pt", []),
                     **aggregated("ensemble"), "warm": (f"{cfg.out_dir}/reward_ensemble/warm.pt", []),
                     **aggregated("bootstrap ensemble")}
    bar.total = len(trainings) + len(reward_models) + 2 + 1
    times = run_missing(trainings, cfg.jobs)
    bar.update(len(trainings))
    ensemble_numbers = final_metrics(f"{cfg.out_dir}/reward_ensemble")
    numbers = {"all": final_metrics(f"{cfg.base}/reward"), "small": final_metrics(f"{cfg.out_dir}/reward_small"),
               "ensemble mean": ensemble_numbers, "warm": {k.removeprefix("warm/"): v for k, v in
                                                           ensemble_numbers.items() if k.startswith("warm/")},
               "bootstrap ensemble mean": final_metrics(f"{cfg.out_dir}/reward_bootstrap_ensemble")}
    for rm, pairs in (("all", n_all), ("small", n_small), ("ensemble mean", n_all), ("warm", n_all),
                      ("bootstrap ensemble mean", n_all)):
        rows.append({"type": "reward_model", "rm": rm, "pairs": pairs, "val_accuracy": numbers[rm]["val_accuracy"],
                     "val_gold_agreement": numbers[rm].get("val_gold_agreement")})
    for name, (command, _) in zip(ensembles, trainings[1:]):
        rows.append({"type": "ensemble_training", "rm": name, "members": cfg.members,
                     "seconds": round(times[tuple(map(str, command))][0], 1),
                     "single_seconds": round(times[tuple(map(str, trainings[0][0]))][0], 1)})

    # PPO with no KL penalty against each, and with the default penalty against the two single models
    no_penalty, penalty = f"PPO, beta {cfg.kl_coef:g}", "PPO, default KL penalty"
    ppo_args = ["ppo.py", *(TINY_ARGS["ppo"] if cfg.tiny else []), "--sft_ckpt", sft_ckpt, "--eval_prompts",
                eval_prompts, "--iterations", cfg.iterations, "--eval_interval", cfg.eval_interval, "--n_eval",
                cfg.n_eval, "--seed", cfg.seed]
    runs = [(rm, no_penalty, f"ppo_{rm.replace(' ', '_')}_beta{cfg.kl_coef:g}", ["--kl_coef", cfg.kl_coef])
            for rm in reward_models]
    runs += [(rm, penalty, f"ppo_{rm}_default_beta", []) for rm in ("all", "small")]
    commands = [([*ppo_args, "--reward_ckpt", reward_models[rm][0], *reward_models[rm][1], *extra, "--out_dir",
                  f"{cfg.out_dir}/{name}"], f"{cfg.out_dir}/{name}/log.txt") for rm, _, name, extra in runs]
    times = run_missing(commands, cfg.jobs)
    bar.update(len(runs))
    for (rm, method, name, _), (command, _) in zip(runs, commands):
        points = curve(f"{cfg.out_dir}/{name}", rm, method)
        rows += points
        peak = max(points, key=lambda p: p["gold"])
        rows.append({"type": "run", "rm": rm, "method": method, "sft_gold": points[0]["gold"],
                     "peak_gold": peak["gold"], "peak_d": peak["d"], "peak_step": peak["step"],
                     "final_gold": points[-1]["gold"], "final_d": points[-1]["d"],
                     "final_score": points[-1]["score"], "seconds": round(times[tuple(map(str, command))][0], 1),
                     **({"members_std": [points[0]["members_std"], peak["members_std"], points[-1]["members_std"]]}
                        if "members_std" in peak else {})})

    bar.set_postfix_str(f"best-of-{cfg.bon_max} samples of {sft_ckpt}")
    prompts = held_out_prompts(eval_prompts, cfg.bon_prompts)
    paths = list(dict.fromkeys(path for path, _ in reward_models.values()))
    t0 = time.time()
    scores, gold, _ = sample_pool(sft_ckpt, paths, prompts, cfg.bon_max, cfg.max_new_tokens, 1.0, cfg.seed)
    rows.append({"type": "bon_pool", "responses": gold.numel(), "seconds": round(time.time() - t0, 1)})
    for rm, (path, _) in reward_models.items():
        how = rm.split()[-1] if path in ensemble_paths.values() else None
        score = ensemble_reward(scores[path].permute(2, 0, 1), how, cfg.uwo_lambda) if how else scores[path]
        for n in powers_of_two(cfg.bon_max):
            kl = best_of_n_kl(n)
            rows.append({"type": "point", "rm": rm, "method": "best-of-N", "n": n, "kl": kl, "d": math.sqrt(kl),
                         "gold": best_of_n(score, gold, n), "score": best_of_n(score, score, n)})
    bar.update()

    for rm in reward_models:
        for method, form in (("best-of-N", "bon"), (no_penalty, "rl")):
            points = [r for r in rows if r["type"] == "point" and r["rm"] == rm and r["method"] == method]
            alpha, beta, r2 = gao_fit([p["d"] for p in points], [p["gold"] - points[0]["gold"] for p in points], form)
            rows.append({"type": "fit", "rm": rm, "method": method, "form": form, "alpha": alpha, "beta": beta,
                         "r2": r2, "gold0": points[0]["gold"]})
    return rows


def summary(rows):
    lines = []
    for r in rows:
        if r["type"] == "reward_model":
            lines.append(f"reward model on {r['pairs']} pairs ({r['rm']}): held-out accuracy {r['val_accuracy']:.1%}"
                         + (f", agreement with gold {r['val_gold_agreement']:.1%}" if r["val_gold_agreement"] else ""))
        elif r["type"] == "ensemble_training":
            lines.append(f"training the {r['rm']} of {r['members']}" + (" (and their weight average)" if r["rm"] ==
                         "ensemble" else "") + f" took {r['seconds']:.0f} s; the small reward model "
                         f"{r['single_seconds']:.0f} s")
        elif r["type"] == "run":
            lines.append(f"{r['method']}, reward model {r['rm']}: gold {r['sft_gold']:+.2f} (SFT), peak "
                         f"{r['peak_gold']:+.2f} at sqrt(KL) {r['peak_d']:.2f}, final {r['final_gold']:+.2f} at "
                         f"sqrt(KL) {r['final_d']:.2f} (drop {r['peak_gold'] - r['final_gold']:.2f}; reward-model "
                         f"score {r['final_score']:+.2f}; {r['seconds']:.0f} s)" + (
                             "; the members' spread {:.2f} (SFT), {:.2f} (peak), {:.2f} (final)".format(
                                 *r["members_std"]) if "members_std" in r else ""))
        elif r["type"] == "bon_pool":
            lines.append(f"best-of-N: {r['responses']} samples drawn and scored by every reward model in "
                         f"{r['seconds']:.0f} s")
        elif r["type"] == "fit":
            lines.append(f"fit of {r['method']}, reward model {r['rm']} ({r['form']} form): alpha {r['alpha']:.3f}, "
                         f"beta {r['beta']:.3f}, R^2 {r['r2']:.3f}")
    for rm in dict.fromkeys(r["rm"] for r in rows if r["type"] == "point" and r["method"] == "best-of-N"):
        bon = [r for r in rows if r["type"] == "point" and r["rm"] == rm and r["method"] == "best-of-N"]
        peak = max(bon, key=lambda r: r["gold"])
        lines.append(f"best-of-N, reward model {rm}: peak gold {peak['gold']:+.2f} at N = {peak['n']}, at N = "
                     f"{bon[-1]['n']} {bon[-1]['gold']:+.2f} ({peak['gold'] - bon[-1]['gold']:.2f} below the peak)")
    return "\n".join(lines)


def draw(plt, rows):
    """Gold (top) and the reward-model score (bottom) against sqrt(KL): PPO on the left, best-of-N on the right, one
    line per reward model, Gao et al.'s fits dotted."""
    fig, axes = plt.subplots(2, 2, figsize=(13, 9), squeeze=False)
    fits = {(r["rm"], r["method"]): r for r in rows if r["type"] == "fit"}
    pairs = {r["rm"]: r["pairs"] for r in rows if r["type"] == "reward_model"}
    methods = list(dict.fromkeys(r["method"] for r in rows if r["type"] == "point"))
    rms = list(dict.fromkeys(r["rm"] for r in rows if r["type"] == "point"))
    colours = {rm: f"C{i}" for i, rm in enumerate(rms)}
    for method in methods:
        col = 1 if method == "best-of-N" else 0
        for rm in rms:
            points = [r for r in rows if r["type"] == "point" and r["rm"] == rm and r["method"] == method]
            if not points:
                continue
            d = [p["d"] for p in points]
            style = dict(marker="o", markersize=3, color=colours[rm], linestyle="--" if "default" in method else "-")
            label = f"{rm} ({pairs.get(rm, pairs.get('ensemble mean', '?'))} pairs)" + (
                ", default KL penalty" if "default" in method else "")
            axes[0, col].plot(d, [p["gold"] for p in points], label=label, **style)
            axes[1, col].plot(d, [p["score"] for p in points], label=label, **style)
            fit = fits.get((rm, method))
            if fit:
                grid = np.linspace(0, max(d), 100)
                bend = grid * grid if fit["form"] == "bon" else grid * np.log(np.where(grid > 0, grid, 1.0))
                axes[0, col].plot(grid, fit["gold0"] + fit["alpha"] * grid - fit["beta"] * bend, linestyle=":",
                                  color=colours[rm], linewidth=1)
    for col, title in enumerate((methods[0] + " (dashed: the default KL penalty)", "best-of-N")):
        axes[0, col].set_title(f"{title}\ngold score (the truth; dotted: Gao et al.'s fit)", fontsize=10)
        axes[1, col].set_title("reward-model score (the proxy being optimised)", fontsize=10)
        for ax in axes[:, col]:
            ax.set_xlabel("√KL to SFT" + (" (log N - (N-1)/N, an upper bound)" if col else ""), fontsize=8)
            ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def main(argv=None):
    return experiment_main("overoptimisation", Config, run, summary, draw, argv, TINY)


if __name__ == "__main__":
    main()
