"""
Critic-free RL beside PPO, and the task's own check of an answer beside the learned reward: every --advantage of
ppo.py (gae, which is PPO, rloo, grpo, dr_grpo, reinforce_pp) with every --reward (rm, verifier, rm+verifier), each
from the default pipeline's SFT model and reward model, all other settings at their defaults, so each samples as
many replies per iteration as PPO does (64: 16 prompts x 4 for the group methods). On held-out prompts: gold score,
win-rate against SFT, per kind of prompt the shares of right / wrong / unsure / evasive replies, KL to SFT, the
share of distinct replies, wall time per iteration and peak memory of each run. Then PPO and the best critic-free
estimator (the highest held-out gold with the reward model alone at the first seed: chosen on held-out prompts,
which the README says) over more seeds, with the reward model alone and with rm+verifier: the other seeds' SFT
models, labels and reward models are those of experiments/seeds.py, made here where missing. Last, the length of
the replies the verifier calls wrong or unanswered as training goes, for grpo and dr_grpo (Dr. GRPO's finding: the
divisions by the group's std and by each reply's length let wrong replies grow long).

Every run is its own process with one CPU thread, --jobs of them at a time: its peak memory is its own, and its
numbers do not depend on how many run beside it. About 60 CPU-minutes with the defaults (half that on two cores);
--tiny runs it in seconds.

    python -m experiments.critic_free
    python -m experiments.critic_free --seeds 0 --eval_prompts out/data/val_prompts.jsonl   # one seed, for tuning
"""

import json
import statistics
from dataclasses import dataclass
from pathlib import Path

from data import world
from experiments.common import TINY_ARGS, experiment_main, needs, run_all, run_missing
from experiments.seeds import finished, stage_args
from report import final_metrics

ESTIMATORS = ("gae", "rloo", "grpo", "dr_grpo", "reinforce_pp")
REWARDS = ("rm", "verifier", "rm+verifier")
PER_KIND = ("gold", "win_rate", *world.LABELS)
KEYS = ("gold", "win_rate", "win_rate_ci", "kl", "distinct", "length", "score", "sft_gold", "sft_distinct",
        *world.LABELS, *(f"{who}{kind}/{key}" for who in ("", "sft_") for kind in world.KINDS for key in PER_KIND))


@dataclass
class Config:
    base: str = "out"  # the finished default pipeline: its SFT model and reward model are the first seed's
    seeds_dir: str = "out/experiments/seeds"  # where experiments/seeds.py keeps the other seeds' stages (made here if missing)
    out_dir: str = "out/experiments/critic_free"  # the runs, critic_free.jsonl and critic_free.png
    eval_prompts: str = ""  # held-out JSONL of {prompt}; empty: the built-in task's (tune on out/data/val_prompts.jsonl)
    estimators: tuple = ESTIMATORS  # ppo.py's --advantage values to run
    rewards: tuple = REWARDS  # ppo.py's --reward values to run
    seeds: tuple = ("0", "1", "2")  # the first runs the whole table; the others PPO and the best critic-free estimator
    jobs: int = 2  # runs at a time, one CPU thread each
    tiny: bool = False  # a smoke run in seconds: tiny stages, two estimators, one seed
    plot_only: bool = False  # only draw critic_free.png from the critic_free.jsonl of an earlier run


TINY = {"estimators": ("gae", "grpo"), "rewards": ("rm", "rm+verifier"), "seeds": ("0",)}


def ppo_command(cfg, seed, advantage, reward, sft_ckpt, reward_ckpt, eval_prompts):
    out = f"{cfg.out_dir}/seed{seed}/{advantage}_{reward}"
    args = ["ppo.py", *(TINY_ARGS["ppo"] if cfg.tiny else []), "--sft_ckpt", sft_ckpt, "--reward_ckpt", reward_ckpt,
            "--eval_prompts", eval_prompts, "--advantage", advantage, "--reward", reward, "--seed", seed,
            "--out_dir", out]
    return args, f"{out}/log.txt"


