#!/usr/bin/env bash
# HH-RLHF (Anthropic's helpful-base and harmless-base, ~86k training pairs) on GPT-2 124M, one GPU.
#
#   bash recipes/hh_gpt2_1gpu.sh            # from the repository root; needs the network once (data, weights, tokenizer)
#
# Not yet run on a GPU by this project (no session has had one for long enough): the figures below are estimates,
# and `python bench.py gpt2` measures the rates they rest on for your GPU. Please send the numbers you get.
#   memory:    weights, gradients and AdamW state take 16 bytes a parameter (2 GB); the SFT step at 32 x 512 tokens
#              in bf16 adds ~10 GB of activations and logits; PPO holds policy, reference and reward model (~1 GB
#              more). A 24 GB GPU is enough; lower --batch_size and raise --grad_accum on a smaller one.
#   wall time: about an hour on one H100-class GPU, most of it PPO's sampling (400 iterations x 256 prompts x 128
#              new tokens); SFT and DPO one epoch each, some minutes.
#   numbers:   no gold judge on real data. The reward model's accuracy on held-out human pairs should land well above
#              50% and below ~70% (HH labels are noisy: Anthropic's far larger preference models stay near 70%);
#              PPO and DPO report the reward model's score, its win-rate against SFT, KL to SFT and length.
#
# Settings follow the references at this scale, scaled to a 124M model: one epoch of SFT, of the reward model and of
# DPO (the N+ implementation details, Huang et al. 2024); PPO with 4 epochs per batch, KL coefficient 0.05 and a
# missing-end-of-text penalty of 1 (TRL's PPO TL;DR example, the N+ details); DPO beta 0.1 (Rafailov et al. 2023).
# The references' learning rates are for 1B+ models (3e-6 SFT/RM/PPO, 1e-6 DPO); a 124M model takes ~10x larger.
set -euo pipefail
DATA=out/hh-rlhf OUT=out/hh-gpt2
CONTEXT=(--block_size 512)   # most HH dialogues fit; longer ones lose their beginning (common.fit_to_context)

python -m data.hh_rlhf --out_dir $DATA
python sft.py --init_from gpt2 "${CONTEXT[@]}" --train_file $DATA/sft_train.jsonl --val_file $DATA/sft_val.jsonl \
    --eval_prompts $DATA/eval_prompts.jsonl --out_dir $OUT/sft --batch_size 32 --grad_accum 2 --lr 3e-5 \
    --warmup_steps 100 --max_steps 1300 --eval_interval 200 --n_eval 256 --max_new_tokens 128 --compile
python reward.py --sft_ckpt $OUT/sft/ckpt.pt --train_file $DATA/prefs_train.jsonl --val_file $DATA/prefs_val.jsonl \
    --prompts_file $DATA/prompts_train.jsonl --out_dir $OUT/reward --batch_size 64 --lr 3e-5 --warmup_steps 100 \
    --max_steps 1300 --eval_interval 200 --n_norm 1024 --max_new_tokens 128
python ppo.py --sft_ckpt $OUT/sft/ckpt.pt --reward_ckpt $OUT/reward/ckpt.pt --prompts_file $DATA/prompts_train.jsonl \
    --eval_prompts $DATA/eval_prompts.jsonl --out_dir $OUT/ppo --iterations 400 --rollout_batch 256 \
    --minibatch 64 --ppo_epochs 4 --lr 1e-5 --kl_coef 0.05 --max_new_tokens 128 --eval_interval 50
python dpo.py --sft_ckpt $OUT/sft/ckpt.pt --reward_ckpt $OUT/reward/ckpt.pt --train_file $DATA/prefs_train.jsonl \
    --val_file $DATA/prefs_val.jsonl --eval_prompts $DATA/eval_prompts.jsonl --out_dir $OUT/dpo --beta 0.1 \
    --lr 1e-5 --batch_size 64 --max_steps 1300 --eval_interval 200 --max_new_tokens 128
python report.py --out_dir $OUT
