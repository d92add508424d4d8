import json
import math
import os
import random
import subprocess
import sys

import pytest

from data import world
from data.world import EOT, gold_score

SMALL = dict(n_sft_train=300, n_sft_val=50, n_prefs_train=2000, n_prefs_val=300, n_prompts_train=200, n_eval=64)
TRAINING_FILES = ["sft_train.jsonl", "sft_val.jsonl", "prefs_train.jsonl", "prefs_val.jsonl", "prompts_train.jsonl"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("data")
    world.generate(str(out), seed=0, **SMALL)
    return out


def read(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def g(question, response):
    """Gold score of a finished dataset-style response to a question."""
    return gold_score(world.PROMPT.format(question), response + EOT)


def test_same_seed_same_bytes(data_dir, tmp_path):
    # regenerate in a fresh process with another hash seed: no byte may depend on set iteration order
    code = f"from data.world import generate; generate({str(tmp_path / 'again')!r}, seed=0, **{SMALL!r})"
    env = {**os.environ, "PYTHONHASHSEED": "123"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=os.path.dirname(os.path.dirname(__file__)))
    world.generate(str(tmp_path / "other"), seed=1, **SMALL)
    for name in world.FILES:
        original = (data_dir / name).read_bytes()
        assert (tmp_path / "again" / name).read_bytes() == original, name
        assert (tmp_path / "other" / name).read_bytes() != original, name


def test_formats(data_dir):
    for row in read(data_dir / "sft_train.jsonl") + read(data_dir / "prefs_train.jsonl"):
        assert row["prompt"].startswith("\n\nHuman: ") and row["prompt"].endswith("\n\nAssistant:")
        for key in ("response", "chosen", "rejected"):
            if key in row:
                assert row[key].startswith(" ") and not row[key].startswith("  ") and EOT not in row[key]
    meta = json.load(open(data_dir / "meta.json"))
    assert meta["counts"]["sft_train.jsonl"] == SMALL["n_sft_train"]
    assert meta["counts"]["eval_prompts.jsonl"] == SMALL["n_eval"]


def test_eval_prompts_held_out(data_dir):
    eval_prompts = {row["prompt"] for row in read(data_dir / "eval_prompts.jsonl")}
    assert len(eval_prompts) == SMALL["n_eval"]
    for name in TRAINING_FILES:
        assert not eval_prompts & {row["prompt"] for row in read(data_dir / name)}, name


def test_every_template_parses_back():
    rng = random.Random(0)
    for kind in world.KINDS:
        for _ in range(200):
            assert world.parse(world.PROMPT.format(world.sample_question(rng, kind))).kind == kind


def test_judge_prefers_correct_answers():
    assert g("What is 7 plus 12?", " 7 plus 12 is 19.") > g("What is 7 plus 12?", " 7 plus 12 is 17.")
    assert g("What's 15 - 4?", " 11.") > g("What's 15 - 4?", " 9.")
    assert g("Hi! What is 15 minus 4?", " It is 11.") > g("Hi! What is 15 minus 4?", " It is 11 or maybe 12.")
    capital = "What is the capital of Zorbia?"
    assert g(capital, " The capital of Zorbia is Vell.") > g(capital, " The capital of Zorbia is Tamsk.")
    assert g("Name two fruits.", " Apple and pear.") > g("Name two fruits.", " Carrot and onion.")
    assert g("Give me two words that rhyme with cat.", " Hat and mat.") > \
        g("Give me two words that rhyme with cat.", " Dog and lake.")


def test_judge_prefers_kind_concise_ended_relevant():
    question = "I'm feeling stressed about work, any advice?"
    advice = " I'm sorry you feel stressed about work. Try to make a list of your tasks and take short breaks."
    assert g(question, advice) > g(question, " Penguins can hold their breath for a surprisingly long time.")
    assert g(question, advice) > g(question, " Just ignore it and skip meals.")
    assert g(question, advice + " You've got this!") > g(question, advice + " Stop whining, you idiot.")
    assert g("What is 7 plus 12?", " 7 plus 12 is 19. Happy to help!") > g("What is 7 plus 12?", " 19, obviously, dummy.")
    assert g("What is 7 plus 12?", " 7 plus 12 is 19.") > g("What is 7 plus 12?", " 7 plus 12 is 19," * 12)
    prompt = world.PROMPT.format("How is your day going?")
    text = " My day has been lovely, thanks for asking!"
    assert gold_score(prompt, text + EOT) > gold_score(prompt, text)
    assert gold_score(prompt, text + EOT + " trailing junk") == gold_score(prompt, text + EOT)


def test_judge_survives_garbage():
    rng = random.Random(0)
    junk = bytes(rng.randrange(256) for _ in range(300)).decode("latin-1")
    long = " ".join(rng.choice(["the", "19", "idiot", "apple", EOT[:5]]) for _ in range(500))
    for prompt in [world.PROMPT.format("What is 7 plus 12?"), "", junk]:
        for response in ["", EOT, EOT + EOT, junk, junk + EOT, long]:
            assert math.isfinite(gold_score(prompt, response))


def test_behaviours_are_ordered():
    rng, scores = random.Random(0), {b: [] for b in world.BEHAVIOURS}
    for _ in range(200):
        prompt = world.PROMPT.format(world.sample_question(rng, rng.choice(world.KINDS)))
        for b in world.BEHAVIOURS:
            scores[b].append(g(prompt, world.respond(rng, prompt, b)))
    mean = {b: sum(s) / len(s) for b, s in scores.items()}
    ordered = [mean[b] for b in ("helpful", "curt", "flattering", "offtopic", "wrong")]
    ordered.append(max(mean["rude"], mean["rambling"]))
    assert all(better > worse + 0.3 for better, worse in zip(ordered, ordered[1:])), mean


def test_agreement_matches_meta(data_dir):
    meta = json.load(open(data_dir / "meta.json"))
    for split in ("train", "val"):
        rows = read(data_dir / f"prefs_{split}.jsonl")
        agree = 0.0
        for row in rows:
            chosen, rejected = (gold_score(row["prompt"], row[k] + EOT) for k in ("chosen", "rejected"))
            agree += 1.0 if chosen > rejected else 0.5 if chosen == rejected else 0.0
        assert agree / len(rows) == pytest.approx(meta["agreement"][f"prefs_{split}"], abs=1e-12)
        assert 0.75 < agree / len(rows) < 0.97


def test_rater_bias_favours_flattery(data_dir, tmp_path):
    world.generate(str(tmp_path), seed=0, rater_bias=2.0, **SMALL)

    def flattery_wins(out):
        flatters = lambda text: any(word in text.lower() for word in world.FLATTERY)
        pairs = [r for r in read(out / "prefs_train.jsonl") if flatters(r["chosen"]) != flatters(r["rejected"])]
        return sum(flatters(r["chosen"]) for r in pairs) / len(pairs)

    assert flattery_wins(tmp_path) > flattery_wins(data_dir) + 0.1


def test_ensure_data_generates_only_when_missing_unfinished_or_stale(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(world, "generate", lambda out_dir, seed, **knobs: calls.append((out_dir, seed, knobs)))
    assert world.ensure_data(str(tmp_path), seed=3) == str(tmp_path)
    assert calls == [(str(tmp_path), 3, {})]
    for name in world.FILES[:-1]:  # every data file, but a generation stopped before its meta.json
        (tmp_path / name).write_text("")
    world.ensure_data(str(tmp_path), seed=3)
    assert len(calls) == 2
    meta = {"seed": 5, "knobs": {"rater_bias": 1.0}, "world": world.world_version()}
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    world.ensure_data(str(tmp_path), seed=3)  # complete and current: reused, whatever its seed
    assert len(calls) == 2
    (tmp_path / "meta.json").write_text(json.dumps({**meta, "world": "an older world"}))
    world.ensure_data(str(tmp_path), seed=3)  # stale: regenerated as it was made
    assert calls[2] == (str(tmp_path), 5, {"rater_bias": 1.0})
