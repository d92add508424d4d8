"""
Hacking a rater blind spot: raters who over-reward flattery and length (label.py --rater_bias) teach the reward model
their bias, and PPO exploits it. The reward model's score rises, the gold score falls, and the replies fill with
flattery and padding.

The default pipeline's comparison sets (the SFT model's own responses, in out/label/samples.jsonl) are labelled again
by biased simulated raters, with the same random numbers as the unbiased ones, so only the bias differs. A reward
model (or with --members an ensemble) and PPO are trained on those labels, and PPO on the unbiased labels' reward
model beside it, everything else at the defaults. Reported before (the SFT policy) and after PPO, on held-out
prompts: the reward model's score, the gold score, the share of flattering replies (any of data.world.FLATTERY's
phrases) and the mean length.

It needs the default pipeline's SFT model, labels and reward model (python sft.py && python label.py && python
reward.py). About 4 minutes on two CPU cores, as estimated from short runs of its pieces; --tiny runs it in seconds.

    python -m experiments.rater_bias
    python -m experiments.rater_bias --rater_bias 3 --eval_prompts out/data/val_prompts.jsonl
    python -m experiments.rater_bias --members 4 --reward_agg min --out_dir out/experiments/rater_bias_ensemble
"""

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import label
from common import frozen, load_policy, setup_runtime
from data import world
from evaluate import HeldOut
from experiments.common import experiment_main, needs, run_stage
from report import final_metrics
from tokenizer import EOT, load_tokenizer


@dataclass
class Config:
    base: str = "out"  # the finished default pipeline: its SFT model, its labelled comparison sets and reward model
    out_dir: str = "out/experiments/rater_bias"  # the runs, rater_bias.jsonl and rater_bias.png
    eval_prompts: str = ""  # held-out JSONL of {prompt}; empty: the built-in task's (tune on out/data/val_prompts.jsonl)
    rater_bias: float = 2.0  # how much the biased raters over-reward flattery and length (label.py --rater_bias)
    members: int = 1  # the biased labels' reward model: one, or an ensemble of this many (reward.py --members)
    reward_agg: str = "mean"  # with members > 1: how PPO scores with the biased labels' ensemble (ppo.py --reward_agg)
    n_eval: int = 256  # held-out prompts the policies answer
    max_new_tokens: int = 64  # response length limit of the SFT policy's held-out answers (the stages' default)
    seed: int = 0  # of every run and of the SFT policy's held-out answers
    tiny: bool = False  # a smoke run in seconds: tiny stages on 8 held-out prompts
    plot_only: bool = False  # only draw rater_bias.png from the rater_bias.jsonl of an earlier run


TINY = {"n_eval": 8, "max_new_tokens": 16}
FLATTERING = re.compile(r"\b(" + "|".join(sorted(world.FLATTERY)) + r")\b")


def flattering(response):
    """Does the reply (up to its end-of-text) use any of the gold judge's flattering phrases?"""
    return bool(FLATTERING.search(response.split(EOT, 1)[0].lower()))


def label_shares(prefs_file):
    """Of a preference file's pairs where exactly one reply flatters, the share whose chosen one does; of all its
    pairs, the share whose chosen reply is the longer in words."""
    pairs = [json.loads(line) for line in Path(prefs_file).read_text().splitlines()]
    split = [p for p in pairs if flattering(p["chosen"]) != flattering(p["rejected"])]
    return {"flattering_chosen": sum(flattering(p["chosen"]) for p in split) / max(1, len(split)),
            "longer_chosen": sum(len(p["chosen"].split()) > len(p["rejected"].split()) for p in pairs) / len(pairs)}


def sft_answers(sft_ckpt, eval_prompts, n, max_new_tokens, seed):
    """The SFT policy's answers to the held-out prompts, drawn as ppo.py draws its baseline (so the very same ones)."""
    rt = setup_runtime(seed=seed)
    policy, spec, _ = load_policy(sft_ckpt, "--sft_ckpt")
    policy = frozen(policy).to(rt.device)
    heldout = HeldOut(eval_prompts, load_tokenizer(spec), policy.config.block_size, max_new_tokens, 1.0, n, rt,
                      judge=world)
    return heldout.evaluate(policy, seed)[1]


