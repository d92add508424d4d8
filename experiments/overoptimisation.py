"""
Reward over-optimisation (Gao et al. 2022, "Scaling laws for reward model overoptimization"): optimise a reward
model hard enough and its score keeps rising while the gold score it stands in for peaks and falls.

PPO runs long with no KL penalty (--kl_coef), evaluated on held-out prompts every --eval_interval iterations, against
two reward models: the default pipeline's, trained on all the labels, and one trained on a small --fraction of them.
The same long run with ppo.py's default KL penalty shows what the penalty does, and best-of-N sampling from the SFT
policy (N = 1 ... 64) is the other way to optimise each reward model. Against d = sqrt(KL to SFT), each method's
gold gain over the SFT policy is fitted with Gao et al.'s forms by least squares:

    best-of-N:  gold(d) - gold(0) = d (alpha - beta d)
    RL (PPO):   gold(d) - gold(0) = d (alpha - beta log d)

and alpha, beta and R^2 are reported for each reward model.

It needs the default pipeline's SFT model, labels and reward model (python sft.py && python label.py && python
reward.py); it trains the small reward model and four PPO runs. About 13 minutes on two CPU cores with the defaults
below, as estimated from short runs of its pieces; --tiny runs it in seconds.

    python -m experiments.overoptimisation
    python -m experiments.overoptimisation --fraction 0.2 --kl_coef 0.01 --eval_prompts out/data/val_prompts.jsonl
"""

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from data import world
from experiments.common import (best_of_n, best_of_n_kl, experiment_main, held_out_prompts, needs, powers_of_two,
                                run_stage, sample_pool)
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
    bon_max: int = 64  # best-of-N for N = 1, 2, 4, ... up to this, from bon_max samples per prompt
    bon_prompts: int = 128  # held-out prompts for best-of-N
    max_new_tokens: int = 64  # best-of-N's response length limit (the stages' default)
    seed: int = 0  # of the small reward model's pairs, every run, and best-of-N's samples
    tiny: bool = False  # a smoke run in seconds: tiny stages, 3 iterations evaluated after each, N up to 4
    plot_only: bool = False  # only draw overoptimisation.png from the overoptimisation.jsonl of an earlier run