def row(summary, seconds, memory, seed, advantage, reward):
    return {"type": "run", "seed": seed, "advantage": advantage, "reward": reward,
            **{k: summary[k] for k in KEYS if k in summary}, "seconds_per_iteration": 1 / summary["iters_per_s"],
            "seconds": round(seconds, 1), "peak_mb": round(memory)}


def run(cfg, bar):
    needs(cfg.base, "sft", "label", "reward")
    data_dir = world.builtin_task()[0]
    eval_prompts = cfg.eval_prompts or f"{data_dir}/eval_prompts.jsonl"
    first, *others = map(int, cfg.seeds)
    bases = {first: {"sft": f"{cfg.base}/sft", "label": f"{cfg.base}/label", "reward": f"{cfg.base}/reward"}}
    chains = []  # the other seeds' SFT, labels and reward model, each seed a chain, as experiments/seeds.py makes them
    for seed in others:
        bases[seed] = {stage: f"{cfg.seeds_dir}/seed{seed}/{stage}" for stage in ("sft", "label", "reward")}
        chain = [([f"{stage}.py", *(TINY_ARGS[stage] if cfg.tiny else []),
                   *stage_args(stage, seed, bases[seed], data_dir, eval_prompts), "--out_dir", d], f"{d}/log.txt")
                 for stage, d in bases[seed].items() if not finished(d, stage, seed, eval_prompts, eval_prompts)]
        chains += [chain] if chain else []
    ckpts = lambda seed: (f"{bases[seed]['sft']}/ckpt.pt", f"{bases[seed]['reward']}/ckpt.pt")

    table = [(first, a, r) for a in cfg.estimators for r in cfg.rewards]
    bar.total = len(table) + sum(map(len, chains))
    commands = {key: ppo_command(cfg, key[0], key[1], key[2], *ckpts(key[0]), eval_prompts) for key in table}
    run_all(chains, cfg.jobs)
    times = run_missing(list(commands.values()), cfg.jobs)
    bar.update(len(table) + sum(map(len, chains)))
    rows = [row(final_metrics(Path(commands[key][1]).parent), *times[tuple(map(str, commands[key][0]))], *key)
            for key in table]

    critic_free = [r for r in rows if r["advantage"] != "gae" and r["reward"] == "rm"]
    best = max(critic_free, key=lambda r: r["gold"])["advantage"] if critic_free else None
    repeated = [(seed, a, r) for seed in others for a in ("gae", best) if a for r in ("rm", "rm+verifier")
                if a in cfg.estimators and r in cfg.rewards]
    commands = {key: ppo_command(cfg, key[0], key[1], key[2], *ckpts(key[0]), eval_prompts) for key in repeated}
    bar.total += len(repeated)
    times = run_missing(list(commands.values()), cfg.jobs)
    bar.update(len(repeated))
    rows += [row(final_metrics(Path(commands[key][1]).parent), *times[tuple(map(str, commands[key][0]))], *key)
             for key in repeated]

    for advantage in {r[1] for r in repeated} | ({"gae", best} if not repeated else set()):
        for reward in ("rm", "rm+verifier"):
            runs = [r for r in rows if r["advantage"] == advantage and r["reward"] == reward]
            for name in ("gold", "win_rate", "kl", "distinct", "wrong"):
                values = [r[name] for r in runs if name in r]
                if len(values) > 1:
                    rows.append({"type": "seeds", "advantage": advantage, "reward": reward, "metric": name,
                                 "n": len(values), "mean": statistics.mean(values), "std": statistics.stdev(values)})
    for advantage in ("grpo", "dr_grpo"):
        for reward in [r for r in ("verifier", "rm+verifier") if r in cfg.rewards]:
            metrics = Path(cfg.out_dir, f"seed{first}", f"{advantage}_{reward}", "metrics.jsonl")
            if metrics.exists():
                lines = [json.loads(line) for line in metrics.read_text().splitlines()]
                rows.append({"type": "wrong_length", "advantage": advantage, "reward": reward,
                             "iterations": [m["step"] for m in lines if "response/wrong_length" in m],
                             "length": [m["response/wrong_length"] for m in lines if "response/wrong_length" in m]})
    rows.append({"type": "best", "advantage": best})
    return rows


