"""
Seeds: the default pipeline's headline numbers (SFT's gold score, the reward model's accuracy, PPO's and DPO's gold
score, win-rate against SFT and KL to it, on held-out prompts) over several seeds, with their mean and spread, so
that a claim about them carries its uncertainty.

What varies is each stage's --seed (the SFT model's initialisation and data order, the responses label.py draws
and the simulated raters' choices, the reward head and data order, PPO's and DPO's data order and sampling, and
every evaluation's samples); the built-in task itself (its data files, tokenizer and held-out prompts) stays the
same, as do all other settings, at their defaults. The stages of the pipeline already finished in --base are reused
for the seed they were run with (normally 0), up to the first one missing or evaluated on other prompts; the rest
run here. About 14 minutes on two CPU cores for two new seeds, as estimated from short runs of the stages;
--tiny runs it in seconds.

    python -m experiments.seeds
    python -m experiments.seeds --seeds 0 1 2 3 --eval_prompts out/data/val_prompts.jsonl
"""

import json
import statistics
from dataclasses import dataclass
from pathlib import Path

from common import load_checkpoint
from data import world
from experiments.common import experiment_main, run_stage
from report import final_metrics

STAGES = ("sft", "label", "reward", "ppo", "dpo")
# the headline numbers: (name, stage, its final metric)
HEADLINE = [("sft_gold", "sft", "gold"), ("rm_accuracy", "reward", "val_accuracy"),
            ("rm_gold_agreement", "reward", "val_gold_agreement"), ("ppo_gold", "ppo", "gold"),
            ("ppo_win_rate", "ppo", "win_rate"), ("ppo_kl", "ppo", "kl"), ("ppo_score", "ppo", "score"),
            ("dpo_gold", "dpo", "gold"), ("dpo_win_rate", "dpo", "win_rate"), ("dpo_kl", "dpo", "kl")]


@dataclass
class Config:
    base: str = "out"  # the finished default pipeline, reused for the seed it was run with
    out_dir: str = "out/experiments/seeds"  # seed<N>/<stage> runs, seeds.jsonl and seeds.png
    eval_prompts: str = ""  # held-out JSONL of {prompt}; empty: the built-in task's (tune on out/data/val_prompts.jsonl)
    seeds: tuple = ("0", "1", "2")  # the seeds of the whole pipeline
    tiny: bool = False  # a smoke run in seconds: every stage tiny
    plot_only: bool = False  # only draw seeds.png from the seeds.jsonl of an earlier run


def finished(stage_dir, stage, seed, eval_prompts, default_eval):
    """Has this stage finished in stage_dir, with this seed, evaluating on eval_prompts (sft, ppo and dpo)?"""
    stage_dir = Path(stage_dir)
    if stage == "label":
        meta = json.loads((stage_dir / "meta.json").read_text()) if (stage_dir / "meta.json").exists() else {}
        counts = meta.get("counts", {})
        return meta.get("config", {}).get("seed") == seed and counts.get("answered") == counts.get("sets", -1)
    if final_metrics(stage_dir) is None or not (stage_dir / "ckpt.pt").exists():
        return False
    config = load_checkpoint(stage_dir / "ckpt.pt")["config"]
    same_prompts = stage == "reward" or (config["eval_prompts"] or default_eval) == eval_prompts
    return config["seed"] == seed and same_prompts


def stage_args(stage, seed, dirs, data_dir, eval_prompts):
    """A stage's command line for a seed, reading the earlier stages' outputs from dirs {stage: its directory}."""
    sft, labels, rm = f"{dirs['sft']}/ckpt.pt", dirs["label"], f"{dirs['reward']}/ckpt.pt"
    pairs = ["--train_file", f"{labels}/prefs_train.jsonl", "--val_file", f"{labels}/prefs_val.jsonl"]
    return ["--seed", seed, *{
        "sft": ["--eval_prompts", eval_prompts],
        "label": ["--sft_ckpt", sft],
        "reward": ["--sft_ckpt", sft, *pairs, "--prompts_file", f"{data_dir}/prompts_train.jsonl"],
        "ppo": ["--sft_ckpt", sft, "--reward_ckpt", rm, "--eval_prompts", eval_prompts],
        "dpo": ["--sft_ckpt", sft, "--reward_ckpt", rm, *pairs, "--eval_prompts", eval_prompts],
    }[stage]]


