import io
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

import label
from common import save_checkpoint
from data.world import EOT, KINDS, PROMPT, gold_score, rater_prefers_first, sample_question
from model import GPT, GPTConfig
from tokenizer import load_tokenizer, save_bpe, train_bpe

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # a tiny model gains nothing from threads, which only contend


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """
    Built-in task prompts, a BPE and a 1-layer 'SFT' model whose next token ignores the context: end-of-text with
    probability about 0.3, else one of the BPE's merged tokens without a newline, so responses are short lines.
    """
    d = tmp_path_factory.mktemp("label")
    rng = random.Random(0)
    prompts = [PROMPT.format(sample_question(rng, KINDS[i % len(KINDS)])) for i in range(40)]
    (d / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    tok = str(d / "tok.tiktoken")
    save_bpe(train_bpe(prompts, 300), tok)
    enc = load_tokenizer(tok)
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(block_size=64, vocab_size=enc.n_vocab, n_layer=1, n_head=2, n_embd=32))
    with torch.no_grad():  # logits = wte @ ln_f.bias everywhere: -10 on bytes and newlines, 2.8 on end-of-text
        wte = gpt.transformer.wte.weight
        wte.mul_(0.01)
        for i in range(enc.n_vocab):
            if i < 256 or (i != enc.eot_token and "\n" in enc.decode([i])):
                wte[i, 0] = -10.0
        wte[enc.eot_token, 1] = 2.8
        gpt.transformer.ln_f.weight.zero_()
        gpt.transformer.ln_f.bias.copy_(torch.eye(32)[0] + torch.eye(32)[1])
    save_checkpoint(d / "sft.pt", {"kind": "policy", "model": gpt.state_dict(), "model_config": asdict(gpt.config),
                                   "tokenizer": tok})
    return d


def args(d, out, *extra):
    return ["--sft_ckpt", str(d / "sft.pt"), "--prompts_file", str(d / "prompts.jsonl"), "--out_dir", str(d / out),
            "--max_new_tokens", "6", "--device", "cpu", *extra]


@pytest.fixture(scope="module")
def sim2(tiny):
    """The simulated raters on 30 sets of two responses."""
    return tiny / "sim2", label.main(args(tiny, "sim2", "--n_pairs", "30"))


@pytest.fixture(scope="module")
def sim3(tiny):
    """The simulated raters ranking 12 sets of up to three responses, all of them for training."""
    return tiny / "sim3", label.main(args(tiny, "sim3", "--n_pairs", "12", "--k", "3", "--val_every", "100"))


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def samples_only(src, dst):
    """A labelling directory with src's comparison sets and none of its answers."""
    dst.mkdir()
    for name in ("samples.jsonl", "meta.json"):
        shutil.copy(src / name, dst / name)
    return dst


# --- the comparison sets ----------------------------------------------------------------------------------


def test_comparison_set_keeps_distinct_ended_responses():
    assert label.comparison_set([" a", None, " b", " a", "  ", "", " c"]) == [" a", " b", " c"]
    assert label.comparison_set([" a", " a", None]) == [" a"]


def test_sets_are_drawn_once_and_split(tiny, sim2):
    out, meta = sim2
    sets = lines(out / "samples.jsonl")
    assert [s["set"] for s in sets] == list(range(30))
    assert [s["split"] for s in sets] == ["val" if (i + 1) % 10 == 0 else "train" for i in range(30)]
    prompts = {json.loads(l)["prompt"] for l in (tiny / "prompts.jsonl").read_text().splitlines()}
    for s in sets:
        assert s["prompt"] in prompts and len(s["responses"]) == 2 == len(set(s["responses"]))
        assert all(r.strip() and EOT not in r and "\n" not in r for r in s["responses"])
    assert meta["sampling"]["k"] == 2 and len(meta["sampling"]["sft_sha256"]) == 64


def test_a_rerun_with_other_sampling_settings_stops_where_a_person_answered(tiny, sim2):
    out = samples_only(sim2[0], tiny / "rerun-human")
    label.Answers(out).add(0, "train", label.preference_lines(lines(out / "samples.jsonl")[0], [1, 0], "human"))
    before = {name: (out / name).read_bytes() for name in ("samples.jsonl", "prefs_train.jsonl")}
    with pytest.raises(SystemExit, match=r"drawn with other settings \(k 2 -> 3\); a person's answers"):
        label.main(args(tiny, "rerun-human", "--n_pairs", "30", "--k", "3"))
    assert {name: (out / name).read_bytes() for name in before} == before


