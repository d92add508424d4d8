"""
Talk to a trained policy: chat in the terminal, answer prompts, or compare checkpoints side by side.

Any policy checkpoint works: sft.py's, dpo.py's or ppo.py's (whose value head is not needed to talk). Text is
rendered in the conversation format the model was trained on (tokenizer.PROMPT) and encoded as ordinary text,
so typing "<|endoftext|>" cannot inject a special token.

    python sample.py --ckpt out/ppo/ckpt.pt                   # chat, one line per turn; /reset, /quit
    python sample.py --ckpt out/ppo/ckpt.pt --prompt "What is 7 plus 12?" --num_samples 3
    python sample.py --compare out/sft/ckpt.pt out/ppo/ckpt.pt --prompts_file out/data/eval_prompts.jsonl

A prompt (--prompt, or a {prompt} of --prompts_file) that ends with "\\n\\nAssistant:" is a dialogue and is used
as it is, like the prompt files every stage reads; any other prompt is a question, asked as one human turn.
Responses are printed with "<|endoftext|>" where the model ended them and, on the built-in task, with the gold
judge's score.
"""

import sys
from dataclasses import dataclass

import torch

from common import decode_responses, frozen, load_policy, parse_config, read_jsonl, setup_runtime
from model import response_mask
from tokenizer import ASSISTANT, EOT, PROMPT, load_tokenizer


@dataclass
class Config:
    ckpt: str = "out/ppo/ckpt.pt"  # the policy checkpoint to talk to (written by sft.py, dpo.py or ppo.py)
    prompt: str = ""  # answer this prompt and exit, instead of chatting
    prompts_file: str = ""  # answer every {prompt} of this JSONL file and exit, instead of chatting
    compare: tuple = ()  # checkpoints A.pt B.pt ... that answer the same prompts side by side (instead of --ckpt)
    num_samples: int = 1  # responses per prompt and checkpoint (one per turn when chatting)
    max_new_tokens: int = 64  # response length limit; the prompt or conversation gets the rest of the context
    temperature: float = 1.0  # sampling temperature; 0 is greedy
    top_k: int = 0  # sample only among the k likeliest tokens; 0: all
    top_p: float = 1.0  # sample only from the fewest tokens whose probability reaches top_p; 1: all
    seed: int = 0  # seed of sampling: the same seed gives the same responses
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    dtype: str = "auto"  # auto (bf16 or fp16 on CUDA, fp32 on CPU), float32, bfloat16, float16


def as_dialogue(prompt):
    """A prompt as the model reads it: a dialogue (ending in "\\n\\nAssistant:") as it is, a question as one turn."""
    return prompt if prompt.endswith(ASSISTANT) else PROMPT.format(prompt)


def build_context(enc, history, text, max_len):
    """
    Token ids of the conversation so far, history [(human text, reply)], and the new human turn, at most max_len
    of them: the oldest turns go first, whole. Returns (ids, how many past turns were dropped, whether the new turn
    alone was too long and lost its start).
    """
    turns = [PROMPT.format(human) + reply for human, reply in history] + [PROMPT.format(text)]
    for dropped in range(len(turns)):
        # the text is encoded whole, as the training prompts were, not turn by turn
        ids = enc.encode_ordinary("".join(turns[dropped:]))
        if len(ids) <= max_len:
            return ids, dropped, False
    return ids[-max_len:], len(history), True


@torch.no_grad()
def respond(model, enc, ids, n, cfg, rt, generator):
    """n responses to one prompt's token ids, each ending in "<|endoftext|>" where the model ended it."""
    idx = torch.tensor([ids] * n, device=rt.device)
    with rt.autocast():
        tokens, _ = model.generate(idx, None, cfg.max_new_tokens, enc.eot_token, cfg.temperature,
                                   cfg.top_k or None, cfg.top_p if cfg.top_p < 1 else None, generator)
    return decode_responses(enc, [(idx, None, tokens, response_mask(tokens, enc.eot_token))])