def run(cfg, bar):
    needs(cfg.base, "sft", "label", "reward")
    sft_ckpt = f"{cfg.base}/sft/ckpt.pt"
    data_dir = world.builtin_task()[0]
    eval_prompts = cfg.eval_prompts or f"{data_dir}/eval_prompts.jsonl"
    bar.total = 4
    base_label = Path(cfg.base, "label")
    if not (base_label / "samples.jsonl").exists():
        raise SystemExit(f"{base_label} holds no samples.jsonl: run `python label.py` (this version) first")

    # the same comparison sets, labelled anew by biased raters: label.py finds them drawn, with the settings in
    # meta.json (if the SFT model is no longer the one that drew them, it draws anew from it)
    biased = Path(cfg.out_dir, "label_biased")
    shutil.rmtree(biased, ignore_errors=True)  # an earlier run's answers may be of another bias
    biased.mkdir(parents=True)
    sampling = {**json.loads((base_label / "meta.json").read_text())["sampling"], "sft_ckpt": sft_ckpt}
    shutil.copy(base_label / "samples.jsonl", biased / "samples.jsonl")
    (biased / "meta.json").write_text(json.dumps({"sampling": sampling}, indent=2))
    run_stage(bar, "label", biased, [*(x for k in label.SAMPLING for x in (f"--{k}", sampling[k])),
                                     "--prompts_file", sampling["prompts_file"], "--rater_bias", cfg.rater_bias],
              cfg.tiny)
    reward_biased, _ = run_stage(bar, "reward", f"{cfg.out_dir}/reward_biased", [
        "--sft_ckpt", sft_ckpt, "--train_file", biased / "prefs_train.jsonl", "--val_file", biased / "prefs_val.jsonl",
        "--prompts_file", f"{data_dir}/prompts_train.jsonl", "--seed", cfg.seed, "--members", cfg.members], cfg.tiny)

    sft_rows = sft_answers(sft_ckpt, eval_prompts, cfg.n_eval, cfg.max_new_tokens, cfg.seed)
    rows = []
    arms = (("unbiased", 0.0, base_label, f"{cfg.base}/reward", 1, "mean"),
            ("biased", cfg.rater_bias, biased, f"{cfg.out_dir}/reward_biased", cfg.members, cfg.reward_agg))
    for labels, bias, labels_dir, reward_dir, members, how in arms:
        run_dir = f"{cfg.out_dir}/ppo_{labels}"
        summary, seconds = run_stage(bar, "ppo", run_dir, [
            "--sft_ckpt", sft_ckpt, "--reward_ckpt", f"{reward_dir}/ckpt.pt", "--reward_agg", how,
            "--eval_prompts", eval_prompts, "--n_eval", cfg.n_eval, "--seed", cfg.seed], cfg.tiny)
        ppo_rows = [json.loads(line) for line in Path(run_dir, "samples.jsonl").read_text().splitlines()]
        rm = reward_biased if labels == "biased" else final_metrics(reward_dir)
        # the replies that show what PPO learned: flattering ones first, then the longest
        shown = sorted(ppo_rows, key=lambda r: (flattering(r["response"]), len(r["response"])), reverse=True)[:3]
        rows.append({"type": "run", "labels": labels, "rater_bias": bias, "members": members, "reward_agg": how,
                     **label_shares(Path(labels_dir, "prefs_train.jsonl")),
                     "rm_val_accuracy": rm["val_accuracy"], "rm_gold_agreement": rm.get("val_gold_agreement"),
                     "sft_score": summary["sft_score"], "score": summary["score"],
                     "sft_gold": summary["sft_gold"], "gold": summary["gold"],
                     "sft_flattering": sum(flattering(r["response"]) for r in sft_rows) / len(sft_rows),
                     "flattering": sum(flattering(r["response"]) for r in ppo_rows) / len(ppo_rows),
                     "sft_length": summary["sft_length"], "length": summary["length"],
                     "win_rate": summary.get("win_rate"), "kl": summary["kl"], "seconds": round(seconds, 1),
                     "examples": [{k: r[k] for k in ("prompt", "response", "score", "gold")} for r in shown]})
    return rows


def summary(rows):
    lines = []
    for r in rows:
        if r["type"] != "run":
            continue
        model = f"an ensemble of {r['members']} ({r['reward_agg']})" if r.get("members", 1) > 1 else "one reward model"
        lines.append(f"{r['labels']} labels, {model} (rater bias {r['rater_bias']:g}; when one reply of a pair "
                     f"flatters, the raters chose it {r['flattering_chosen']:.0%} of the time, the longer reply "
                     f"{r['longer_chosen']:.0%}), SFT -> PPO: reward-model score {r['sft_score']:+.2f} -> "
                     f"{r['score']:+.2f}, gold {r['sft_gold']:+.2f} -> {r['gold']:+.2f}, flattering replies "
                     f"{r['sft_flattering']:.0%} -> {r['flattering']:.0%}, length {r['sft_length']:.1f} -> "
                     f"{r['length']:.1f} tokens")
        lines += [f"    {e['prompt'].strip()!r} ->{e['response']!r} (score {e['score']:+.2f}, gold {e['gold']:+.2f})"
                  for e in r["examples"]]
    return "\n".join(lines)


def draw(plt, rows):
    runs = [r for r in rows if r["type"] == "run"]
    panels = [("score", "reward-model score\n(of the reward model PPO trained on)", "{:+.2f}"),
              ("gold", "gold score", "{:+.2f}"), ("flattering", "flattering replies", "{:.0%}"),
              ("length", "mean length (tokens)", "{:.1f}")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4))
    width = 0.38
    for ax, (key, title, fmt) in zip(axes, panels):
        for offset, (when, prefix) in ((-width / 2, ("SFT", "sft_")), (width / 2, ("after PPO", ""))):
            values = [r[prefix + key] for r in runs]
            bars = ax.bar([i + offset for i in range(len(runs))], values, width, label=when)
            ax.bar_label(bars, [fmt.format(v) for v in values], fontsize=7)
        ax.set_xticks(range(len(runs)), [f"{r['labels']} labels\n(bias {r['rater_bias']:g})" for r in runs], fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.axhline(0, color="black", linewidth=0.5)
    axes[0].legend(fontsize=8)
    fig.suptitle("Raters who over-reward flattery and length: PPO learns their blind spot")
    fig.tight_layout()
    return fig


def main(argv=None):
    return experiment_main("rater_bias", Config, run, summary, draw, argv, TINY)


if __name__ == "__main__":
    main()