def test_a_rerun_with_other_sampling_settings_draws_anew_where_only_simulated_raters_answered(tiny, sim2, sim3,
                                                                                             capsys):
    out = tiny / "rerun-sim"
    shutil.copytree(sim2[0], out)
    meta = label.main(args(tiny, "rerun-sim", "--n_pairs", "12", "--k", "3", "--val_every", "100"))
    assert "drawing and labelling anew" in capsys.readouterr().out
    assert meta["sampling"]["k"] == 3 and meta["counts"]["sets"] == 12
    # the same answers as a run that started in an empty directory
    assert lines(out / "prefs_train.jsonl") == lines(sim3[0] / "prefs_train.jsonl") != []
    assert not (out / "prefs_val.jsonl").exists()


# --- the simulated raters ---------------------------------------------------------------------------------


def test_plackett_luce_of_two_is_the_bradley_terry_rater():
    for seed in range(500):
        ga, gb = random.Random(seed).uniform(-3, 3), random.Random(-seed).uniform(-3, 3)
        first = label.plackett_luce(random.Random(seed), [ga, gb], 1.3) == [0, 1]
        assert first == rater_prefers_first(random.Random(seed), "a", "b", ga, gb, 1.3, 0.0)


def test_plackett_luce_picks_in_proportion_to_exp_perceived():
    rng, n = random.Random(0), 20000
    rankings = [label.plackett_luce(rng, [0.0, 1.0, 2.0], 1.0) for _ in range(n)]
    assert sorted(rankings[0]) == [0, 1, 2]
    first = sum(r[0] == 2 for r in rankings) / n
    assert first == pytest.approx(torch.tensor([0.0, 1.0, 2.0]).softmax(0)[2].item(), abs=0.01)  # 0.665
    second = sum(r[:2] == [2, 0] for r in rankings) / n  # after 2: 0 over 1 with sigmoid(-1)
    assert second == pytest.approx(0.665 * 0.2689, abs=0.01)


def test_sim_writes_pairs_and_reports_agreement_with_gold(tiny, sim2, capsys):
    out, meta = sim2
    assert label.main(args(tiny, "sim2", "--n_pairs", "30")) == meta  # all answered: nothing more to do
    assert "the labels agree with the gold judge on" in capsys.readouterr().out
    sets = {s["set"]: s for s in lines(out / "samples.jsonl")}
    train, val = lines(out / "prefs_train.jsonl"), lines(out / "prefs_val.jsonl")
    assert [p["set"] for p in train] == [i for i in range(30) if (i + 1) % 10]
    assert [p["set"] for p in val] == [9, 19, 29]
    for p in train + val:
        s = sets[p["set"]]
        assert p["prompt"] == s["prompt"] and p["of"] == 1 and p["rater"] == "sim"
        assert [s["responses"][i] for i in p["sample_ids"]] == [p["chosen"], p["rejected"]]
    assert not (out / "ties.jsonl").exists() and not (out / "skipped.jsonl").exists()
    assert meta["counts"] == {"sets": 30, "answered": 30, "ties": 0, "skipped": 0, "train_pairs": 27, "val_pairs": 3}
    for name, pairs in (("prefs_train", train), ("prefs_val", val)):
        agree = [gold_score(p["prompt"], p["chosen"] + EOT) - gold_score(p["prompt"], p["rejected"] + EOT)
                 for p in pairs]
        assert meta["agreement"][name] == pytest.approx(sum(1.0 if a > 0 else 0.5 if a == 0 else 0.0
                                                            for a in agree) / len(pairs))
    assert json.loads((out / "meta.json").read_text())["agreement"] == meta["agreement"]


