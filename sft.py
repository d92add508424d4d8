"""
Stage 1, supervised fine-tuning: the model learns to imitate demonstrations.

The loss is next-token cross-entropy on the response tokens and their end-of-text only: the prompt is
context, not something the assistant should learn to say. With no arguments it trains a small GPT from
scratch on the built-in task; by flags, on any JSONL of {prompt, response}, from GPT-2 weights or from one
of our checkpoints. From scratch, its tokenizer is a BPE trained on the training data, offline.

    python sft.py
    python sft.py --train_file my.jsonl --val_file my_val.jsonl --eval_prompts my_prompts.jsonl
    python sft.py --init_from gpt2 --device cuda ...  # the same files, from GPT-2's weights
"""

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from common import (MetricsLog, all_sum, batch_at, begin, check_finite, check_split, distributed, fit_to_context,
                    leave_processes, load_policy, lr_at, master_first, optimizer_step, pad, pretrained_dir, read_jsonl,
                    restore_run, save_run)
from data import world
from evaluate import HeldOut
from model import GPT, GPTConfig
from tokenizer import load_tokenizer, render, train_tokenizer


@dataclass
class Config:
    train_file: str = ""  # JSONL of {prompt, response}; empty: the built-in task
    val_file: str = ""  # held-out JSONL of {prompt, response}; empty: the built-in task's
    eval_prompts: str = ""  # JSONL of {prompt} to sample from at the end; empty: the built-in task's held-out prompts (tune on out/data/val_prompts.jsonl)
    init_from: str = "scratch"  # scratch, a GPT-2 name or Hugging Face directory (gpt2, gpt2-medium, ...), or a .pt checkpoint of ours
    tokenizer: str = ""  # gpt2 or a BPE file; empty: from scratch, a BPE of the training data; else the initial model's
    out_dir: str = "out/sft"  # where ckpt.pt and metrics.jsonl go
    n_layer: int = 4  # from scratch only: transformer blocks
    n_head: int = 4  # from scratch only: attention heads
    n_embd: int = 128  # from scratch only: width
    block_size: int = 128  # longest sequence in tokens, the context of this model and of every later stage; longer examples are truncated (see common.fit_to_context)
    dropout: float = 0.0  # from scratch only: dropout during SFT (later stages always run without)
    batch_size: int = 32  # sequences per micro-batch, shared out among the processes under torchrun
    grad_accum: int = 1  # micro-batches per optimizer step (the loss is the token mean over all of them)
    max_steps: int = 2500  # optimizer steps (about 4 epochs of the built-in task: enough to learn most of its facts)
    lr: float = 2e-3  # peak learning rate
    warmup_steps: int = 30  # linear warmup steps
    weight_decay: float = 0.1  # AdamW weight decay, on matrices only
    grad_clip: float = 1.0  # clip the gradient norm to this
    eval_interval: int = 200  # validation loss every this many steps
    ckpt_interval: int = 200  # checkpoint every this many steps (and at the end)
    n_eval: int = 256  # held-out prompts sampled at the end
    max_new_tokens: int = 64  # response length limit when sampling
    temperature: float = 1.0  # sampling temperature at the end
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    dtype: str = "auto"  # auto (bf16 or fp16 on CUDA, fp32 on CPU), float32, bfloat16, float16
    compile: bool = False  # torch.compile the model for training
    seed: int = 0  # seed of initialisation, data order and sampling
    resume: bool = False  # continue the run in out_dir from its checkpoint


def sft_loss(model, ids, loss_mask):
    """
    Mean cross-entropy of predicting ids[t+1] from position t, over the targets where loss_mask is 1: the response
    and its end-of-text. The model computes logits at those positions only.
    """
    trained = loss_mask[:, 1:].bool()
    logits = model(ids, where=F.pad(trained, (0, 1)))  # position t is where target t+1 is trained
    return F.cross_entropy(logits.float(), ids[:, 1:][trained])


def load_examples(path, enc, max_len, say=print):
    """Rendered (ids, loss mask) pairs of a {prompt, response} file; reports how many were truncated."""
    examples, truncated = [], 0
    for rec in read_jsonl(path, ("prompt", "response")):
        ids, mask, cut = fit_to_context(*render(enc, rec["prompt"], rec["response"]), max_len)
        examples.append((ids, mask))
        truncated += cut
    say(f"{path}: {len(examples)} examples, {truncated} truncated to {max_len} tokens")
    return examples


