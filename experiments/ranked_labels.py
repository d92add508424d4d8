"""
Ranked labels: is a ranking of 4 replies worth more to the reward model than the comparisons of 2 it costs?

InstructGPT had raters rank K = 4 to 9 replies and trained on every pair of each ranking. A ranking is not free: a
rater who sorts m replies makes about ceil(log2 m!) comparisons (1 for two, 3 for three, 5 for four), and its pairs
share a prompt and replies, so they teach less than as many independent pairs. Here the budget is counted in those
decisions: for each budget, label.py --k 2 and --k 4 label the SFT model's own replies (the same simulated raters),
a reward model learns from each, and all of them are measured on one set of pairs of replies to the validation
prompts, which none of them trained on: their agreement with the gold judge, against the raters' own.

It needs the default pipeline's SFT model (python sft.py). About 7 minutes on two CPU cores with the defaults;
--tiny runs it in seconds.

    python -m experiments.ranked_labels
    python -m experiments.ranked_labels --decisions 2500 5000 --seed 1
"""

import json
import math
from dataclasses import dataclass
from pathlib import Path

from data import world
from experiments.common import TINY_ARGS, experiment_main, needs, run_missing
from report import final_metrics


@dataclass
class Config:
    base: str = "out"  # the finished default pipeline: its SFT model
    out_dir: str = "out/experiments/ranked_labels"  # the labels, the reward models, ranked_labels.jsonl and .png
    ks: tuple = ("2", "4")  # replies per comparison set (label.py --k)
    decisions: tuple = ("1250", "2500", "5000")  # the raters' budgets, in comparisons (5000: the default pipeline's)
    eval_sets: int = 1000  # comparison sets of two replies to the validation prompts that every reward model is measured on
    seed: int = 0  # of the labels and the reward models
    jobs: int = 2  # runs at a time, each a process with one CPU thread
    tiny: bool = False  # a smoke run in seconds: tiny stages, small budgets
    plot_only: bool = False  # only draw ranked_labels.png from the ranked_labels.jsonl of an earlier run


TINY = {"decisions": ("20", "40"), "eval_sets": 10}


def decisions_per_ranking(m):
    """The comparisons it takes to sort m replies, at least: ceil(log2 m!), the bits a ranking of m carries."""
    return math.ceil(math.log2(math.factorial(m)) - 1e-9)


def run(cfg, bar):
    needs(cfg.base, "sft")
    data_dir = world.builtin_task()[0]
    sft_ckpt = f"{cfg.base}/sft/ckpt.pt"
    stage = lambda name, out, *args: ([f"{name}.py", *(TINY_ARGS[name] if cfg.tiny else []), *args, "--out_dir", out],
                                      f"{out}/log.txt")
    eval_dir = f"{cfg.out_dir}/label_eval"  # every set held out: --val_every 1
    eval_labels = stage("label", eval_dir, "--sft_ckpt", sft_ckpt, "--prompts_file", f"{data_dir}/val_prompts.jsonl",
                        "--n_pairs", cfg.eval_sets, "--val_every", 1, "--seed", cfg.seed)
    points = [(int(k), int(d)) for k in cfg.ks for d in cfg.decisions]
    chains = []  # per point: its labels, then its reward model
    for k, d in points:
        labels, rm = f"{cfg.out_dir}/label_k{k}_d{d}", f"{cfg.out_dir}/reward_k{k}_d{d}"
        chains.append([stage("label", labels, "--sft_ckpt", sft_ckpt, "--k", k, "--seed", cfg.seed, "--n_pairs",
                             max(1, d // decisions_per_ranking(k))),
                       stage("reward", rm, "--sft_ckpt", sft_ckpt, "--train_file", f"{labels}/prefs_train.jsonl",
                             "--val_file", f"{eval_dir}/prefs_val.jsonl", "--prompts_file",
                             f"{data_dir}/prompts_train.jsonl", "--seed", cfg.seed)])
    bar.total = 1 + 2 * len(points)
    times = run_missing([eval_labels] + [chain[0] for chain in chains], cfg.jobs)  # every label first
    bar.update(1 + len(points))
    times.update(run_missing([chain[1] for chain in chains], cfg.jobs))
    bar.update(len(points))

    ceiling = json.loads(Path(eval_dir, "meta.json").read_text())["agreement"]["prefs_val"]
    rows = [{"type": "eval_pairs", "pairs": len(Path(eval_dir, "prefs_val.jsonl").read_text().splitlines()),
             "raters_agreement": ceiling}]
    for (k, d), chain in zip(points, chains):
        labels, rm = Path(chain[0][1]).parent, Path(chain[1][1]).parent
        sets = [json.loads(line) for line in (labels / "samples.jsonl").read_text().splitlines()]
        numbers = final_metrics(rm)
        rows.append({"type": "point", "k": k, "budget": d, "sets": len(sets),
                     "decisions": sum(decisions_per_ranking(len(s["responses"])) for s in sets),
                     "train_pairs": len((labels / "prefs_train.jsonl").read_text().splitlines()),
                     "label_seconds": round(times[tuple(map(str, chain[0][0]))][0], 1),
                     "reward_seconds": round(times[tuple(map(str, chain[1][0]))][0], 1),
                     **{key: v for key, v in numbers.items() if key.startswith("val_gold_agreement")},
                     "val_accuracy": numbers["val_accuracy"]})
    return rows


def summary(rows):
    lines = []
    for r in rows:
        if r["type"] == "eval_pairs":
            lines.append(f"measured on {r['pairs']} pairs of replies to the validation prompts, on which the raters "
                         f"agree with the gold judge {r['raters_agreement']:.1%}")
        elif r["type"] == "point":
            lines.append(f"k = {r['k']}, {r['decisions']} decisions ({r['sets']} sets, {r['train_pairs']} training "
                         f"pairs): agreement with gold {r['val_gold_agreement']:.1%} (right>wrong "
                         f"{r.get('val_gold_agreement/right>wrong', float('nan')):.0%}); labelling "
                         f"{r['label_seconds']:.0f} s, reward model {r['reward_seconds']:.0f} s")
    return "\n".join(lines)


def draw(plt, rows):
    fig, ax = plt.subplots(figsize=(6, 4))
    for k in dict.fromkeys(r["k"] for r in rows if r["type"] == "point"):
        points = [r for r in rows if r["type"] == "point" and r["k"] == k]
        ax.plot([p["decisions"] for p in points], [p["val_gold_agreement"] for p in points], marker="o",
                label=f"k = {k}" + (" (pairs)" if k == 2 else " (rankings, every pair of each)"))
    ceiling = next(r["raters_agreement"] for r in rows if r["type"] == "eval_pairs")
    ax.axhline(ceiling, color="black", linestyle=":", label="the raters' own agreement")
    ax.set_xscale("log")
    ax.set_xlabel("rater decisions (a ranking of m replies: ceil(log2 m!) comparisons)")
    ax.set_ylabel("reward model's agreement with the gold judge")
    ax.set_title("Ranked labels against pairs, at the same rater budget", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def main(argv=None):
    return experiment_main("ranked_labels", Config, run, summary, draw, argv, TINY)


if __name__ == "__main__":
    main()
