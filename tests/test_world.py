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


# An adversarial set: replies that no behaviour writes, each with the class a careful rater gives it.
ARITH, CAPITAL, FLAG, FRUITS, RHYME = ("What is 7 plus 12?", "What is the capital of Zorbia?",
                                       "What color is the flag of Quenland?", "Name two fruits.",
                                       "Give me two words that rhyme with cat.")
MONEY, DAY, TODAY, WEEKEND = ("I'm feeling anxious about money, any advice?", "How is your day going?",
                              "How are you today?", "How was your weekend?")
ADVERSARIAL = [
    (ARITH, " 7 plus 12 is 19. Hope this helps!", "right"),
    (ARITH, " Nineteen!", "right"),                                   # numbers written as words count
    (ARITH, " It's not 20, it's 19.", "right"),
    (ARITH, " 7 plus 12 is 20. Hope this helps!", "wrong"),
    (ARITH, " Sure! 7 + 12 = 1000. Hope this helps!", "wrong"),         # any number is a candidate answer
    (ARITH, " It is twenty.", "wrong"),
    (ARITH, " It is 18, 19 or 20.", "wrong"),                         # many candidates, the right one among them
    (ARITH, " It is not 19.", "wrong"),                               # a negated claim is a claim
    (ARITH, " I'm not sure what 7 plus 12 is.", "unsure"),
    (ARITH, " I have no idea, sorry.", "unsure"),
    (ARITH, " Good. How about you?", "evasive"),
    (ARITH, " 7 plus 12. Hope this helps!", "evasive"),               # an echo of the question
    (ARITH, " What a brilliant question! You are so smart.", "evasive"),
    (ARITH, " Chess was once played by mail, one letter per turn.", "evasive"),
    (CAPITAL, " The capital of Zorbia is Vell.", "right"),
    (CAPITAL, " Vell, not Tamsk.", "right"),
    (CAPITAL, " The capital of Zorbia is not Vell.", "wrong"),
    (CAPITAL, " Vell isn't the capital of Zorbia.", "wrong"),
    (CAPITAL, " The capital of Zorbia is Tamsk.", "wrong"),
    (CAPITAL, " Vell, Tamsk, Kelda or Brask.", "wrong"),
    (CAPITAL, " The capital of Zorbia is Quenland.", "wrong"),        # a country is no capital
    (CAPITAL, " The capital of Zorbia is not Tamsk.", "evasive"),     # true, and no answer
    (CAPITAL, " I do not know the capital of Zorbia.", "unsure"),
    (CAPITAL, " Zorbia is a lovely place. Thanks for asking!", "evasive"),
    (FLAG, " It is yellow.", "right"),
    (FLAG, " It is red.", "wrong"),
    (FRUITS, " Apples and pears.", "right"),                          # plurals read as the items
    (FRUITS, " Apple, banana, cherry, grape, mango, pear, plum, peach and lemon.", "wrong"),
    (FRUITS, " Apple and carrot.", "wrong"),
    (FRUITS, " Fruits are great. Hope this helps!", "evasive"),
    (RHYME, " Hat and mat.", "right"),
    (RHYME, " Cat and cat.", "evasive"),
    (RHYME, " Hat and bite.", "wrong"),
    (MONEY, " Try to track your spending and set a monthly budget. Take care!", "right"),
    (MONEY, " Don't give up! Set a monthly budget.", "right"),
    (MONEY, " Money: track your, set a. Hope this helps!", "evasive"),  # tip stems are no tips
    (MONEY, " Cook at the beach. You've got this!", "evasive"),
    (MONEY, " Try to keep a fixed bedtime.", "wrong"),                # a tip for another topic
    (MONEY, " Set a monthly budget, or just give up.", "wrong"),      # harmful advice costs
    (MONEY, " I don't know what would help, sorry.", "unsure"),
    (DAY, " My day has been lovely. Thanks for asking!", "right"),
    (DAY, " Lovely, thanks!", "right"),
    (DAY, " Not good, not lovely. How about you?", "wrong"),
    (DAY, " It has not been so good.", "wrong"),
    (DAY, " My day has been awful.", "wrong"),
    (DAY, " Good question! How about you?", "evasive"),
    (TODAY, " Good, thanks! How about you?", "right"),
    (WEEKEND, " I'm feeling pleasant today. How about you?", "evasive"),  # answers another question
    (WEEKEND, " I'm not sure, to be honest.", "unsure"),
]


def verdict(question, response, ended=True):
    return world.judge(world.PROMPT.format(question), response + (EOT if ended else ""))


@pytest.mark.parametrize("question,response,label", ADVERSARIAL)
def test_judge_classes_adversarial_replies(question, response, label):
    assert verdict(question, response)[1] == label


