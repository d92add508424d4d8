"""
The training curves of a pipeline run: each out/<stage>/metrics.jsonl drawn as one PNG of panels (losses, the
reward model's score, the gold judge's score on held-out prompts, KL to SFT, beta, clip fractions, explained
variance, ...), into out/plots/<stage>.png. A dashed line marks the SFT policy's value where a stage measured it.

matplotlib is an optional extra, for this script and the experiments' figures only: pip install matplotlib

    python plot.py
    python plot.py --out_dir out/experiments/frontier     # the runs of an experiment
"""

import json
import math
from dataclasses import dataclass
from pathlib import Path

from common import parse_config

MISSING = "drawing needs matplotlib, an optional extra: pip install matplotlib"

# (title, metrics): a panel is drawn for each title whose metrics a stage logged, in this order
PANELS = [
    ("loss", ("loss", "val_loss", "eval/loss")),
    ("PPO losses", ("loss/policy", "loss/value")),
    ("accuracy on preference pairs", ("accuracy", "val_accuracy", "val_gold_agreement", "rewards/accuracies",
                                      "eval/rewards/accuracies")),
    ("DPO implicit rewards", ("rewards/chosen", "rewards/rejected", "rewards/margins")),
    ("reward-model score", ("objective/scores", "objective/rlhf_reward", "eval/score")),
    ("gold score, held-out", ("eval/gold",)),
    ("win-rate against SFT, held-out", ("eval/win_rate", "eval/rm_win_rate")),
    ("KL to SFT (nats)", ("objective/kl", "objective/kl_k3", "eval/kl")),
    ("beta (KL coefficient)", ("objective/beta",)),
    ("approx. KL to the sampling policy", ("policy/approxkl",)),
    ("clip fraction", ("policy/clipfrac", "val/clipfrac")),
    ("explained variance", ("val/explained_variance",)),
    ("entropy (nats per response)", ("objective/entropy",)),
    ("response length (tokens)", ("response/length", "eval/length")),
    ("ended with end-of-text", ("response/eot_rate", "eval/eot_rate")),
    ("gradient norm", ("grad_norm", "grad_norm/policy", "grad_norm/value")),
    ("learning rate", ("lr",)),
]


@dataclass
class Config:
    out_dir: str = "out"  # the directory holding the stages' directories; the figures go to out_dir/plots


def read_curves(path):
    """
    The curves of a metrics.jsonl: ({metric: (steps, values)}, {metric: the SFT policy's value}). The SFT values are
    what a stage measured of the SFT policy beside its own (eval/sft_gold at step 0, final/sft_gold at the end),
    keyed by the policy's metric they compare with (eval/gold); the other final/ numbers repeat the last evaluation.
    """
    curves, sft = {}, {}
    for line in Path(path).read_text().splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        step = record.pop("step")
        for name, value in record.items():
            for prefix in ("eval/sft_", "final/sft_"):
                if name.startswith(prefix):
                    sft["eval/" + name.removeprefix(prefix)] = value
            if not name.startswith(("eval/sft_", "final/")):
                steps, values = curves.setdefault(name, ([], []))
                steps.append(step)
                values.append(value)
    return curves, sft


def panels(curves, sft):
    """[(title, {metric: (steps, values)}, {metric: SFT value})] of the PANELS a stage logged anything of."""
    found = []
    for title, names in PANELS:
        lines = {n: curves[n] for n in names if n in curves}
        if lines:
            found.append((title, lines, {n: sft[n] for n in lines if n in sft}))
    return found


def pyplot():
    """matplotlib.pyplot drawing to files (no display needed), or None where matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def draw(plt, name, found, path, columns=4):
    rows = math.ceil(len(found) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3 * rows), squeeze=False)
    for ax, (title, lines, sft) in zip(axes.flat, found):
        for metric, (steps, values) in lines.items():
            sparse = len(steps) < 20  # evaluations: a few points, each worth a marker
            ax.plot(steps, values, marker="o" if sparse else None, markersize=3, linewidth=1, label=metric)
            if metric in sft:
                ax.axhline(sft[metric], color="grey", linestyle="--", linewidth=1, label=f"{metric} of SFT")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=8)
        if len(lines) > 1 or sft:
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(found):]:
        ax.axis("off")
    fig.suptitle(name)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv=None):
    cfg, _ = parse_config(Config, argv)
    plt = pyplot()
    if plt is None:
        raise SystemExit(MISSING)
    files = sorted(Path(cfg.out_dir).glob("*/metrics.jsonl"))
    if not files:
        raise SystemExit(f"no metrics.jsonl in the directories of {cfg.out_dir}: run a stage first (see README.md)")
    plots = Path(cfg.out_dir) / "plots"
    plots.mkdir(exist_ok=True)
    written = []
    for file in files:
        found = panels(*read_curves(file))
        if found:
            path = plots / f"{file.parent.name}.png"
            draw(plt, str(file.parent), found, path)
            written.append(path)
            print(f"{file} -> {path}")
    return written


if __name__ == "__main__":
    main()
