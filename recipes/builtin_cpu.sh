#!/usr/bin/env bash
# The built-in task on a laptop CPU: the default pipeline, every stage at its defaults, offline.
#
#   bash recipes/builtin_cpu.sh             # from the repository root
#
# Measured on a 2-core cloud VM (Intel Xeon), otherwise idle, seed 0; see the README for the numbers and their
# spread over seeds:
#   memory:    under 1 GB (a 1M-parameter GPT, 4 layers, width 128, context 128).
#   wall time: 6 min 1 s with the two threads each stage takes on two free cores (SFT 2:48, labels 0:43, reward
#              model 0:45, PPO 0:56, DPO 0:47); 9 min 57 s with OMP_NUM_THREADS=1, back to back.
#   numbers:   out/report.md; on the 256 held-out prompts, with one thread, PPO beats SFT 60% of the time and DPO
#              64.5% by the gold judge (73% and 69% with two threads), with their per-kind breakdown and samples.
#
# Settings: tuned on the built-in task's validation prompts (out/data/val_prompts.jsonl), each stage's default.
set -euo pipefail
python sft.py       # 1. imitate the demonstrations
python label.py     # 2. the simulated raters compare pairs of the SFT model's own responses
python reward.py    # 3. the reward model learns the raters' preferences
python ppo.py       # 4. PPO against the reward model, KL penalty to SFT
python dpo.py       # 5. DPO on the same pairs
python report.py    # the report card: out/report.md