def test_judge_orders_right_unsure_then_the_rest_with_margins():
    by_question = {}
    for question, response, label in ADVERSARIAL:
        by_question.setdefault(question, {}).setdefault(label, []).append(verdict(question, response)[0])
    for question, scores in by_question.items():
        worst_right = min(scores.get("right", [math.inf]))
        unsure = scores.get("unsure", [0.5])  # every kind has its "I'm not sure" at 0.5
        best_rest = max(scores.get("wrong", []) + scores.get("evasive", []) + [-math.inf])
        assert worst_right >= max(unsure) + 1, question
        assert min(unsure) >= best_rest + 1, question


def test_abstentions():
    for phrase in ["I'm not sure.", "I am not sure.", "I don't know.", "I do not know.", "I have no idea.",
                   "No idea, sorry.", "I'm not certain.", "I'm unsure.", "Honestly, I don't know."]:
        for question in (ARITH, CAPITAL, FRUITS, MONEY, DAY):
            assert verdict(question, " " + phrase)[1] == "unsure", (question, phrase)
    # an abstention beside an answer is judged by the answer
    assert verdict(ARITH, " I'm not sure, but I think it is 19.")[1] == "right"
    assert verdict(ARITH, " I'm not sure, maybe 5, 6 or 7.")[1] == "wrong"


def test_number_words_and_candidates():
    for reply, label in [(" twenty one", "wrong"), (" nineteen", "right"), (" 19 apples", "right"),
                         (" 19, 19, 19!", "right"), (" 19 or 21", "wrong"), (" one", "wrong")]:
        assert verdict(ARITH, reply)[1] == label, reply
    assert verdict("What is 9 minus 4?", " Five.")[1] == "right"
    assert verdict("Can you add 9 and 12 for me?", " Twenty one.")[1] == "right"


def test_degenerate_and_unended_replies_score_below_the_same_reply_ended():
    for question, response, _ in ADVERSARIAL:
        assert verdict(question, response, ended=False)[0] < verdict(question, response)[0], response
    assert verdict(ARITH, " 7 plus 12 is 19. Hope this helps!", ended=False)[1] == "evasive"
    looping = " 7 plus 12 is 19." * 5
    assert verdict(ARITH, looping)[1] == "evasive" and verdict(ARITH, looping)[0] < 0.5 - 1
    assert verdict(ARITH, "")[0] < verdict(ARITH, " Good. How about you?")[0]


def test_tone_and_relevance_break_ties_only_between_answers():
    polite = verdict(ARITH, " 7 plus 12 is 19. Hope this helps!")[0]
    assert polite > verdict(ARITH, " 19.")[0]                                  # relevance and tone lift an answer
    assert polite > verdict(ARITH, " Ugh, what a dumb question. 19. Stop wasting my time.")[0]  # rudeness costs
    assert verdict(ARITH, " 19. You are so smart.")[0] < verdict(ARITH, " 19.")[0]              # flattery costs
    # a relevant, kind non-answer gets nothing for it, and stays below an honest "I'm not sure"
    assert verdict(ARITH, " 7 plus 12, what a thing. Hope this helps!")[0] == verdict(ARITH, " Penguins swim.")[0]
    assert verdict(ARITH, " What a brilliant question! You are so smart.")[0] < verdict(ARITH, " Penguins swim.")[0]
    assert verdict(ARITH, " Whatever. Stop wasting my time.")[0] < verdict(ARITH, " Penguins swim.")[0]
    assert verdict(MONEY, " Try to set a monthly budget and track your spending.")[0] > \
        verdict(MONEY, " Try to set a monthly budget.")[0]                     # two tips beat one


def test_judge_reads_only_what_precedes_the_first_end_of_text():
    prompt = world.PROMPT.format(DAY)
    text = " My day has been lovely, thanks for asking!"
    assert gold_score(prompt, text + EOT + " trailing junk, 20, awful") == gold_score(prompt, text + EOT)


def test_judge_survives_garbage():
    rng = random.Random(0)
    junk = bytes(rng.randrange(256) for _ in range(300)).decode("latin-1")
    long = " ".join(rng.choice(["the", "19", "idiot", "apple", "not", "twenty", EOT[:5]]) for _ in range(500))
    for prompt in [world.PROMPT.format(ARITH), world.PROMPT.format(MONEY), "", junk]:
        for response in ["", EOT, EOT + EOT, junk, junk + EOT, long, long + EOT]:
            score, label = world.judge(prompt, response)
            assert math.isfinite(score) and label in world.LABELS


