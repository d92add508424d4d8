"""
Stage 2, labelling: raters compare responses of the model being trained, and their answers become the
preference pairs of the reward model and DPO (as in InstructGPT, "Learning to summarize from
human feedback" and lm-human-preferences).

The SFT model answers each prompt k times; the responses that ended with end-of-text, duplicates removed, form
one comparison set. The sets are drawn once and stored, then shown one after the other to a rater, who prefers
one response of two (or ranks k of them: every pair of the ranking is written), calls them a tie, or skips.
Raters are the built-in task's simulated ones (noisy judges that agree with the gold judge only so often) or
you, at the terminal. Every answer is on disk the moment it is given: stop at any time, run the same command
again, and it goes on where it stopped.

    python label.py                      # the simulated raters on the built-in task
    python label.py --rater human        # you: 1 or 2 (the better one), t tie, s skip, u undo, q quit
    python label.py --sft_ckpt my.pt --prompts_file prompts.jsonl --rater human --k 4
"""

import hashlib
import itertools
import json
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm import tqdm

from common import encode_prompts, load_policy, parse_config, print_config, read_jsonl, sample, setup_runtime
from data import world
from tokenizer import EOT, load_tokenizer


@dataclass
class Config:
    sft_ckpt: str = "out/sft/ckpt.pt"  # the model whose responses are compared
    prompts_file: str = ""  # JSONL of {prompt}; empty: the built-in task's training prompts
    out_dir: str = "out/label"  # where samples.jsonl, the answer files and meta.json go
    rater: str = "sim"  # sim (the built-in task's simulated raters) or human (you, at the terminal)
    n_pairs: int = 5000  # comparison sets to collect (one prompt and 2..k distinct responses each)
    k: int = 2  # responses sampled per prompt; more than 2 are ranked, and every pair of the ranking is written
    val_every: int = 10  # every this many-th comparison set goes to prefs_val.jsonl, the others to prefs_train.jsonl
    max_new_tokens: int = 64  # response length limit; responses that do not end within it are not shown
    temperature: float = 1.0  # sampling temperature
    batch_size: int = 256  # responses sampled at once
    rater_temperature: float = 1.0  # sim: label noise, P(a over b) = sigmoid(gold difference / rater_temperature)
    rater_bias: float = 0.0  # sim: how much the raters over-reward flattery and length
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    dtype: str = "auto"  # auto (bf16 or fp16 on CUDA, fp32 on CPU), float32, bfloat16, float16
    seed: int = 0  # seed of sampling, of the simulated raters and of the order responses are shown in


# the settings that decide which responses are drawn (with the prompts file and the checkpoint's contents)
SAMPLING = ("sft_ckpt", "n_pairs", "k", "val_every", "max_new_tokens", "temperature", "seed")
# where an answer goes; "of" in every line is how many lines the answer wrote
FILES = {"train": "prefs_train.jsonl", "val": "prefs_val.jsonl", "tie": "ties.jsonl", "skip": "skipped.jsonl"}

# ----------------------------------------------------------------------------------------------------------
# Drawing the comparison sets


def ended_responses(enc, tokens, mask):
    """Per sampled row, the response text without its end-of-text, or None where it never ended."""
    texts = []
    for row, keep in zip(tokens.tolist(), mask.tolist()):
        ids = [t for t, k in zip(row, keep) if k]
        texts.append(enc.decode(ids[:-1]) if ids and ids[-1] == enc.eot_token else None)
    return texts


def comparison_set(responses):
    """
    The distinct responses worth comparing, in sampling order: a reply that never ended would be rendered with an
    end-of-text it never had (tokenizer.render), and a blank one cannot be written as a pair.
    """
    return list(dict.fromkeys(r for r in responses if r is not None and r.strip()))


