"""
The report card of a pipeline run: every stage's key numbers side by side, the held-out numbers per kind of prompt,
and the responses of SFT, PPO and DPO to the same held-out prompts. It is written from what the stages left in
out/ (each stage's metrics.jsonl and samples.jsonl), so it can be rebuilt at any time without training again.

    python report.py                 # out/report.md from out/sft, out/reward, out/ppo, out/dpo
    python report.py --out_dir runs/seed1 --n_samples 8
"""

import json
from dataclasses import dataclass
from pathlib import Path

from common import parse_config
from data.world import KINDS

POLICIES = ("sft", "ppo", "dpo")


@dataclass
class Config:
    out_dir: str = "out"  # the directory holding the stages' directories (sft, reward, ppo, dpo); report.md goes here
    n_samples: int = 6  # held-out prompts whose responses are shown side by side


def final_metrics(stage_dir):
    """The final/ metrics of a stage's metrics.jsonl, without the prefix; None if the stage has not finished."""
    path = Path(stage_dir) / "metrics.jsonl"
    if not path.exists():
        return None
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    final = {k.removeprefix("final/"): v for line in lines for k, v in line.items() if k.startswith("final/")}
    return final or None


def cell(value, kind):
    if value is None:
        return ""
    return {"pct": f"{value:.1%}", "signed": f"{value:+.2f}", "plain": f"{value:.2f}"}[kind]


def policy_rows(m):
    """{policy: its held-out numbers}; SFT's reward-model score comes from PPO's (or DPO's) run, which scored it."""
    rows = {name: m[name] for name in POLICIES if m[name]}
    if "sft" in rows:
        scorer = next((m[name] for name in ("ppo", "dpo") if m[name] and "sft_score" in m[name]), None)
        rows["sft"] = {**rows["sft"], "kl": 0.0, **({"score": scorer["sft_score"]} if scorer else {})}
    return rows


def main(argv=None):
    cfg, _ = parse_config(Config, argv)
    out = Path(cfg.out_dir)
    m = {stage: final_metrics(out / stage) for stage in ("sft", "reward", *POLICIES[1:])}
    if not any(m.values()):
        raise SystemExit(f"no finished stage in {out}: run the pipeline first (see README.md)")
    lines = [f"# Report card: {out}", ""]

    lines += ["## Training", "", "| stage | measure | value |", "| --- | --- | --- |"]
    if m["sft"]:
        lines.append(f"| SFT | validation loss | {m['sft']['val_loss']:.3f} |")
    if m["reward"]:
        r = m["reward"]
        lines.append(f"| reward model | accuracy on held-out labelled pairs | {r['val_accuracy']:.1%} |")
        if "raters_ceiling" in r:
            lines.append(f"| reward model | agreement with the gold judge on them (the raters': the ceiling) | "
                         f"{r['val_gold_agreement']:.1%} ({r['raters_ceiling']:.1%}) |")
    if m["dpo"]:
        lines.append(f"| DPO | implicit-reward accuracy on held-out pairs | {m['dpo']['rewards/accuracies']:.1%} |")

    rows = policy_rows(m)
    columns = [("gold", "gold", "signed"), ("score", "reward model", "signed"), ("kl", "KL to SFT", "plain"),
               ("win_rate", "win-rate vs SFT", "pct"), ("rm_win_rate", "win-rate vs SFT by the reward model", "pct"),
               ("length", "length", "plain"), ("eot_rate", "ended", "pct"), ("right", "right", "pct"),
               ("wrong", "wrong", "pct"), ("unsure", "unsure", "pct"), ("evasive", "evasive", "pct"),
               ("distinct", "distinct", "pct")]
    columns = [c for c in columns if any(c[0] in r for r in rows.values())]  # no gold judge on other data: no gold
    lines += ["", "## Held-out prompts", "", "| policy | " + " | ".join(c[1] for c in columns) + " |",
              "| --- |" + " --- |" * len(columns)]
    for name, r in rows.items():
        values = []
        for key, _, kind in columns:
            text = cell(r.get(key), kind)
            if key + "_ci" in r:
                text += f" ± {r[key + '_ci']:.1%}"
            values.append(text)
        lines.append(f"| {name.upper()} | " + " | ".join(values) + " |")

    if any("gold" in r for r in rows.values()):
        lines += ["", "## Per kind of prompt", "", "gold score (win-rate against SFT): right / wrong / unsure / evasive",
                  "", "| kind | " + " | ".join(n.upper() for n in rows) + " |", "| --- |" + " --- |" * len(rows)]
        for kind in KINDS:
            cells = []
            for r in rows.values():
                if f"{kind}/gold" not in r:
                    cells.append("")
                    continue
                win = f" ({r[f'{kind}/win_rate']:.0%})" if f"{kind}/win_rate" in r else ""
                shares = " / ".join(f"{r[f'{kind}/{label}']:.0%}" for label in ("right", "wrong", "unsure", "evasive"))
                cells.append(f"{r[f'{kind}/gold']:+.2f}{win}: {shares}")
            lines.append(f"| {kind} | " + " | ".join(cells) + " |")

    # every stage samples the same held-out prompts in the same order
    samples = {name: [json.loads(line) for line in (out / name / "samples.jsonl").read_text().splitlines()]
               for name in POLICIES if (out / name / "samples.jsonl").exists()}
    if samples:
        lines += ["", "## The same held-out prompts, answered", ""]
        for i in range(min(cfg.n_samples, *(len(s) for s in samples.values()))):
            lines += [f"**{next(iter(samples.values()))[i]['prompt'].strip()}**", ""]
            for name, rows_ in samples.items():
                row = rows_[i]
                verdict = f" *(gold {row['gold']:+.2f}, {row['label']})*" if "gold" in row else ""
                lines.append(f"- {name.upper()}:{row['response'].replace(chr(10), ' ')}{verdict}")
            lines.append("")

    text = "\n".join(lines) + "\n"
    (out / "report.md").write_text(text)
    print(text)
    print(f"wrote {out / 'report.md'}")
    return text


if __name__ == "__main__":
    main()