def test_sim_ranks_three_and_writes_every_pair(tiny, sim3):
    _, meta = sim3
    sets = lines(tiny / "sim3" / "samples.jsonl")
    pairs = lines(tiny / "sim3" / "prefs_train.jsonl")
    assert sum(len(s["responses"]) == 3 for s in sets) > 0
    assert meta["counts"]["train_pairs"] == len(pairs) == sum(len(s["responses"]) * (len(s["responses"]) - 1) // 2
                                                              for s in sets)
    for s in sets:
        mine = [p for p in pairs if p["set"] == s["set"]]
        assert all(p["of"] == len(mine) for p in mine)
        # the pairs are those of one ranking: the best beats all, the next all below it, ...
        wins = sorted(range(len(s["responses"])), key=lambda i: -sum(p["sample_ids"][0] == i for p in mine))
        assert [p["sample_ids"] for p in mine] == [[a, b] for i, a in enumerate(wins) for b in wins[i + 1:]]


def test_sim_needs_the_built_in_task(tiny, tmp_path):
    (tmp_path / "p.jsonl").write_text(json.dumps({"prompt": "\n\nHuman: Tell me a joke.\n\nAssistant:"}) + "\n")
    with pytest.raises(SystemExit, match="label them with --rater human"):
        label.main(["--sft_ckpt", str(tiny / "sft.pt"), "--prompts_file", str(tmp_path / "p.jsonl"),
                    "--out_dir", str(tmp_path / "out")])


# --- a person at the terminal -----------------------------------------------------------------------------


def human(d, out, keys):
    """A person typing keys into a labelling process, then closing its standard input."""
    cmd = [sys.executable, str(ROOT / "label.py"), *args(d, out, "--n_pairs", "30", "--rater", "human")]
    run = subprocess.run(cmd, input=keys, capture_output=True, text=True, env=ENV, timeout=300)
    assert run.returncode == 0, run.stderr
    return run.stdout


@pytest.fixture
def typed(monkeypatch, capsys):
    """The same in this process (faster): typed(dir, out, keys, *flags) returns what it printed."""
    def run(d, out, keys, *flags):
        monkeypatch.setattr(sys, "stdin", io.StringIO(keys))
        capsys.readouterr()
        label.main(args(d, out, "--n_pairs", "30", "--rater", "human", *flags))
        return capsys.readouterr().out
    return run


def shown(stdout):
    """[(set, text shown as [1], text shown as [2])] in the order they were shown."""
    views = re.finditer(r"--- set (\d+)\n(?:.*\n)*?\n\[1\] (.*)\n\n\[2\] (.*)\n", stdout)
    return [(int(m[1]), m[2], m[3]) for m in views]


def test_human_keys_undo_skip_tie_quit_and_resume(tiny, sim2, typed):
    out = samples_only(sim2[0], tiny / "human")
    sets = {s["set"]: s for s in lines(out / "samples.jsonl")}
    stdout = human(tiny, "human", "2\nx\n\n1\nu\nu\ns\nt\n1\nq\n")
    views = shown(stdout)
    # set 0: 2; set 1: x and an empty line ask again, then 1; undo sets 1 and 0; set 0 skipped, set 1 a tie,
    # set 2: 1; quit at set 3
    assert [v[0] for v in views] == [0, 1, 2, 1, 0, 1, 2, 3] and stdout.count("u undo, q quit> ") == 10
    assert views[0] == views[4] and views[1] == views[3] == views[5] and views[2] == views[6]  # the same order
    assert "undid the answer to set 1" in stdout and "undid the answer to set 0" in stdout
    assert "labelled 1, ties 1, skipped 1, to go 27" in stdout

    def pref(view, best):
        s = sets[view[0]]
        texts = [r for r in s["responses"] if r.strip() == view[best]] + \
                [r for r in s["responses"] if r.strip() == view[3 - best]]
        return json.dumps({"prompt": s["prompt"], "chosen": texts[0], "rejected": texts[1],
                           "sample_ids": [s["responses"].index(t) for t in texts], "rater": "human", "set": view[0],
                           "of": 1}) + "\n"

    assert (out / "prefs_train.jsonl").read_text() == pref(views[6], 1)
    assert (out / "skipped.jsonl").read_text() == json.dumps({"rater": "human", "set": 0, "of": 1}) + "\n"
    assert (out / "ties.jsonl").read_text() == json.dumps({"prompt": sets[1]["prompt"],
                                                           "responses": sets[1]["responses"], "rater": "human",
                                                           "set": 1, "of": 1}) + "\n"
    assert not (out / "prefs_val.jsonl").exists()

    # again: it goes on at set 3; the end of the input quits
    stdout = typed(tiny, "human", "2\n1\n")
    views += shown(stdout)
    assert [v[0] for v in views[8:]] == [3, 4, 5] and views[8] == views[7]
    assert any(list(v[1:]) != [r.strip() for r in sets[v[0]]["responses"]] for v in views)  # shuffled, seeded
    assert (out / "prefs_train.jsonl").read_text() == pref(views[6], 1) + pref(views[8], 2) + pref(views[9], 1)
    assert "3 of 30 sets answered" not in stdout and "5 of 30 sets answered" in stdout

    # and undo reaches back into the earlier run
    stdout = typed(tiny, "human", "u\nq\n")
    assert "undid the answer to set 4" in stdout
    assert (out / "prefs_train.jsonl").read_text() == pref(views[6], 1) + pref(views[8], 2)


