#!/usr/bin/env bash
# The built-in task on a laptop CPU: the default pipeline, every stage at its defaults, offline.
#
#   bash recipes/builtin_cpu.sh             # from the repository root
#
# Measured on a 2-core cloud VM (AMD EPYC), one thread per stage (the default), seed 0; see the README for the
# numbers and their spread over seeds:
#   memory:    under 1 GB (a 1M-parameter GPT, 4 layers, width 128, context 128).
#   wall time: 10 min 46 s (SFT 5:05, labels 1:11, reward model 1:25, PPO 1:35, DPO 1:28) on an idle machine.
#   numbers:   out/report.md; on the 256 held-out prompts PPO and DPO each beat SFT about 63% of the time by the
#              gold judge, with their per-kind breakdown and samples beside it.
#
# Settings: tuned on the built-in task's validation prompts (out/data/val_prompts.jsonl), each stage's default.
set -euo pipefail
python sft.py       # 1. imitate the demonstrations
python label.py     # 2. the simulated raters compare pairs of the SFT model's own responses
python reward.py    # 3. the reward model learns the raters' preferences
python ppo.py       # 4. PPO against the reward model, KL penalty to SFT
python dpo.py       # 5. DPO on the same pairs
python report.py    # the report card: out/report.md
