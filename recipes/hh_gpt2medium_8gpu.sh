#!/usr/bin/env bash
# HH-RLHF on GPT-2 medium (355M), 8 GPUs on one node with torchrun: every stage under DistributedDataParallel, the
# batch sizes global (shared out among the 8 processes), rank 0 alone logging, evaluating and writing checkpoints.
#
#   bash recipes/hh_gpt2medium_8gpu.sh      # from the repository root; needs the network once
#
# Not yet run on GPUs by this project: the figures below are estimates.
#   memory:    16 bytes a parameter for weights, gradients and AdamW state (5.7 GB on every GPU under DDP) plus
#              activations for 128 / 8 = 16 sequences of 512 tokens (~8 GB): 40 GB GPUs are plenty.
#   wall time: about an hour on 8 H100-class GPUs, most of it PPO's sampling.
#   numbers:   as in hh_gpt2_1gpu.sh; a larger model should reach a higher reward-model accuracy.
#
# Settings as in hh_gpt2_1gpu.sh (the N+ details, TRL's TL;DR example, the DPO paper), with global batches of 128
# as the N+ details use for SFT, and learning rates lowered for the larger model.
set -euo pipefail
DATA=out/hh-rlhf OUT=out/hh-gpt2-medium
RUN=(torchrun --standalone --nproc_per_node 8)
CONTEXT=(--block_size 512)

python -m data.hh_rlhf --out_dir $DATA
python -c "from common import pretrained_dir; from tokenizer import load_tokenizer; pretrained_dir('gpt2-medium'); load_tokenizer('gpt2')"  # download once, not 8 times at once
"${RUN[@]}" sft.py --init_from gpt2-medium "${CONTEXT[@]}" --train_file $DATA/sft_train.jsonl \
    --val_file $DATA/sft_val.jsonl --eval_prompts $DATA/eval_prompts.jsonl --out_dir $OUT/sft --batch_size 128 \
    --lr 2e-5 --warmup_steps 50 --max_steps 670 --eval_interval 100 --max_new_tokens 128 --compile
"${RUN[@]}" reward.py --sft_ckpt $OUT/sft/ckpt.pt --train_file $DATA/prefs_train.jsonl \
    --val_file $DATA/prefs_val.jsonl --prompts_file $DATA/prompts_train.jsonl --out_dir $OUT/reward \
    --batch_size 128 --lr 2e-5 --warmup_steps 50 --max_steps 670 --eval_interval 100 --n_norm 1024 \
    --max_new_tokens 128
"${RUN[@]}" ppo.py --sft_ckpt $OUT/sft/ckpt.pt --reward_ckpt $OUT/reward/ckpt.pt \
    --prompts_file $DATA/prompts_train.jsonl --eval_prompts $DATA/eval_prompts.jsonl --out_dir $OUT/ppo \
    --iterations 400 --rollout_batch 512 --minibatch 128 --ppo_epochs 4 --lr 5e-6 --kl_coef 0.05 \
    --max_new_tokens 128 --eval_interval 50
"${RUN[@]}" dpo.py --sft_ckpt $OUT/sft/ckpt.pt --reward_ckpt $OUT/reward/ckpt.pt \
    --train_file $DATA/prefs_train.jsonl --val_file $DATA/prefs_val.jsonl --eval_prompts $DATA/eval_prompts.jsonl \
    --out_dir $OUT/dpo --beta 0.1 --lr 5e-6 --batch_size 128 --max_steps 670 --eval_interval 100 --max_new_tokens 128
python report.py --out_dir $OUT