TINY = {"fraction": 0.5, "iterations": 3, "eval_interval": 1, "n_eval": 8, "bon_max": 4, "bon_prompts": 4,
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
    points = [(0, 0.0, sft["eval/sft_gold"], sft["eval/sft_score"])]
    points += [(l["step"], max(l["eval/kl"], 0.0), l["eval/gold"], l["eval/score"]) for l in lines if "eval/gold" in l]
    return [{"type": "point", "rm": rm, "method": method, "step": step, "kl": kl, "d": math.sqrt(kl), "gold": gold,
             "score": score} for step, kl, gold, score in points]


def run(cfg, bar):
    needs(cfg.base, "sft", "label", "reward")
    sft_ckpt = f"{cfg.base}/sft/ckpt.pt"
    data_dir = world.builtin_task()[0]
    eval_prompts = cfg.eval_prompts or f"{data_dir}/eval_prompts.jsonl"
    bar.total = 6
    rows = []

    small, n_small, n_all = small_labels(cfg.base, cfg.out_dir, cfg.fraction, cfg.seed)
    summary, _ = run_stage(bar, "reward", f"{cfg.out_dir}/reward_small", [
        "--sft_ckpt", sft_ckpt, "--train_file", small, "--val_file", f"{cfg.base}/label/prefs_val.jsonl",
        "--prompts_file", f"{data_dir}/prompts_train.jsonl", "--seed", cfg.seed], cfg.tiny)
    reward_models = {"all": f"{cfg.base}/reward/ckpt.pt", "small": f"{cfg.out_dir}/reward_small/ckpt.pt"}
    for rm, numbers, pairs in (("all", final_metrics(f"{cfg.base}/reward"), n_all), ("small", summary, n_small)):
        rows.append({"type": "reward_model", "rm": rm, "pairs": pairs, "val_accuracy": numbers["val_accuracy"],
                     "val_gold_agreement": numbers.get("val_gold_agreement")})

    ppo_args = ["--sft_ckpt", sft_ckpt, "--eval_prompts", eval_prompts, "--iterations", cfg.iterations,
                "--eval_interval", cfg.eval_interval, "--n_eval", cfg.n_eval, "--seed", cfg.seed]
    no_penalty, penalty = f"PPO, beta {cfg.kl_coef:g}", "PPO, default KL penalty"
    for rm, path in reward_models.items():
        for method, extra, name in ((no_penalty, ["--kl_coef", cfg.kl_coef], f"ppo_{rm}_beta{cfg.kl_coef:g}"),
                                    (penalty, [], f"ppo_{rm}_default_beta")):
            _, seconds = run_stage(bar, "ppo", f"{cfg.out_dir}/{name}", [*ppo_args, "--reward_ckpt", path, *extra],
                                   cfg.tiny)
            points = curve(f"{cfg.out_dir}/{name}", rm, method)
            rows += points
            peak = max(points, key=lambda p: p["gold"])
            rows.append({"type": "run", "rm": rm, "method": method, "sft_gold": points[0]["gold"],
                         "peak_gold": peak["gold"], "peak_d": peak["d"], "peak_step": peak["step"],
                         "final_gold": points[-1]["gold"], "final_d": points[-1]["d"],
                         "final_score": points[-1]["score"], "seconds": round(seconds, 1)})

    bar.set_postfix_str(f"best-of-{cfg.bon_max} samples of {sft_ckpt}")
    prompts = held_out_prompts(eval_prompts, cfg.bon_prompts)
    scores, gold, _ = sample_pool(sft_ckpt, list(reward_models.values()), prompts, cfg.bon_max, cfg.max_new_tokens,
                                  1.0, cfg.seed)
    for rm, path in reward_models.items():
        for n in powers_of_two(cfg.bon_max):
            kl = best_of_n_kl(n)
            rows.append({"type": "point", "rm": rm, "method": "best-of-N", "n": n, "kl": kl, "d": math.sqrt(kl),
                         "gold": best_of_n(scores[path], gold, n), "score": best_of_n(scores[path], scores[path], n)})
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
        elif r["type"] == "run":
            lines.append(f"{r['method']}, reward model {r['rm']}: gold {r['sft_gold']:+.2f} (SFT), peak "
                         f"{r['peak_gold']:+.2f} at sqrt(KL) {r['peak_d']:.2f}, final {r['final_gold']:+.2f} at "
                         f"sqrt(KL) {r['final_d']:.2f} (reward-model score {r['final_score']:+.2f})")
        elif r["type"] == "fit":
            lines.append(f"fit of {r['method']}, reward model {r['rm']} ({r['form']} form): alpha {r['alpha']:.3f}, "
                         f"beta {r['beta']:.3f}, R^2 {r['r2']:.3f}")
    return "\n".join(lines)


def draw(plt, rows):
    rms = list(dict.fromkeys(r["rm"] for r in rows if r["type"] == "point"))
    fig, axes = plt.subplots(2, len(rms), figsize=(6 * len(rms), 8), squeeze=False)
    fits = {(r["rm"], r["method"]): r for r in rows if r["type"] == "fit"}
    pairs = {r["rm"]: r["pairs"] for r in rows if r["type"] == "reward_model"}
    for col, rm in enumerate(rms):
        for method in dict.fromkeys(r["method"] for r in rows if r["type"] == "point"):
            points = [r for r in rows if r["type"] == "point" and r["rm"] == rm and r["method"] == method]
            d = [p["d"] for p in points]
            line, = axes[0, col].plot(d, [p["gold"] for p in points], marker="o", markersize=3, label=method)
            axes[1, col].plot(d, [p["score"] for p in points], marker="o", markersize=3, label=method)
            fit = fits.get((rm, method))
            if fit:
                grid = np.linspace(0, max(d), 100)
                bend = grid * grid if fit["form"] == "bon" else grid * np.log(np.where(grid > 0, grid, 1.0))
                axes[0, col].plot(grid, fit["gold0"] + fit["alpha"] * grid - fit["beta"] * bend, linestyle=":",
                                  color=line.get_color(), label=f"fit: α={fit['alpha']:.2f}, β={fit['beta']:.2f}, "
                                                                f"R²={fit['r2']:.2f}")
        title = f"reward model on {pairs.get(rm, '?')} labelled pairs ({rm})"
        axes[0, col].set_title(f"{title}\ngold score (the truth)", fontsize=10)
        axes[1, col].set_title("reward-model score (the proxy being optimised)", fontsize=10)
        for ax in axes[:, col]:
            ax.set_xlabel("√KL to SFT (best-of-N: log N - (N-1)/N, an upper bound)", fontsize=8)
            ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def main(argv=None):
    return experiment_main("overoptimisation", Config, run, summary, draw, argv, TINY)


if __name__ == "__main__":
    main()