def collate(examples, pad_id, device):
    # right padding: causal attention never lets a real token see the padding after it, so no mask is needed
    ids, _ = pad([e[0] for e in examples], pad_id)
    loss_mask, _ = pad([e[1] for e in examples], 0)
    return ids.to(device), loss_mask.to(device)


@torch.no_grad()
def val_loss(model, examples, cfg, rt, pad_id):
    model.eval()
    total, n = 0.0, 0
    for i in range(0, len(examples), cfg.batch_size):
        ids, loss_mask = collate(examples[i:i + cfg.batch_size], pad_id, rt.device)
        with rt.autocast():
            loss = sft_loss(model, ids, loss_mask)
        tokens = loss_mask[:, 1:].sum().item()
        total += loss.item() * tokens
        n += tokens
    model.train()
    return total / n


def initial_model(cfg, rt, builtin_tokenizer, train_file, resumed):
    """
    The model SFT starts from, its tokenizer's spec and the tokenizer: from scratch (with the built-in task's
    tokenizer, --tokenizer, or a BPE trained on train_file, offline, saved beside the checkpoint), our .pt checkpoint,
    or GPT-2's weights.
    """
    if cfg.init_from == "scratch":
        tokenizer_spec = cfg.tokenizer or builtin_tokenizer
        if not tokenizer_spec:
            tokenizer_spec = str((Path(cfg.out_dir) / "tokenizer.tiktoken").resolve())
            if rt.master and not resumed:  # a resumed run reads the one it trained
                Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
                train_tokenizer([r["prompt"] + r["response"] for r in read_jsonl(train_file, ("prompt", "response"))],
                                tokenizer_spec)
            if rt.world_size > 1:
                dist.barrier()  # the other processes read the file the master writes
        enc = load_tokenizer(tokenizer_spec)
        model = GPT(GPTConfig(block_size=cfg.block_size, vocab_size=enc.n_vocab, n_layer=cfg.n_layer,
                              n_head=cfg.n_head, n_embd=cfg.n_embd, dropout=cfg.dropout))
    elif cfg.init_from.endswith(".pt"):
        model, tokenizer_spec, _ = load_policy(cfg.init_from, "--init_from")
        enc = load_tokenizer(tokenizer_spec)
    else:
        model, tokenizer_spec = GPT.from_pretrained(pretrained_dir(cfg.init_from)), cfg.tokenizer or "gpt2"
        enc = load_tokenizer(tokenizer_spec)
    if enc.n_vocab > model.config.vocab_size:
        raise SystemExit(f"tokenizer {tokenizer_spec} has {enc.n_vocab} tokens, the model only {model.config.vocab_size}")
    if cfg.block_size < model.config.block_size:  # the checkpoint tells every later stage the context it trained at
        rt.say(f"context cut from the initial model's {model.config.block_size} tokens to --block_size {cfg.block_size}")
        model.crop_block_size(cfg.block_size)
    return model, tokenizer_spec, enc