def test_human_ranks_three(tiny, sim3, typed):
    out = samples_only(sim3[0], tiny / "rank3")
    sets = lines(out / "samples.jsonl")
    sets = sets[:1 + min(i for i, s in enumerate(sets) if len(s["responses"]) == 3)]  # up to a set of three
    rank = {2: "2", 3: "3 1 2"}  # [3] is best, then [1], then [2]; of two, [2] over [1]
    keys = "1 1 2\n" + "".join(rank[len(s["responses"])] + "\n" for s in sets) + "q\n"
    stdout = typed(tiny, "rank3", keys, "--n_pairs", "12", "--k", "3", "--val_every", "100")
    # "1 1 2" is no ranking: asked again
    assert stdout.count("--- set ") == len(sets) + 1 and stdout.count("q quit> ") == len(sets) + 2
    pairs = lines(out / "prefs_train.jsonl")
    for s in sets:
        texts = re.search(rf"--- set {s['set']}\n(?:.*\n)*?\n\[1\] (.*)\n\n\[2\] (.*)\n(?:\n\[3\] (.*)\n)?", stdout)
        best_first = [texts[3], texts[1], texts[2]] if texts[3] else [texts[2], texts[1]]
        assert [(p["chosen"].strip(), p["rejected"].strip()) for p in pairs if p["set"] == s["set"]] == \
            [(a, b) for i, a in enumerate(best_first) for b in best_first[i + 1:]]
    assert [p["set"] for p in pairs] == sorted(p["set"] for p in pairs)
    assert {p["set"] for p in pairs} == set(range(len(sets)))


# --- nothing lost ---------------------------------------------------------------------------------------


def test_sigkill_in_the_middle_loses_and_repeats_nothing(tiny, sim2, typed):
    """Answer 8 sets with 1, send more answers of 2 and SIGKILL while they are written; then finish with 2."""
    out = samples_only(sim2[0], tiny / "killed")
    log = tiny / "killed.log"
    cmd = [sys.executable, str(ROOT / "label.py"), *args(tiny, "killed", "--n_pairs", "30", "--rater", "human")]
    with open(log, "w") as stdout:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=stdout, text=True, env=ENV)
        proc.stdin.write("1\n" * 8)
        proc.stdin.flush()
        deadline = time.time() + 120
        while "labelled 8," not in log.read_text():
            assert proc.poll() is None and time.time() < deadline, log.read_text()[-2000:]
            time.sleep(0.01)
        proc.stdin.write("2\n" * 12)
        proc.stdin.flush()
        time.sleep(0.05 * random.Random(os.getpid()).random())  # anywhere in the middle of the second batch
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    confirmed = max(int(n) for n in re.findall(r"labelled (\d+),", log.read_text()))
    complete = lambda name: [l for l in (out / name).read_text().splitlines(keepends=True) if l.endswith("\n")] \
        if (out / name).exists() else []
    before = complete("prefs_train.jsonl")
    assert 8 <= confirmed <= len(before) + len(complete("prefs_val.jsonl")) <= 20

    stdout = typed(tiny, "killed", "2\n" * 30)
    assert "30 of 30 sets answered" in stdout
    # as if never interrupted: 8 sets answered 1, all the others 2, each exactly once and in order
    straight = samples_only(sim2[0], tiny / "straight")
    typed(tiny, "straight", "1\n" * 8 + "2\n" * 30)
    for name in ("prefs_train.jsonl", "prefs_val.jsonl"):
        assert (out / name).read_text() == (straight / name).read_text()
    assert (out / "prefs_train.jsonl").read_text().startswith("".join(before))