def gold_verdict(prompt, text):
    """The built-in task's gold judge on a response, or "" for a prompt that is not of the built-in task."""
    import data.world as world  # only here: sample.py talks to models of any data, the judge knows its own task

    if world.parse(prompt).kind == "unknown":
        return ""
    score, label = world.judge(prompt, text)
    return f"gold {score:+.2f}, {label}"


def load(path, cfg, rt):
    """A policy in eval mode, its tokenizer, and how many prompt tokens fit beside max_new_tokens."""
    model, tokenizer_spec, _ = load_policy(path)
    max_len = model.config.block_size - cfg.max_new_tokens
    if max_len < 1:
        raise SystemExit(f"--max_new_tokens {cfg.max_new_tokens} leaves no room for a prompt in {path}'s context "
                         f"of {model.config.block_size} tokens: lower it")
    return frozen(model).to(rt.device), load_tokenizer(tokenizer_spec), max_len


def chat(path, cfg, rt):
    """Each line of standard input is a human turn, answered in the context of the turns before it."""
    model, enc, max_len = load(path, cfg, rt)
    generator = torch.Generator(rt.device).manual_seed(cfg.seed)
    interactive = sys.stdin.isatty()
    print(f"chatting with {path}: /reset forgets the conversation, /quit (or end of input) leaves", flush=True)
    history = []
    while True:
        if interactive:
            print("> ", end="", flush=True)
        line = sys.stdin.readline()
        text = line.strip()
        if not line or text == "/quit":
            return
        if text == "/reset":
            history = []
            print("[conversation forgotten]", flush=True)
        elif text:
            ids, dropped, cut = build_context(enc, history, text, max_len)
            history = history[dropped:]
            if cut:
                print(f"[this message alone is longer than the context: only its last {max_len} tokens are read]")
            elif dropped:
                print(f"[the {dropped} oldest turn(s) dropped: the conversation outgrew the context of {max_len} "
                      f"tokens]")
            reply = respond(model, enc, ids, 1, cfg, rt, generator)[0]
            ended = reply.endswith(EOT)
            reply = reply.removesuffix(EOT)
            print(f"Assistant:{reply}" + ("" if ended else f" [no end-of-text within {cfg.max_new_tokens} tokens]"),
                  flush=True)
            history.append((text, reply))


def main(argv=None):
    cfg, _ = parse_config(Config, argv)
    if cfg.temperature < 0 or cfg.top_k < 0 or not 0 < cfg.top_p <= 1:
        raise SystemExit("--temperature and --top_k must be at least 0, --top_p in (0, 1]")
    rt = setup_runtime(cfg.device, cfg.dtype, cfg.seed)
    if cfg.prompt:
        prompts = [cfg.prompt]
    elif cfg.prompts_file:
        prompts = [r["prompt"] for r in read_jsonl(cfg.prompts_file, ("prompt",))]
    elif cfg.compare:
        raise SystemExit("--compare answers --prompt or --prompts_file: give one of them (chat takes one --ckpt)")
    else:
        return chat(cfg.ckpt, cfg, rt)

    # every checkpoint has its own generator, so it answers as it would alone
    paths = list(cfg.compare) or [cfg.ckpt]
    models = [load(path, cfg, rt) for path in paths]
    generators = [torch.Generator(rt.device).manual_seed(cfg.seed) for _ in paths]
    answers = []
    for prompt in map(as_dialogue, prompts):
        print(f"==={prompt}")
        answers.append([])
        for path, (model, enc, max_len), generator in zip(paths, models, generators):
            ids = enc.encode_ordinary(prompt)
            if len(ids) > max_len:
                print(f"[{path}: the prompt is {len(ids)} tokens, only its last {max_len} fit the context]")
            texts = respond(model, enc, ids[-max_len:], cfg.num_samples, cfg, rt, generator)
            for i, text in enumerate(texts, 1):
                verdict = gold_verdict(prompt, text)
                print(f"--- {path} #{i}" + (f" ({verdict})" if verdict else ""))
                print(text, flush=True)
            answers[-1].append(texts)
    return answers  # [prompt][checkpoint][sample]: response texts


if __name__ == "__main__":
    main()