def draw_sets(model, enc, prompts, prompt_ids, cfg, rt):
    """
    n_pairs comparison sets {set, split, prompt, responses}: k responses per prompt (prompt_ids: their token ids), of
    which at least two distinct ones ended. Prompts are taken in file order, and again from the start with new
    samples until there are enough.
    """
    per_batch = max(1, cfg.batch_size // cfg.k)
    sets, bar, t0 = [], tqdm(total=cfg.n_pairs, desc="sampling", dynamic_ncols=True), time.time()
    for chunk in itertools.count():
        start = chunk * per_batch
        if start >= len(prompts) and not sets:
            raise SystemExit(f"no prompt of {len(prompts)} got two distinct responses that ended within "
                             f"{cfg.max_new_tokens} tokens: raise --max_new_tokens, or check {cfg.sft_ckpt}")
        picked = [(start + j) % len(prompts) for j in range(per_batch)]
        batch = [prompts[i] for i in picked]
        ids = [prompt_ids[i] for i in picked for _ in range(cfg.k)]
        [(_, _, tokens, mask)] = sample(model, ids, rt, enc.eot_token, cfg.max_new_tokens, cfg.temperature,
                                        len(ids), cfg.seed * 100003 + chunk)
        texts = ended_responses(enc, tokens, mask)
        for j, prompt in enumerate(batch):
            responses = comparison_set(texts[j * cfg.k:(j + 1) * cfg.k])
            if len(responses) >= 2 and len(sets) < cfg.n_pairs:
                s = len(sets)
                sets.append({"set": s, "split": "val" if (s + 1) % cfg.val_every == 0 else "train",
                             "prompt": prompt, "responses": responses})
                bar.update()
        if len(sets) == cfg.n_pairs:
            bar.close()
            print(f"{len(sets)} comparison sets from {start + per_batch} prompts in {time.time() - t0:.0f}s")
            return sets


def file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def write_atomically(path, text):
    tmp = Path(f"{path}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def by_a_person(out):
    """Does out hold an answer given at the terminal (whose time must not be thrown away)?"""
    return any('"rater": "human"' in (out / name).read_text() for name in FILES.values() if (out / name).exists())


def load_or_draw_sets(cfg, prompts_file, out):
    """
    The comparison sets of out_dir/samples.jsonl, drawn now if it does not exist yet. The settings they were drawn
    with are in meta.json, written first: a rerun with other settings (a new SFT model, say) would show other
    responses, so it draws anew where only the simulated raters answered, and stops where a person did.
    """
    samples, meta_path = out / "samples.jsonl", out / "meta.json"
    drawn = {**{name: getattr(cfg, name) for name in SAMPLING}, "prompts_file": prompts_file}
    if Path(cfg.sft_ckpt).exists():  # a checkpoint deleted since cannot have changed: its samples can still be labelled
        drawn["sft_sha256"] = file_sha256(cfg.sft_ckpt)
    if samples.exists():
        stored = json.loads(meta_path.read_text())["sampling"] if meta_path.exists() else {}
        changed = [f"{k} {stored.get(k)!r} -> {v!r}" for k, v in drawn.items() if stored.get(k) != v]
        if not changed:
            sets = [json.loads(line) for line in samples.read_text().splitlines()]
            print(f"{samples}: {len(sets)} comparison sets drawn before")
            return sets
        if by_a_person(out):
            raise SystemExit(f"{samples} was drawn with other settings ({'; '.join(changed)}); a person's answers "
                             f"belong to those samples. Give another --out_dir, or delete {out} to draw and label "
                             f"anew.")
        # the simulated raters' answers cost nothing to give again: a new SFT model is labelled anew
        print(f"{samples} was drawn with other settings ({'; '.join(changed)}) and answered by the simulated "
              f"raters alone: drawing and labelling anew")
        for path in [samples, meta_path, *(out / name for name in FILES.values())]:
            path.unlink(missing_ok=True)
    if any((out / name).exists() for name in FILES.values()):
        raise SystemExit(f"{out} holds answers but no samples.jsonl they belong to: delete {out} to start anew")
    rt = setup_runtime(cfg.device, cfg.dtype, cfg.seed)
    model, tokenizer_spec, _ = load_policy(cfg.sft_ckpt)
    model.to(rt.device)
    enc = load_tokenizer(tokenizer_spec)
    prompts = [r["prompt"] for r in read_jsonl(prompts_file, ("prompt",))]
    prompt_ids, cut = encode_prompts(enc, prompts, model.config.block_size, cfg.max_new_tokens)
    print(f"{prompts_file}: {len(prompts)} prompts, {cut} cut to their last "
          f"{model.config.block_size - cfg.max_new_tokens} tokens")
    sets = draw_sets(model, enc, prompts, prompt_ids, cfg, rt)
    out.mkdir(parents=True, exist_ok=True)
    write_atomically(meta_path, json.dumps({"sampling": drawn}, indent=2))
    write_atomically(samples, "".join(json.dumps(s) + "\n" for s in sets))
    return sets


# ----------------------------------------------------------------------------------------------------------
# The answers: appended, synced, undone and resumed


class Answers:
    """
    The answer files of out_dir, each line tagged with its comparison set. An answer is one write of all its
    lines, synced to disk before the next set is shown, so a kill at any instant loses at most the answer being
    written; reopening repairs that one (see scan). Sets are answered in order, so the last answer given is the
    one of the highest set, and undo removes it.
    """

    def __init__(self, out_dir):
        self.paths = {name: Path(out_dir) / file for name, file in FILES.items()}
        self.where = {}  # set id: (file name, offset of its first line)
        for name, path in self.paths.items():
            for s, offset in scan(path):
                if s in self.where:
                    raise SystemExit(f"{path}: set {s} is answered again, already in {self.paths[self.where[s][0]]}")
                self.where[s] = (name, offset)

    def count(self, name):
        return sum(n == name for n, _ in self.where.values())

    def add(self, s, name, lines):
        """Append one answer, lines of dicts, to its file and sync it."""
        with open(self.paths[name], "ab") as f:
            offset = f.tell()
            f.write("".join(json.dumps({**line, "set": s, "of": len(lines)}) + "\n" for line in lines).encode())
            f.flush()
            os.fsync(f.fileno())
        self.where[s] = (name, offset)

    def undo(self):
        """Remove the last answer given; returns its set id, or None when there is none."""
        if not self.where:
            return None
        s = max(self.where)
        name, offset = self.where.pop(s)
        truncate(self.paths[name], offset)
        return s


def truncate(path, size):
    with open(path, "r+b") as f:
        f.truncate(size)
        f.flush()
        os.fsync(f.fileno())


def scan(path):
    """
    (set id, offset of its first line) of every answer in an answer file. A kill can leave one thing behind: the
    answer it was writing, cut short (a last line without its newline, or fewer lines than its "of" says). That is
    truncated away with a message; any other malformed line stops with file:line.
    """
    if not path.exists():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1  # what follows the last newline was cut short
    answers, offset, seen = [], 0, 0
    for lineno, line in enumerate(data[:end].splitlines(keepends=True), 1):
        try:
            rec = json.loads(line)
            s, of = rec["set"], rec["of"]
        except (ValueError, KeyError, TypeError):
            s = of = None
        if not (isinstance(s, int) and isinstance(of, int) and of >= 1):
            raise SystemExit(f"{path}:{lineno}: not an answer of label.py (a JSON object with integer fields "
                             f"set and of); fix or delete the line")
        if answers and seen < answers[-1][2]:  # inside an answer of several lines
            if s != answers[-1][0]:
                raise SystemExit(f"{path}:{lineno}: set {answers[-1][0]} has only {seen} of its {answers[-1][2]} "
                                 f"lines before set {s} starts; fix or delete its lines")
            seen += 1
        else:
            answers.append((s, offset, of))
            seen = 1
        offset += len(line)
    if answers and seen < answers[-1][2]:
        end = answers.pop()[1]
    if end < len(data):
        print(f"{path}: the last answer was cut short when the labeller was killed; removed it, it will be asked "
              f"again")
        truncate(path, end)
    return [(s, offset) for s, offset, _ in answers]


# ----------------------------------------------------------------------------------------------------------
# The raters. A ranking is a list of indices into a set's responses, best first.


def preference_lines(s, ranking, rater):
    """
    The lines a ranking of a set's responses writes: every (chosen, rejected) pair of it, as InstructGPT uses a
    ranking of K responses. sample_ids are the pair's places in the set's responses in samples.jsonl.
    """
    texts = s["responses"]
    return [{"prompt": s["prompt"], "chosen": texts[a], "rejected": texts[b], "sample_ids": [a, b], "rater": rater}
            for i, a in enumerate(ranking) for b in ranking[i + 1:]]


def plackett_luce(rng, perceived, temperature):
    """
    A ranking drawn best first: each pick is response i with probability softmax(perceived / temperature) over
    those left. For two responses this is the Bradley-Terry rater, P(a over b) = sigmoid((p_a - p_b) / temperature).
    """
    left, ranking = list(range(len(perceived))), []
    while left:
        top = max(perceived[i] for i in left)
        weights = [math.exp((perceived[i] - top) / temperature) for i in left]
        u, i = rng.random() * sum(weights), 0
        while i < len(left) - 1 and u >= weights[i]:
            u -= weights[i]
            i += 1
        ranking.append(left.pop(i))
    return ranking


def sim_ranking(cfg, s):
    """The built-in task's simulated raters on one set: noisy, and with rater_bias biased towards appeal."""
    rng = random.Random(f"{cfg.seed}:sim:{s['set']}")  # per set: a resumed run answers as an uninterrupted one
    texts = s["responses"]
    gold = [world.gold_score(s["prompt"], t + EOT) for t in texts]  # they ended: the judge reads the end-of-text
    if len(texts) == 2:
        first = world.rater_prefers_first(rng, *texts, *gold, cfg.rater_temperature, cfg.rater_bias)
        return [0, 1] if first else [1, 0]
    return plackett_luce(rng, [g + cfg.rater_bias * world.rater_appeal(t) for g, t in zip(gold, texts)],
                         cfg.rater_temperature)


def shown_order(cfg, s):
    """The order a person sees a set's responses in: shuffled, so position says nothing; the same on every run."""
    order = list(range(len(s["responses"])))
    random.Random(f"{cfg.seed}:order:{s['set']}").shuffle(order)
    return order


def parse_ranking(key, n):
    """A typed ranking ("2 1 3", best first; with two responses, "2" alone) as 0-based positions, or None."""
    picks = key.replace(",", " ").split()
    if n == 2 and picks in (["1"], ["2"]):
        picks = [picks[0], "2" if picks[0] == "1" else "1"]
    if sorted(picks) != [str(i) for i in range(1, n + 1)]:
        return None
    return [int(p) - 1 for p in picks]


def ask_human(answers, sets, cfg):
    """One set after the other at the terminal, reading standard input line by line, until all are done or q."""
    while True:
        todo = [s for s in sets if s["set"] not in answers.where]
        print(f"\nlabelled {answers.count('train') + answers.count('val')}, ties {answers.count('tie')}, "
              f"skipped {answers.count('skip')}, to go {len(todo)}")
        if not todo:
            return
        s = todo[0]
        order = shown_order(cfg, s)
        n = len(order)
        print(f"--- set {s['set']}\n{s['prompt'].strip()}")
        for i, r in enumerate(order, 1):
            print(f"\n[{i}] {s['responses'][r].strip()}")
        choice = "1 or 2 (the better one)" if n == 2 else f"a ranking of 1..{n}, best first (e.g. 2 1 3)"
        while True:
            print(f"\n{choice}, t tie, s skip, u undo, q quit> ", end="", flush=True)
            line = sys.stdin.readline()
            key = line.strip().lower()
            ranking = parse_ranking(key, n)
            if ranking is not None:
                answers.add(s["set"], s["split"], preference_lines(s, [order[p] for p in ranking], "human"))
            elif key == "t":
                answers.add(s["set"], "tie", [{"prompt": s["prompt"], "responses": s["responses"], "rater": "human"}])
            elif key == "s":
                answers.add(s["set"], "skip", [{"rater": "human"}])
            elif key == "u":
                undone = answers.undo()
                print("nothing to undo" if undone is None else f"undid the answer to set {undone}")
            elif key == "q" or not line:  # the end of the input quits too
                return
            else:
                continue
            break


def sim_raters(cfg):
    """The settings of the simulated raters: their answers are answers of these."""
    return {"rater_temperature": cfg.rater_temperature, "rater_bias": cfg.rater_bias}


def answer_anew_if_the_raters_changed(cfg, out):
    """
    Simulated raters of other settings gave the answers in out: answer again (their answers cost nothing), unless a
    person answered too, whose answers must not be thrown away: then stop.
    """
    stored = json.loads((out / "meta.json").read_text()).get("raters")
    if stored is None or stored == sim_raters(cfg):
        return
    if by_a_person(out):
        raise SystemExit(f"{out} holds answers of simulated raters with {stored} and of a person: give another "
                         f"--out_dir for raters with {sim_raters(cfg)}")
    print(f"{out} was answered by simulated raters with {stored}: answering anew with {sim_raters(cfg)}")
    for name in FILES.values():
        (out / name).unlink(missing_ok=True)


def gold_agreement(pairs):
    """Share of pairs whose chosen response the gold judge scores higher, a tie counting half (None: no pairs)."""
    agree = 0.0
    for p in pairs:
        c, r = world.gold_score(p["prompt"], p["chosen"] + EOT), world.gold_score(p["prompt"], p["rejected"] + EOT)
        agree += 1.0 if c > r else 0.5 if c == r else 0.0
    return agree / len(pairs) if pairs else None


def main(argv=None):
    cfg, _ = parse_config(Config, argv)
    print("label config:")
    print_config(cfg)
    if cfg.rater not in ("sim", "human"):
        raise SystemExit(f"--rater must be sim or human, not {cfg.rater!r}")
    if cfg.k < 2 or cfg.n_pairs < 1 or cfg.val_every < 1:
        raise SystemExit("--k must be at least 2, --n_pairs and --val_every at least 1")
    prompts_file = cfg.prompts_file or f"{world.builtin_task()[0]}/prompts_train.jsonl"
    # the gold judge, and so the simulated raters, know the built-in task's prompts only
    known = world.judges([r["prompt"] for r in read_jsonl(prompts_file, ("prompt",))])
    if cfg.rater == "sim" and not known:
        raise SystemExit(f"the simulated raters know only the built-in task's prompts, not all of {prompts_file}'s: "
                         f"label them with --rater human")
    out = Path(cfg.out_dir)
    sets = load_or_draw_sets(cfg, prompts_file, out)
    if cfg.rater == "sim":
        answer_anew_if_the_raters_changed(cfg, out)

    answers = Answers(out)
    if cfg.rater == "sim":
        todo = [s for s in sets if s["set"] not in answers.where]
        for s in tqdm(todo, desc="sim raters", dynamic_ncols=True):
            answers.add(s["set"], s["split"], preference_lines(s, sim_ranking(cfg, s), "sim"))
    else:
        ask_human(answers, sets, cfg)

    written = {split: [json.loads(line) for line in answers.paths[split].read_text().splitlines()]
               if answers.paths[split].exists() else [] for split in ("train", "val")}
    counts = {"sets": len(sets), "answered": len(answers.where), "ties": answers.count("tie"),
              "skipped": answers.count("skip"), "train_pairs": len(written["train"]), "val_pairs": len(written["val"])}
    print(f"{counts['answered']} of {len(sets)} sets answered: {counts['train_pairs']} pairs in "
          f"{answers.paths['train']}, {counts['val_pairs']} in {answers.paths['val']}, {counts['ties']} ties, "
          f"{counts['skipped']} skipped")
    meta = {**json.loads((out / "meta.json").read_text()), "config": asdict(cfg), "counts": counts}
    if cfg.rater == "sim":
        meta["raters"] = sim_raters(cfg)
    if known:
        meta["agreement"] = {f"prefs_{split}": gold_agreement(pairs) for split, pairs in written.items()}
        shown = ", ".join(f"{v:.1%} of {name}" for name, v in meta["agreement"].items() if v is not None)
        print(f"the labels agree with the gold judge on {shown or 'no pairs yet'} (a tie counting half): "
              f"the ceiling of a reward model's accuracy against gold")
    write_atomically(out / "meta.json", json.dumps(meta, indent=2))
    return meta


if __name__ == "__main__":
    main()