def summary(rows):
    runs = [r for r in rows if r["type"] == "run"]
    wrong = lambda r, who="": sum(r.get(f"{who}{k}/wrong", 0) for k in world.CHECKED) / len(world.CHECKED)
    lines = [f"{'seed':>4} {'advantage':<13}{'reward':<12}{'gold':>6}{'win':>7}{'KL':>6}{'distinct':>9}"
             f"{'wrong*':>8}{'s/iter':>8}{'MB':>6}   per kind: right/wrong/unsure/evasive"]
    for r in runs:
        kinds = "  ".join(f"{k} " + "/".join(f"{r.get(f'{k}/{label}', 0):.0%}" for label in world.LABELS)
                          for k in world.KINDS)
        lines.append(f"{r['seed']:>4} {r['advantage']:<13}{r['reward']:<12}{r['gold']:>+6.2f}{r['win_rate']:>7.1%}"
                     f"{r['kl']:>6.2f}{r['distinct']:>9.1%}{wrong(r):>8.1%}{r['seconds_per_iteration']:>8.2f}"
                     f"{r['peak_mb']:>6}   {kinds}")
    if runs:
        r = runs[0]
        lines.append(f"SFT: gold {r['sft_gold']:+.2f}, distinct {r.get('sft_distinct', 0):.1%}, "
                     f"wrong* {wrong(r, 'sft_'):.1%} (* mean over arith, fact and instruct)")
    for r in rows:
        if r["type"] == "seeds":
            lines.append(f"over {r['n']} seeds: {r['advantage']} {r['reward']} {r['metric']} {r['mean']:.3f} "
                         f"± {r['std']:.3f}")
        elif r["type"] == "wrong_length":
            lines.append(f"length of wrong replies, {r['advantage']} {r['reward']}: "
                         + " ".join(f"{x:.1f}" for x in r["length"][::max(1, len(r["length"]) // 8)]))
        elif r["type"] == "best":
            lines.append(f"best critic-free estimator with the reward model alone, at the first seed: {r['advantage']}")
    return "\n".join(lines)


def draw(plt, rows):
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for r in (r for r in rows if r["type"] == "run" and r["seed"] == rows[0]["seed"]):
        marker = {"rm": "o", "verifier": "s", "rm+verifier": "^"}[r["reward"]]
        color = f"C{ESTIMATORS.index(r['advantage'])}"
        ax1.scatter(r["kl"], r["gold"], marker=marker, color=color)
        ax1.annotate(f"{r['advantage']} {r['reward']}", (r["kl"], r["gold"]), textcoords="offset points",
                     xytext=(3, 3), fontsize=6)
    sft = [r["sft_gold"] for r in rows if "sft_gold" in r]
    if sft:
        ax1.axhline(sft[0], color="grey", linestyle="--", linewidth=1, label="SFT")
    ax1.set_xlabel("KL to the SFT policy (nats per response)")
    ax1.set_ylabel("gold score, held-out prompts")
    ax1.set_title("Estimator (colour) x reward (o rm, s verifier, ^ rm+verifier)", fontsize=9)
    ax1.legend(fontsize=8)
    for r in (r for r in rows if r["type"] == "wrong_length"):
        ax2.plot(r["iterations"], r["length"], label=f"{r['advantage']} {r['reward']}")
    ax2.set_xlabel("iteration")
    ax2.set_ylabel("tokens")
    ax2.set_title("Length of the replies the verifier calls wrong or unanswered", fontsize=9)
    ax2.legend(fontsize=8)
    return fig


def main(argv=None):
    return experiment_main("critic_free", Config, run, summary, draw, argv, TINY)


if __name__ == "__main__":
    main()