def main(argv=None):
    cfg, rt, ckpt_path, resumed = begin("sft", Config, argv)
    check_split(cfg.batch_size, "--batch_size", rt)
    builtin_tokenizer = None  # the built-in task's, with its data
    if not cfg.train_file:
        with master_first(rt):  # the master generates the task and trains its tokenizer, the others read them
            data_dir, builtin_tokenizer = world.builtin_task()
        train_file, val_file = f"{data_dir}/sft_train.jsonl", f"{data_dir}/sft_val.jsonl"
        prompts_file = cfg.eval_prompts or f"{data_dir}/eval_prompts.jsonl"
    elif not (cfg.val_file and cfg.eval_prompts):
        raise SystemExit("with --train_file, also give --val_file and --eval_prompts")
    else:
        train_file, val_file, prompts_file = cfg.train_file, cfg.val_file, cfg.eval_prompts

    model, tokenizer_spec, enc = initial_model(cfg, rt, builtin_tokenizer, train_file, resumed)
    model.to(rt.device)
    rt.say(f"model: {model.num_params() / 1e6:.2f}M parameters, tokenizer {tokenizer_spec} ({enc.n_vocab} tokens)")

    max_len = model.config.block_size
    train = load_examples(train_file, enc, max_len, rt.say)
    val = load_examples(val_file, enc, max_len, rt.say)
    heldout = HeldOut(prompts_file, enc, max_len, cfg.max_new_tokens, cfg.temperature, cfg.n_eval, rt, judge=world)
    train_model = distributed(model, rt, cfg.compile)
    optimizer = model.configure_optimizers(cfg.weight_decay, cfg.lr, (0.9, 0.95), rt.device.type)
    step = restore_run(resumed, model, optimizer, rt) if resumed else 0
    log = MetricsLog(cfg.out_dir, rt, resume_step=step if resumed else None)

    model.train()
    bar = tqdm(range(step, cfg.max_steps), initial=step, total=cfg.max_steps, desc="sft", dynamic_ncols=True,
               disable=not rt.master)
    t0, tokens_seen = time.time(), 0
    lengths = torch.tensor([len(ids) for ids, _ in train])  # batches of similar lengths pad less: about 2x faster
    for step in bar:
        lr = lr_at(step, cfg.max_steps, cfg.lr, cfg.warmup_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batches = [[train[i] for i in batch_at(len(train), cfg.batch_size, step * cfg.grad_accum + micro, cfg.seed,
                                               lengths)] for micro in range(cfg.grad_accum)]
        # the loss is the mean over every trained token of the step, in all micro-batches of all processes, so each
        # micro-batch's mean is weighed by its share of those tokens (a mean of micro-batch means would not be)
        n_trained = sum(sum(m[1:]) for batch in batches for _, m in batch)
        loss_sum = 0.0
        for micro, batch in enumerate(batches):
            mine = batch[rt.rank::rt.world_size]  # under torchrun each process takes a slice of the same batch
            share = sum(sum(m[1:]) for _, m in mine) / n_trained
            ids, loss_mask = collate(mine, enc.eot_token, rt.device)
            # DDP averages the gradients once, after the last micro-batch
            sync = micro == cfg.grad_accum - 1 or rt.world_size == 1
            with contextlib.nullcontext() if sync else train_model.no_sync():
                with rt.autocast():
                    loss = sft_loss(train_model, ids, loss_mask) * share
                rt.scaler.scale(loss * rt.world_size).backward()  # x world_size: DDP averages over processes
            loss_sum += loss.item()
            tokens_seen += ids.numel()
        # every process must see the same loss, so that all of them stop together
        loss_sum = all_sum(torch.tensor(loss_sum, device=rt.device)).item()
        check_finite(loss_sum, step, ckpt_path)
        grad_norm = optimizer_step(optimizer, model.parameters(), cfg.grad_clip, rt)

        done = step + 1
        metrics = {"loss": loss_sum, "lr": lr, "grad_norm": grad_norm,
                   "tokens_per_s": tokens_seen * rt.world_size / (time.time() - t0)}
        if done % cfg.eval_interval == 0 or done == cfg.max_steps:
            metrics["val_loss"] = val_loss(model, val, cfg, rt, enc.eot_token)
        if rt.device.type == "cuda":
            metrics["mfu"] = model.estimate_mfu(metrics["tokens_per_s"] / rt.world_size, max_len)
        log.log(done, **metrics)
        bar.set_postfix(loss=f"{loss_sum:.3f}", **({"val": f"{metrics['val_loss']:.3f}"} if "val_loss" in metrics else {}))
        if done % cfg.ckpt_interval == 0 and done < cfg.max_steps:
            save_run(ckpt_path, "policy", model, optimizer, rt, cfg, tokenizer_spec, done)
    bar.close()
    leave_processes(rt)
    if not rt.master:
        return None

    # what the SFT policy does on prompts it never saw
    report, rows = heldout.evaluate(model, cfg.seed)
    summary = {"val_loss": val_loss(model, val, cfg, rt, enc.eot_token), **report}
    heldout.show("sft", summary, rows, cfg.out_dir)
    log.log(cfg.max_steps, **{f"final/{k}": v for k, v in summary.items()})
    save_run(ckpt_path, "policy", model, optimizer, rt, cfg, tokenizer_spec, cfg.max_steps, summary=summary)
    print(f"saved {ckpt_path}")
    return summary


if __name__ == "__main__":
    main()