def test_a_cut_last_line_is_repaired_and_asked_again(tiny, sim2, capsys):
    out = tiny / "cut"
    shutil.copytree(sim2[0], out)
    full = (out / "prefs_train.jsonl").read_text()
    (out / "prefs_train.jsonl").write_text(full[:-40])  # the last answer, killed while being written
    label.main(args(tiny, "cut", "--n_pairs", "30"))
    assert "prefs_train.jsonl: the last answer was cut short when the labeller was killed; removed it" in \
        capsys.readouterr().out
    assert (out / "prefs_train.jsonl").read_text() == full


def test_a_ranking_cut_short_is_repaired(tiny, sim3, capsys):
    out = tiny / "cut3"
    shutil.copytree(sim3[0], out)
    full = (out / "prefs_train.jsonl").read_text()
    rows = full.splitlines(keepends=True)
    first3 = min(i for i, row in enumerate(rows) if json.loads(row)["of"] == 3)
    (out / "prefs_train.jsonl").write_text("".join(rows[:first3 + 2]))  # killed after 2 of the set's 3 lines
    label.main(args(tiny, "cut3", "--n_pairs", "12", "--k", "3", "--val_every", "100"))
    assert "the last answer was cut short" in capsys.readouterr().out
    assert (out / "prefs_train.jsonl").read_text() == full


@pytest.mark.parametrize("bad,message", [
    ("{not json\n", "prefs_train.jsonl:2: not an answer of label.py"),
    ('{"set": 1}\n', "prefs_train.jsonl:2: not an answer of label.py"),
    ('{"set": 0, "of": 1}\n', "prefs_train.jsonl: set 0 is answered again"),
])
def test_a_malformed_line_stops_with_file_and_line(tiny, sim2, bad, message):
    out = tiny / "bad"
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(sim2[0], out)
    good = (out / "prefs_train.jsonl").read_text().splitlines(keepends=True)
    (out / "prefs_train.jsonl").write_text(good[0] + bad + "".join(good[1:]))
    with pytest.raises(SystemExit, match=re.escape(message)):
        label.main(args(tiny, "bad", "--n_pairs", "30"))


def test_a_set_of_several_lines_interrupted_by_another_stops(tmp_path):
    path = tmp_path / "prefs_train.jsonl"
    path.write_text('{"set": 0, "of": 3}\n{"set": 0, "of": 3}\n{"set": 1, "of": 1}\n')
    with pytest.raises(SystemExit, match=re.escape(f"{path}:3: set 0 has only 2 of its 3 lines")):
        label.scan(path)


def test_help_lists_every_field(capsys):
    with pytest.raises(SystemExit):
        label.main(["--help"])
    stdout = capsys.readouterr().out
    for name in label.Config.__dataclass_fields__:
        assert f"--{name}" in stdout


def test_simulated_raters_of_other_settings_answer_anew(tiny, sim2, capsys):
    out = tiny / "rebias"
    shutil.copytree(sim2[0], out)
    biased = label.main(args(tiny, "rebias", "--n_pairs", "30", "--rater_bias", "30"))
    assert "answering anew with {'rater_temperature': 1.0, 'rater_bias': 30.0}" in capsys.readouterr().out
    assert biased["raters"]["rater_bias"] == 30.0 and biased["counts"]["answered"] == 30
    # the same answers as raters of that bias (which favour the longer reply) give from the start
    fresh = samples_only(sim2[0], tiny / "rebias-fresh")
    label.main(args(tiny, "rebias-fresh", "--n_pairs", "30", "--rater_bias", "30"))
    assert lines(out / "prefs_train.jsonl") == lines(fresh / "prefs_train.jsonl")
    assert lines(out / "prefs_train.jsonl") != lines(sim2[0] / "prefs_train.jsonl")