def run(cfg, bar):
    data_dir = world.builtin_task()[0]
    default_eval = f"{data_dir}/eval_prompts.jsonl"
    eval_prompts = cfg.eval_prompts or default_eval
    plan = {}  # seed: {stage: (directory, reused from base)}
    for seed in map(int, cfg.seeds):
        reusing, plan[seed] = True, {}
        for stage in STAGES:
            reusing = reusing and finished(f"{cfg.base}/{stage}", stage, seed, eval_prompts, default_eval)
            plan[seed][stage] = (f"{cfg.base}/{stage}" if reusing else f"{cfg.out_dir}/seed{seed}/{stage}", reusing)
    bar.total = sum(not reused for stages in plan.values() for _, reused in stages.values())

    rows = []
    for seed, stages in plan.items():
        dirs = {stage: d for stage, (d, _) in stages.items()}
        seconds = 0.0
        for stage, (d, reused) in stages.items():
            if not reused:
                seconds += run_stage(bar, stage, d, stage_args(stage, seed, dirs, data_dir, eval_prompts), cfg.tiny)[1]
        numbers = {stage: final_metrics(d) for stage, d in dirs.items() if stage != "label"}
        rows.append({"type": "seed", "seed": seed, **{name: numbers[stage].get(key) for name, stage, key in HEADLINE},
                     "reused": [stage for stage, (_, reused) in stages.items() if reused],
                     "seconds": round(seconds, 1)})
    per_seed = list(rows)
    for name, _, _ in HEADLINE:
        values = [r[name] for r in per_seed if r[name] is not None]
        if values:
            rows.append({"type": "summary", "metric": name, "n": len(values), "mean": statistics.mean(values),
                         "std": statistics.stdev(values) if len(values) > 1 else 0.0, "min": min(values),
                         "max": max(values)})
    return rows


def summary(rows):
    seeds = [r for r in rows if r["type"] == "seed"]
    lines = [f"{'':<18}" + "".join(f"{'seed ' + str(r['seed']):>10}" for r in seeds) + f"{'mean':>10}{'std':>9}"]
    for r in rows:
        if r["type"] == "summary":
            lines.append(f"{r['metric']:<18}" + "".join(f"{'':>10}" if s[r["metric"]] is None else
                                                        f"{s[r['metric']]:>10.3f}" for s in seeds) +
                         f"{r['mean']:>10.3f}{r['std']:>9.3f}")
    lines += [f"seed {r['seed']}: reused {', '.join(r['reused'])} from the base run" for r in seeds if r["reused"]]
    return "\n".join(lines)


def draw(plt, rows):
    seeds = [r for r in rows if r["type"] == "seed"]
    stats = {r["metric"]: r for r in rows if r["type"] == "summary"}
    panels = [("gold score", ("sft_gold", "ppo_gold", "dpo_gold")), ("win-rate against SFT", ("ppo_win_rate",
              "dpo_win_rate")), ("KL to SFT (nats)", ("ppo_kl", "dpo_kl")),
              ("reward model on held-out pairs", ("rm_accuracy", "rm_gold_agreement"))]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4))
    for ax, (title, metrics) in zip(axes, panels):
        metrics = [m for m in metrics if m in stats]
        for i, m in enumerate(metrics):
            ax.scatter([i] * len(seeds), [s[m] for s in seeds], color="grey", s=12, zorder=2)
            ax.errorbar([i + 0.15], [stats[m]["mean"]], yerr=[stats[m]["std"]], fmt="o", color="black", capsize=4)
        ax.set_xticks(range(len(metrics)), [m.replace("_", " ") for m in metrics], fontsize=8, rotation=15)
        ax.set_title(title, fontsize=10)
    fig.suptitle(f"The default pipeline over {len(seeds)} seeds: each seed (grey), mean ± standard deviation (black)")
    fig.tight_layout()
    return fig


def main(argv=None):
    return experiment_main("seeds", Config, run, summary, draw, argv)


if __name__ == "__main__":
    main()
