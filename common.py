"""
Plumbing that every stage needs, written once: the command line, the device and precision, several processes
(torchrun), checkpoints, data files, logging and sampling. The RLHF math is not here: it is in the stage files.
Nothing here knows the built-in task (data/): a stage hands its judge to evaluate.py.
"""

import argparse
import contextlib
import dataclasses
import inspect
import io
import json
import math
import os
import random
import sys
import textwrap
import time
import tokenize
import types
import typing
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from model import REWARD_AGGREGATIONS, GPT, GPTConfig, RewardEnsemble, RewardModel, response_mask

# ----------------------------------------------------------------------------------------------------------
# The command line: a config dataclass per stage; each field's trailing comment is its --help text


def field_docs(cls):
    """
    {field name: its trailing comment}, read from the class source so the docs live beside the defaults. Python's
    own tokenizer finds the comments: a '#' inside a default string is part of the string, not a comment.
    """
    lines = {}
    source = textwrap.dedent(inspect.getsource(cls))
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type in (tokenize.NAME, tokenize.OP, tokenize.COMMENT):
            lines.setdefault(tok.start[0], []).append(tok)
    return {toks[0].string: toks[-1].string.lstrip("#").strip() for toks in lines.values()
            if len(toks) > 2 and toks[0].type == tokenize.NAME and toks[1].string == ":"
            and toks[-1].type == tokenize.COMMENT}