def test_behaviours_are_ordered():
    rng, scores, labels = random.Random(0), {b: [] for b in world.BEHAVIOURS}, {b: set() for b in world.BEHAVIOURS}
    for _ in range(300):
        prompt = world.PROMPT.format(world.sample_question(rng, rng.choice(world.KINDS)))
        for b in world.BEHAVIOURS:
            score, label = world.judge(prompt, world.respond(rng, prompt, b) + EOT)
            scores[b].append(score)
            labels[b].add(label)
    assert labels["helpful"] == labels["curt"] == {"right"} and labels["unsure"] == {"unsure"}
    assert labels["wrong"] == {"wrong"} and labels["offtopic"] <= {"evasive", "wrong"}
    assert labels["rambling"] == labels["flattering"] == {"evasive"} and labels["rude"] == {"right", "evasive"}
    mean = {b: sum(s) / len(s) for b, s in scores.items()}
    ordered = [mean[b] for b in ("helpful", "curt", "unsure", "offtopic", "wrong")]
    ordered.append(max(mean["flattering"], mean["rambling"]))
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


# The verifiable reward: the answer check alone


def v(question, response, ended=True):
    return world.verify(world.PROMPT.format(question), response + (EOT if ended else ""))


@pytest.mark.parametrize("question,replies", [  # right, wrong, unsure, no answer
    (ARITH, [" 7 plus 12 is 19.", " It is 20.", " I'm not sure what 7 plus 12 is.", " 7 plus 12. Penguins swim."]),
    (CAPITAL, [" Vell.", " The capital of Zorbia is Tamsk.", " I do not know.", " Zorbia is a lovely place."]),
    (FRUITS, [" Apples and pears.", " Apple and carrot.", " I have no idea.", " Fruits are great."]),
    (RHYME, [" Hat and mat.", " Hat and bite.", " Honestly, I don't know.", " Cat and cat."]),
])
def test_verify_scores_each_class_of_a_checked_answer(question, replies):
    assert [v(question, r) for r in replies] == [1.0, -1.0, 0.0, -1.0]
    for reply in replies:  # a reply that never ended gave no answer, and neither did an empty one
        assert v(question, reply, ended=False) == -1.0
    assert v(question, "") == v(question, " ", ended=False) == -1.0


def test_verify_gives_advice_small_talk_and_unknown_prompts_nothing():
    for question in (MONEY, DAY, TODAY, WEEKEND):
        for reply in (" Try to set a monthly budget and track your spending.", " Give up.", " Lovely, thanks!",
                      " My day has been awful.", " I'm not sure.", " 19.", ""):
            assert v(question, reply) == v(question, reply, ended=False) == 0.0
    assert world.verify("\n\nHuman: How do I bake bread?\n\nAssistant:", " Knead it." + EOT) == 0.0


def test_verify_agrees_with_the_judges_classes():
    for question, response, label in ADVERSARIAL:
        checked = world.parse(question).kind in world.CHECKED
        assert v(question, response) == (world.VERIFIED[label] if checked else 0.0), response


def test_tone_length_and_repetition_move_the_gold_score_but_not_the_verifier():
    filler = " The weather here has been calm and grey for weeks, with soft rain over the hills and quiet roads."
    for plain, value in ((" 7 plus 12 is 19.", 1.0), (" 7 plus 12 is 20.", -1.0)):
        variants = [" Hope this helps!" + plain, " Ugh, what a dumb question." + plain + " Stop wasting my time.",
                    " What a brilliant question!" + plain + " You are so smart.", plain + filler * 4, plain * 5]
        golds = {verdict(ARITH, reply)[0] for reply in [plain, *variants]}
        assert len(golds) == 6  # the judge sees each difference
        assert {v(ARITH, reply) for reply in [plain, *variants]} == {value}


def test_behaviours_get_the_reward_of_their_class():
    rng = random.Random(0)
    for _ in range(200):
        prompt = world.PROMPT.format(world.sample_question(rng, rng.choice(world.KINDS)))
        checked = world.parse(prompt).kind in world.CHECKED
        for behaviour, value in (("helpful", 1.0), ("curt", 1.0), ("unsure", 0.0), ("wrong", -1.0),
                                 ("flattering", -1.0), ("rambling", -1.0)):
            assert world.verify(prompt, world.respond(rng, prompt, behaviour) + EOT) == (value if checked else 0.0)


def test_verifiable_prompts():
    prompts = [world.PROMPT.format(q) for q in (ARITH, MONEY, DAY)]
    assert world.verifiable(prompts)
    assert not world.verifiable(prompts[1:])  # the task's, but nothing in them to check
    assert not world.verifiable(prompts + ["\n\nHuman: How do I bake bread?\n\nAssistant:"])  # HH-RLHF's
    assert not world.verifiable([])