def flag_type(cls, name, hint):
    """(type a flag's text converts to, whether None is allowed) of a field annotated bool, int, float, str, tuple or X | None."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 2 and type(None) in args:
        return next(a for a in args if a is not type(None)), True
    if hint in (bool, int, float, str, tuple):
        return hint, False
    raise TypeError(f"{cls.__name__}.{name}: the command line reads bool, int, float, str, tuple or one of them | None, "
                    f"not {hint}")


def parse_config(cls, argv=None):
    """
    Build the command line from a config dataclass: one --flag per field, with its default and its comment.
    A field of type X | None takes `none` for None. Returns (config, names of the flags given explicitly), the
    latter so that --resume can tell what to override.
    """
    docs, hints = field_docs(cls), typing.get_type_hints(cls)
    parser = argparse.ArgumentParser(description=(sys.modules[cls.__module__].__doc__ or "").strip(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     argument_default=argparse.SUPPRESS)
    for f in dataclasses.fields(cls):
        assert f.name in docs, f"{cls.__name__}.{f.name} needs a trailing comment: it is the --help text"
        help = f"{docs[f.name]} (default: {f.default!r})".replace("%", "%%")  # argparse formats help with %
        kind, optional = flag_type(cls, f.name, hints[f.name])
        if kind is bool and not optional:
            parser.add_argument(f"--{f.name}", action=argparse.BooleanOptionalAction, help=help)
        elif kind is tuple:  # several strings: --flag a b
            parser.add_argument(f"--{f.name}", nargs="+", metavar="STR", help=help)
        else:
            convert = kind
            if optional:
                convert = lambda text, kind=kind: None if text.lower() == "none" else kind(text)
                convert.__name__ = kind.__name__  # argparse names the type in its error message
            parser.add_argument(f"--{f.name}", type=convert, metavar=kind.__name__.upper(), help=help)
    given = vars(parser.parse_args(argv))
    return cls(**given), set(given)


def begin(name, cls, argv=None):
    """
    Start a stage: its config from the command line, the runtime (see setup_runtime), the config printed. With
    --resume, the config stored in out_dir's checkpoint, with only the flags given on this command line changed.
    Returns (cfg, rt, checkpoint path, the resumed checkpoint or None).
    """
    cfg, given = parse_config(cls, argv)
    ckpt_path = Path(cfg.out_dir) / "ckpt.pt"
    resumed = None
    if cfg.resume:
        resumed = load_checkpoint(ckpt_path)
        saved = resumed["config"]
        for flag in given - {"resume"}:
            if saved.get(flag) != getattr(cfg, flag):
                print(f"resume: {flag} changed from {saved.get(flag)!r} to {getattr(cfg, flag)!r}")
        cfg = cls(**{**saved, **{flag: getattr(cfg, flag) for flag in given}})
    rt = setup_runtime(cfg.device, cfg.dtype, cfg.seed)
    rt.say(f"{name} config:")
    if rt.master:
        print_config(cfg)
    return cfg, rt, ckpt_path, resumed


def print_config(cfg):
    width = max(len(f.name) for f in dataclasses.fields(cfg))
    for k, v in asdict(cfg).items():
        print(f"  {k:<{width}} {v!r}")


# ----------------------------------------------------------------------------------------------------------
# Device and precision


@dataclass
class Runtime:
    device: torch.device
    dtype: torch.dtype  # what autocast computes in; float32 means no autocast
    scaler: torch.amp.GradScaler  # only enabled for float16, whose small range needs loss scaling
    rank: int = 0  # this process under torchrun (0 otherwise)
    world_size: int = 1  # processes under torchrun

    @property
    def master(self):  # the process that prints, logs, evaluates and writes checkpoints
        return self.rank == 0

    def say(self, *args, **kwargs):
        """print, in the master process only."""
        if self.master:
            print(*args, **kwargs)

    def autocast(self):
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)


def busy_cores(seconds=0.25):
    """
    How many cores other jobs keep busy right now: the machine's share of non-idle time over a quarter of a second
    (Linux's /proc/stat), times its cores. Elsewhere the 1-minute load average, which trails the machine by about a
    minute: the stage that just ended would still count, and the one after it would take fewer threads than are free.
    """
    def ticks():
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]  # the first line: all cores together
        return sum(fields), fields[3] + fields[4]  # all time, and idle or waiting on I/O

    try:
        total0, idle0 = ticks()
        time.sleep(seconds)
        total1, idle1 = ticks()
    except OSError:
        return os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0  # Windows reports no load
    return os.cpu_count() * (1 - (idle1 - idle0) / max(1, total1 - total0))


def set_cpu_threads():
    """
    As many torch threads as there are cores free when the run starts: the cores this process may use less those
    other jobs keep busy (busy_cores), rounded, at least one. OMP_NUM_THREADS, when set, decides instead; torchrun
    sets it to 1 for each of several processes unless it is set already. The choice and its reason go to stderr,
    which keeps bench.py's stdout JSON.
    Not torch's default, a thread per core: every operation waits until the OS has run each of its threads, and
    once other jobs share the cores that wait dominates the small operations of small models (on 2 busy cores, two
    threads against one took 2-8x as long for an SFT step of the default model, 7-12x for its sampling, up to 300x
    for tiny ones). A seeded run repeats exactly at the same thread count, but a sum split over two threads rounds
    differently from one: to repeat a run where the load differs, set OMP_NUM_THREADS.
    """
    if "OMP_NUM_THREADS" in os.environ:
        n, why = int(os.environ["OMP_NUM_THREADS"]), "OMP_NUM_THREADS"
    else:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()  # not on macOS
        busy = busy_cores()
        n, why = max(1, round(cores - busy)), f"{cores} cores, {busy:.1f} busy"
    torch.set_num_threads(n)
    print(f"cpu threads: {n} ({why})", file=sys.stderr)


def setup_runtime(device="auto", dtype="auto", seed=0):
    """
    CUDA when present (bf16 autocast where supported, else fp16 with a gradient scaler; TF32), else CPU fp32.
    Under torchrun, joins the process group (NCCL on CUDA, gloo on CPU) and takes the GPU of its local rank.
    CPU threads: see set_cpu_threads.
    """
    set_cpu_threads()
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {device}, but this torch sees no CUDA GPU (a CPU build, or no driver): "
                         f"give --device cpu, or auto")
    if dtype not in ("auto", "float32", "bfloat16", "float16"):
        raise SystemExit(f"--dtype must be auto, float32, bfloat16 or float16, not {dtype!r}")
    rank, world_size = 0, 1
    if "RANK" in os.environ:
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
        rank, world_size = dist.get_rank(), dist.get_world_size()
        if device.startswith("cuda"):
            device = f"cuda:{os.environ['LOCAL_RANK']}"
            torch.cuda.set_device(device)
    device = torch.device(device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if dtype == "auto":
        dtype = "float32" if device.type == "cpu" else "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    torch.manual_seed(seed)
    random.seed(seed)
    return Runtime(device, getattr(torch, dtype), torch.amp.GradScaler(device.type, enabled=dtype == "float16"),
                   rank, world_size)


def optimizer_step(optimizer, params, grad_clip, rt):
    """Unscale the gradients (fp16), clip their norm, step, zero them. Returns the norm before clipping."""
    rt.scaler.unscale_(optimizer)
    norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
    rt.scaler.step(optimizer)
    rt.scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return norm.item()


# ----------------------------------------------------------------------------------------------------------
# Several processes (torchrun): each runs the same script on its slice of every batch, and DDP averages the
# gradients. Every process holds the whole model, so the master samples, evaluates and saves alone.


def distributed(model, rt, compile=False):
    """The model as the training loop runs it: compiled with compile, and under torchrun wrapped in DDP."""
    model = torch.compile(model) if compile else model
    if rt.world_size > 1:
        model = DDP(model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)
    return model


@contextlib.contextmanager
def master_first(rt):
    """The master runs the block before the other processes do: what it writes there (data, a tokenizer), they read."""
    if not rt.master:
        dist.barrier()
    yield
    if rt.master and rt.world_size > 1:
        dist.barrier()


def leave_processes(rt):
    """
    Leave the process group at the end of a run. A barrier first: gloo's worker threads may still be releasing the
    tensors of the last collective, which needs the GIL, and destroying the group holds it while it waits for them.
    """
    if rt.world_size > 1:
        dist.barrier()
        dist.destroy_process_group()


def check_split(batch_size, flag, rt):
    if batch_size < rt.world_size:
        raise SystemExit(f"{flag} {batch_size} is smaller than the {rt.world_size} processes, which each take a slice "
                         f"of every batch: give at least {rt.world_size}, or run fewer processes")


def all_sum(x):
    """The tensor x summed over the processes (a copy of x in one process)."""
    x = x.clone()
    if dist.is_initialized():
        dist.all_reduce(x)
    return x


def all_mean(stats, device):
    """
    Each number of a dict averaged over the processes: the mean over a whole batch of means that each process took
    over an equal share of its rows. In one process, the dict unchanged.
    """
    if not dist.is_initialized():
        return stats
    means = all_sum(torch.tensor(list(stats.values()), dtype=torch.float64, device=device)) / dist.get_world_size()
    return dict(zip(stats, means.tolist()))


def all_gather_rows(x):
    """The rows of every process's x [n, ...], concatenated in rank order; n may differ between processes."""
    if not dist.is_initialized():
        return x
    n = torch.tensor([len(x)], device=x.device)
    counts = [torch.empty_like(n) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, n)
    padded = torch.cat([x, x.new_zeros(int(max(counts)) - len(x), *x.shape[1:])])  # all_gather wants equal sizes
    parts = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(parts, padded)
    return torch.cat([part[:int(count)] for part, count in zip(parts, counts)])


def all_gather_objects(obj):
    """[obj of each process], in rank order ([obj] in one process)."""
    if not dist.is_initialized():
        return [obj]
    objects = [None] * dist.get_world_size()
    dist.all_gather_object(objects, obj)
    return objects


# ----------------------------------------------------------------------------------------------------------
# Checkpoints


def save_checkpoint(path, obj):
    """Write atomically: a crash mid-write leaves the previous checkpoint intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


# every checkpoint records its kind, so that a loader handed the wrong file can say so in one line
CHECKPOINT_KINDS = {"policy": "sft.py or dpo.py", "reward_model": "reward.py", "ppo_policy": "ppo.py",
                    "reward_ensemble": "reward.py --members K"}


def load_checkpoint(path, kinds=None, flag=None):
    """
    One of our checkpoints. kinds: those the caller can use (see CHECKPOINT_KINDS); a checkpoint of another
    kind, or of none (written before checkpoints recorded theirs), stops with what it is and what `flag` needs.
    """
    path = Path(path)
    if not path.exists():
        raise SystemExit(f"no checkpoint at {path}: run the stage that writes it first")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if kinds is not None and ckpt.get("kind") not in kinds:
        needs = f"{flag or 'this'} needs " + " or ".join(f"a {k} checkpoint (written by {CHECKPOINT_KINDS[k]})"
                                                        for k in kinds)
        if "kind" not in ckpt:
            raise SystemExit(f"{path} records no kind: an older version of this code wrote it; {needs}, "
                             f"so run that stage again")
        kind = ckpt["kind"]
        raise SystemExit(f"{path} is a {kind} checkpoint (written by {CHECKPOINT_KINDS[kind]}); {needs}")
    return ckpt


def save_run(path, kind, model, optimizer, rt, cfg, tokenizer, step, **extra):
    """
    The master writes a stage's checkpoint: what later stages load (its kind, the weights, the model's config and
    tokenizer) and what --resume needs (the stage's config, the step, the optimizer, the loss scaler and every
    random generator), and whatever else the stage adds.
    """
    if rt.master:
        save_checkpoint(path, {"kind": kind, "model": model.state_dict(), "model_config": asdict(model.config),
                               "tokenizer": tokenizer, "config": asdict(cfg), "step": step,
                               "optimizer": optimizer.state_dict(), "scaler": rt.scaler.state_dict(),
                               "rng": {"torch": torch.get_rng_state(), "python": random.getstate(),
                                       "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
                               **extra})


def restore_run(ckpt, model, optimizer, rt):
    """Load what save_run saved into the model, the optimizer, the scaler and the random generators; returns the step."""
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    rt.scaler.load_state_dict(ckpt["scaler"])
    torch.set_rng_state(ckpt["rng"]["torch"])
    random.setstate(ckpt["rng"]["python"])
    if ckpt["rng"]["cuda"]:
        torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])
    rt.say(f"resumed from step {ckpt['step']}")
    return ckpt["step"]


def load_policy(path, flag=None):
    """A GPT, its tokenizer and its checkpoint, from a policy checkpoint (ppo.py's too, without its value head)."""
    ckpt = load_checkpoint(path, ("policy", "ppo_policy"), flag)
    model = GPT(GPTConfig(**ckpt["model_config"]))
    model.load_state_dict(ckpt["model"])
    return model, ckpt["tokenizer"], ckpt


def load_reward_model(path, flag=None, tokenizer=None, how="mean", uwo_lambda=0.5):
    """
    The trained, normalised reward model of a checkpoint and its tokenizer spec: one model, or an ensemble
    (reward.py --members K) scored as one by model.ensemble_reward(how, uwo_lambda). tokenizer: the one the policy
    it will score writes; a reward model that reads another stops with both named.
    """
    ckpt = load_checkpoint(path, ("reward_model", "reward_ensemble"), flag)
    if tokenizer is not None and ckpt["tokenizer"] != tokenizer:
        raise SystemExit(f"the reward model {path} reads tokenizer {ckpt['tokenizer']}, the policy writes {tokenizer}")
    if how not in REWARD_AGGREGATIONS:
        raise SystemExit(f"--reward_agg must be one of {', '.join(REWARD_AGGREGATIONS)}, not {how!r}")
    config = GPTConfig(**ckpt["model_config"])
    if ckpt["kind"] == "reward_ensemble":
        rm = RewardEnsemble([RewardModel(config) for _ in range(ckpt["members"])], how, uwo_lambda)
    elif how != "mean":
        raise SystemExit(f"{path} is one reward model, and --reward_agg {how} aggregates an ensemble's members: "
                         f"train one with reward.py --members K, or drop --reward_agg")
    else:
        rm = RewardModel(config)
    rm.load_state_dict(ckpt["model"])
    return rm, ckpt["tokenizer"]


def frozen(model):
    """Eval mode, no gradients: a reference or reward model never trains and never holds optimizer state."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


# ----------------------------------------------------------------------------------------------------------
# Data files


def read_jsonl(path, fields):
    """
    Records of a JSONL file, each with the given string fields. A malformed record (not JSON, a missing field,
    a non-string or empty text) stops with file:line, so a bad dataset is fixed rather than silently thinned.
    """
    if not Path(path).is_file():
        raise SystemExit(f"no file {path}: give the path of a JSONL file of {{{', '.join(fields)}}} records")
    records = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise SystemExit(f"{where}: not valid JSON ({e.msg})") from None
            if not isinstance(rec, dict):
                raise SystemExit(f"{where}: expected a JSON object with fields {list(fields)}")
            for name in fields:
                if name not in rec:
                    raise SystemExit(f"{where}: missing field {name!r}")
                if not isinstance(rec[name], str):
                    raise SystemExit(f"{where}: field {name!r} must be a string, not {type(rec[name]).__name__}")
                if not rec[name].strip():
                    raise SystemExit(f"{where}: field {name!r} is empty")
            records.append({name: rec[name] for name in fields})
    if not records:
        raise SystemExit(f"{path}: no records")
    return records


def write_jsonl(path, rows):
    """Write rows, one JSON object a line, atomically."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    os.replace(tmp, path)


def fit_to_context(ids, mask, max_len):
    """
    The one truncation rule. A sequence longer than max_len loses prompt tokens from the left first (the end
    of the dialogue is what the response answers), keeping at least max_len // 2 of them, then response
    tokens from the right (losing the end-of-text). Returns (ids, mask, was_truncated).
    """
    if len(ids) <= max_len:
        return ids, mask, False
    n_prompt = mask.index(1) if 1 in mask else len(ids)
    keep_prompt = min(n_prompt, max(max_len - (len(ids) - n_prompt), max_len // 2))
    start = n_prompt - keep_prompt
    return ids[start:start + max_len], mask[start:start + max_len], True


def fit_pair_to_context(chosen, rejected, max_len):
    """
    fit_to_context for the two sides of a preference pair, each (ids, mask) of the same prompt and its response.
    The prompt is cut once, as the rule cuts it for the longer side, so that both responses follow the same
    prompt tokens (DPO's log Z(x) cancels only then, and a reward model compares the two in the same context);
    then each response is cut on its own. Returns (chosen, rejected, was_truncated).
    """
    longer = max(chosen, rejected, key=lambda side: len(side[0]))
    _, kept_mask, truncated = fit_to_context(*longer, max_len)
    start = longer[1].index(1) - kept_mask.index(1)  # prompt tokens dropped on the left, on both sides
    chosen, rejected = ((ids[start:start + max_len], mask[start:start + max_len]) for ids, mask in (chosen, rejected))
    return chosen, rejected, truncated


def pad(seqs, pad_id, left=False):
    """[B, T] tensor of variable-length lists, padded on the right (or left), and the mask of real entries."""
    width = max(len(s) for s in seqs)
    out = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        span = slice(width - len(s), width) if left else slice(0, len(s))
        out[i, span] = torch.tensor(s, dtype=torch.long)
        mask[i, span] = 1
    return out, mask


def encode_prompts(enc, prompts, context, max_new_tokens):
    """
    Token ids of prompts to sample from, each leaving room for max_new_tokens in a context of that many tokens:
    fit_to_context's rule for a sequence of prompt tokens only, so a long dialogue loses its beginning, as in
    training. Returns (ids, how many prompts were cut).
    """
    if max_new_tokens >= context:
        raise SystemExit(f"--max_new_tokens {max_new_tokens} leaves no room for a prompt in the model's context of "
                         f"{context} tokens: lower it")
    fitted = [fit_to_context(ids, [0] * len(ids), context - max_new_tokens)
              for ids in map(enc.encode_ordinary, prompts)]
    return [ids for ids, _, _ in fitted], sum(cut for _, _, cut in fitted)


def load_prompts(path, enc, context, max_new_tokens, n=None, say=print):
    """The first n prompts of a {prompt} file and their token ids (see encode_prompts); says how many were cut."""
    prompts = [r["prompt"] for r in read_jsonl(path, ("prompt",))][:n]
    ids, cut = encode_prompts(enc, prompts, context, max_new_tokens)
    say(f"{path}: {len(prompts)} prompts, {cut} cut to their last {context - max_new_tokens} tokens")
    return prompts, ids


def batch_at(n, batch_size, k, seed, lengths=None):
    """
    Indices of the k-th batch of a run: epochs of a shuffle seeded by (seed, epoch), last partial batch dropped.
    With lengths (a tensor, one per example), each batch holds examples of similar length, since a batch pads to
    its longest row: windows of 64 batches of the shuffle are sorted by length and cut into batches, and the
    batches of the epoch are shuffled. A function of k alone, so a resumed run reads exactly the batches the
    interrupted one would have.
    """
    per_epoch = max(1, n // batch_size)
    epoch, j = divmod(k, per_epoch)
    g = torch.Generator().manual_seed(seed * 100003 + epoch)
    perm = torch.randperm(n, generator=g)[:per_epoch * batch_size]
    if lengths is not None:
        perm = torch.cat([w[torch.argsort(lengths[w], stable=True)] for w in perm.split(64 * batch_size)])
        return perm.view(per_epoch, batch_size)[torch.randperm(per_epoch, generator=g)[j]].tolist()
    return perm[j * batch_size:(j + 1) * batch_size].tolist()


def download_file(url, target):
    """Fetch url into target once, through a temporary file, so an interrupted download is never mistaken for one."""
    target = Path(target)
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".part")
    print(f"downloading {url}")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as out:
            while chunk := response.read(1 << 20):
                out.write(chunk)
    except OSError as e:
        raise SystemExit(f"could not download {url} ({e}); offline, put the file at {target} by hand") from e
    os.replace(tmp, target)
    return target


GPT2_NAMES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")


def pretrained_dir(name_or_path, cache_dir=None):
    """
    The Hugging Face checkpoint directory that GPT.from_pretrained reads: name_or_path itself, or for one of
    OpenAI's GPT-2 names its config.json and model.safetensors, downloaded once into cache_dir (default
    $RLHF_CACHE, else ~/.cache/rlhf-from-scratch).
    """
    if Path(name_or_path).is_dir():
        return Path(name_or_path)
    if name_or_path not in GPT2_NAMES:
        raise SystemExit(f"--init_from {name_or_path} is neither a checkpoint directory nor one of {GPT2_NAMES}")
    cache_dir = Path(cache_dir or os.environ.get("RLHF_CACHE", Path.home() / ".cache" / "rlhf-from-scratch"))
    for file in ("config.json", "model.safetensors"):
        download_file(f"https://huggingface.co/openai-community/{name_or_path}/resolve/main/{file}",
                      cache_dir / name_or_path / file)
    return cache_dir / name_or_path


# ----------------------------------------------------------------------------------------------------------
# Logging


class MetricsLog:
    """
    Every logged step as one JSON line in out/<stage>/metrics.jsonl. A fresh run starts it empty; a run resumed
    from a checkpoint of step resume_step keeps the lines up to that step and drops those after it, which the
    interrupted run logged and the resumed one logs again. Under torchrun only the master writes.
    """

    def __init__(self, out_dir, rt, resume_step=None):
        self.path = Path(out_dir) / "metrics.jsonl"
        self.enabled = rt.master
        if self.enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            lines = self.path.read_text().splitlines(keepends=True) if self.path.exists() else []
            kept = [] if resume_step is None else [l for l in lines if json.loads(l)["step"] <= resume_step]
            self.path.write_text("".join(kept))

    def log(self, step, **metrics):
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps({"step": step, **{k: round(float(v), 6) for k, v in metrics.items()}}) + "\n")


def check_finite(loss, step, ckpt_path):
    if not math.isfinite(loss):
        kept = f"the last good checkpoint is kept at {ckpt_path}" if Path(ckpt_path).exists() else \
            "no checkpoint was written yet"
        raise FloatingPointError(f"loss is {loss} at step {step}; stopping ({kept}). Lower the learning rate, "
                                 f"or try --dtype float32")


def lr_at(step, max_steps, lr, warmup_steps, min_lr_ratio=0.1):
    """Linear warmup, then cosine decay to min_lr_ratio * lr at max_steps."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)
    return lr * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


# ----------------------------------------------------------------------------------------------------------
# Sampling


@torch.no_grad()
def sample(model, prompt_ids, rt, eot_id, max_new_tokens, temperature, batch_size, seed):
    """
    Sample one response per prompt. Returns a list of (prompt tensor row, prompt mask row, tokens, mask) batches:
    the prompts left-padded, the responses cut after their first end-of-text.
    """
    model.eval()
    g = torch.Generator(rt.device).manual_seed(seed)
    batches = []
    for i in range(0, len(prompt_ids), batch_size):
        p, pm = pad(prompt_ids[i:i + batch_size], eot_id, left=True)
        p, pm = p.to(rt.device), pm.to(rt.device)
        with rt.autocast():
            tokens, _ = model.generate(p, pm, max_new_tokens, eot_id, temperature=temperature, generator=g)
        batches.append((p, pm, tokens, response_mask(tokens, eot_id)))
    return batches


def decode_responses(enc, batches):
    """Response texts, each ending in "<|endoftext|>" where the model ended it (the gold judge reads that)."""
    texts = []
    for _, _, tokens, mask in batches:
        for row, m in zip(tokens.tolist(), mask.tolist()):
            texts.append(enc.decode([t for t, keep in zip(row, m) if keep]))
    return texts
