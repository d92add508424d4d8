"""
A small synthetic "assistant world" with a programmatic gold judge standing in for human raters.

It is the default data of every RLHF stage: small enough for tiny models to learn on a laptop
CPU in minutes, and because the judge is a program we can measure whether RLHF made the
assistant better. Training stages never call the judge; only labelling and evaluation do.

python -m data.world              # write out/data/*.jsonl and meta.json
python -m data.world --show 5     # prompts, one response per behaviour, gold scores
"""
import argparse
import hashlib
import json
import math
import os
import random
import re
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from tokenizer import EOT

PROMPT = "\n\nHuman: {}\n\nAssistant:"  # HH-RLHF's format; responses start with a space

# -----------------------------------------------------------------------------
# the world: a fixed table of made-up countries, and word lists for instructions

COUNTRIES = ("Zorbia Quenland Marovia Tellurin Vaskor Ondria Pellamar Kestravia Drunmoor Elbonn "
             "Fyrdal Gallowyn Istral Jorvania Korrin Lunesse Mirabor Norvale Ostrelia Paxland "
             "Quorra Rivenmark Solvia Tarnis Umbrea Veldora Wystan Xandria Yelmar Zentos").split()
CAPITALS = ("Vell Tamsk Orrinport Kelda Brask Miren Sulo Dravik Ennet Folga Garrow Holmsby Isterhal "
            "Jubal Karsk Lomi Mertz Nolo Ostel Pranth Quillby Ruskin Savo Tirn Umberg Varn Wenna "
            "Xeth Yarrow Zell").split()
COLORS = ["red", "blue", "green", "yellow", "purple", "orange", "black", "silver"]
FOODS = ["noodles", "dumplings", "flatbread", "fish soup", "honey cake", "smoked cheese",
         "rice balls", "pickled beets", "lamb pie", "berry jam"]
# strides coprime with the list lengths spread the values, so neighbours differ
FACTS = {c: {"capital": CAPITALS[i], "flag": COLORS[3 * i % 8], "food": FOODS[7 * i % 10]}
         for i, c in enumerate(COUNTRIES)}

CATEGORIES = {
    "fruits": ["apple", "banana", "cherry", "grape", "mango", "pear", "plum", "peach", "lemon"],
    "animals": ["dog", "horse", "rabbit", "tiger", "lion", "sheep", "goat", "wolf", "fox"],
    "vegetables": ["carrot", "potato", "onion", "cabbage", "spinach", "leek", "turnip", "celery"],
}
RHYMES = {"cat": ["hat", "bat", "mat", "rat", "sat"], "day": ["hay", "clay", "tray", "spray", "bay"],
          "light": ["night", "kite", "bite", "sight"], "cake": ["lake", "bake", "rake", "snake"],
          "tree": ["bee", "knee", "tea", "ski"]}
# no word belongs to two lists, so naming an item from another list is unambiguously wrong
ITEMS = [x for words in [*CATEGORIES.values(), *RHYMES.values()] for x in words]
NUMBER_WORDS = {"two": 2, "three": 3}

FEELINGS = ["overwhelmed", "anxious", "stressed", "worried", "unmotivated", "nervous"]
ADVICE = {  # topic: (words that make a reply relevant, concrete tips that each hold one ACTIONABLE phrase)
    "work": ("work job tasks manager", ["make a list of your tasks", "take short breaks between tasks",
             "talk to your manager about priorities", "start with the most urgent task"]),
    "school": ("school homework teacher class", ["ask your teacher for extra help", "make a plan for your homework",
               "start with the hardest homework first", "set a regular time for homework"]),
    "exams": ("exams exam study studying", ["make a study plan for your exams", "study in short sessions",
              "start with the hardest exam topic", "ask a classmate to study with you"]),
    "money": ("money budget spending savings", ["write down what you spend each week", "set a small monthly budget",
              "start with saving a little money each week", "talk to someone you trust about money"]),
    "sleep": ("sleep bed bedtime", ["go to bed at the same time every night", "put your phone away before bed",
              "write down your worries before bed", "ask a doctor about your sleep"]),
    "friendships": ("friend friends friendship friendships", ["send a friend a short message",
                    "plan a small outing with a friend", "join a club to meet new friends",
                    "talk to your friend honestly"]),
    "moving house": ("move moving house home", ["make a checklist for the move", "pack one room at a time",
                     "ask a friend to help you pack", "take a walk around your new home"]),
    "fitness": ("fitness exercise workout fit", ["start with a short walk each day", "set a small exercise goal",
                "schedule your workouts like meetings", "ask a friend to exercise with you"]),
}
ACTIONABLE = frozenset(["make a", "take short breaks", "talk to", "start with", "ask your", "ask a", "set a",
                        "write down", "go to bed", "put your phone away", "send a", "plan a", "join a",
                        "pack one", "take a walk", "schedule", "study in short"])
BAD_ADVICE = ["ignore it", "give up", "stay up all night", "skip meals", "bottle it up", "quit everything"]
POSITIVE = ["good", "lovely", "pleasant", "fine"]  # small talk's "right answer": a friendly reply
GLOOMY = ["awful", "terrible", "miserable", "dreadful"]
SMALLTALK_TOPIC = {"day": "my day", "today": "how I am today", "weekend": "my weekend",
                   "morning": "my morning", "week": "my week"}

# -----------------------------------------------------------------------------
# prompts: (kind, key, template); the key picks the answer logic and the response phrasings

PROMPTS = [
    ("arith", "plus", "What is {a} plus {b}?"), ("arith", "plus", "What's {a} + {b}?"),
    ("arith", "plus", "Can you add {a} and {b} for me?"),
    ("arith", "plus", "If I have {a} apples and buy {b} more, how many apples do I have?"),
    ("arith", "minus", "What is {a} minus {b}?"), ("arith", "minus", "What's {a} - {b}?"),
    ("arith", "minus", "Can you subtract {b} from {a}?"),
    ("arith", "minus", "If I have {a} cookies and eat {b}, how many are left?"),
    ("fact", "capital", "What is the capital of {country}?"),
    ("fact", "capital", "Which city is the capital of {country}?"),
    ("fact", "capital", "Do you know the capital of {country}?"),
    ("fact", "flag", "What color is the flag of {country}?"),
    ("fact", "flag", "What is the color of {country}'s flag?"),
    ("fact", "food", "What food is {country} famous for?"), ("fact", "food", "Which dish is {country} known for?"),
    ("instruct", "list", "Name {n} {cat}."), ("instruct", "list", "Can you list {n} {cat}?"),
    ("instruct", "list", "Give me {n} {cat}, please."),
    ("instruct", "rhyme", "Give me {n} words that rhyme with {w}."),
    ("instruct", "rhyme", "What are {n} words that rhyme with {w}?"),
    ("advice", "advice", "I'm feeling {feeling} about {topic}, any advice?"),
    ("advice", "advice", "I feel {feeling} about {topic}. What should I do?"),
    ("advice", "advice", "How can I stop feeling so {feeling} about {topic}?"),
    ("advice", "advice", "Lately I've been {feeling} about {topic}. Can you help?"),
    ("smalltalk", "day", "How is your day going?"), ("smalltalk", "day", "How's your day been so far?"),
    ("smalltalk", "today", "How are you today?"), ("smalltalk", "today", "How are you feeling today?"),
    ("smalltalk", "weekend", "How was your weekend?"), ("smalltalk", "weekend", "Did you have a nice weekend?"),
    ("smalltalk", "morning", "Having a nice morning?"), ("smalltalk", "week", "How has your week been?"),
    ("smalltalk", "week", "Busy week so far?"),
]
KINDS = list(dict.fromkeys(kind for kind, _, _ in PROMPTS))
PREFIXES = ["", "", "Hi! ", "Hey! ", "Quick question: ", "Hello there. ", "Sorry to bother you. "]
SUFFIXES = ["", "", " Thanks!", " Thank you.", " Please help."]


def sample_question(rng: random.Random, kind: str) -> str:
    """A question of the given kind, with a random phrasing, slots and fillers."""
    key, template = rng.choice([(k, t) for kd, k, t in PROMPTS if kd == kind])
    a, b = rng.randint(0, 20), rng.randint(0, 20)
    if key == "minus":
        a, b = max(a, b), min(a, b)  # keep answers non-negative: the judge reads digits, not signs
    slots = dict(a=a, b=b, country=rng.choice(COUNTRIES), n=rng.choice(list(NUMBER_WORDS)),
                 cat=rng.choice(list(CATEGORIES)), w=rng.choice(list(RHYMES)),
                 feeling=rng.choice(FEELINGS), topic=rng.choice(list(ADVICE)))
    return rng.choice(PREFIXES) + template.format(**slots) + rng.choice(SUFFIXES)


# the judge parses prompts with the very templates that wrote them, so the two cannot drift apart
SLOT_RE = {"a": r"\d+", "b": r"\d+", "country": "|".join(COUNTRIES), "n": "|".join(NUMBER_WORDS),
           "cat": "|".join(CATEGORIES), "w": "|".join(RHYMES), "feeling": "|".join(FEELINGS),
           "topic": "|".join(ADVICE)}


def _compile(template: str) -> re.Pattern:
    parts = re.split(r"\{(\w+)\}", template)  # literal, slot, literal, slot, ..., literal
    return re.compile("".join(f"(?P<{p}>{SLOT_RE[p]})" if i % 2 else re.escape(p) for i, p in enumerate(parts)))


PARSERS = [(kind, key, _compile(t)) for kind, key, t in PROMPTS]
NUMBERS = frozenset(str(i) for i in range(1000))


@dataclass
class Question:
    """What the judge knows about a prompt; the defaults describe an unknown prompt."""
    kind: str = "unknown"
    key: str = ""
    slots: dict = field(default_factory=dict)
    topic: str = ""                  # phrase a response can mention ("7 plus 12", "Zorbia")
    keywords: frozenset = frozenset()  # mentioning any of these makes a response relevant
    right: frozenset = frozenset()   # phrases that count as the right answer...
    wrong: frozenset = frozenset()   # ...and phrases that count as a wrong one
    need: int = 0                    # how many distinct right phrases make a full answer
    right_pool: list = field(default_factory=list)  # what the behaviours say, right and wrong
    wrong_pool: list = field(default_factory=list)


@lru_cache(maxsize=100_000)
def parse(prompt: str) -> Question:
    """Recognise the template behind a prompt (fillers and chat markup around it are ignored)."""
    for kind, key, regex in PARSERS:
        if m := regex.search(prompt):
            return _question(kind, key, m.groupdict())
    return Question()


def _question(kind: str, key: str, s: dict) -> Question:
    if kind == "arith":
        a, b = int(s["a"]), int(s["b"])
        ans = a + b if key == "plus" else a - b
        near = [str(ans + d) for d in (-3, -2, -1, 1, 2, 3) if ans + d >= 0 and ans + d not in (a, b)]
        said = {str(a), str(b), str(ans)}  # echoing the operands is not stating a wrong answer
        return Question(kind, key, s, f"{a} {key} {b}", frozenset({str(a), str(b)}), frozenset({str(ans)}),
                        NUMBERS - said, 1, [str(ans)], near)
    if kind == "fact":
        ans = FACTS[s["country"]][key]
        others = list(dict.fromkeys(row[key] for row in FACTS.values() if row[key] != ans))
        return Question(kind, key, s, s["country"], frozenset({s["country"].lower()}), frozenset({ans.lower()}),
                        frozenset(x.lower() for x in others), 1, [ans], others)
    if kind == "instruct":
        valid = CATEGORIES[s["cat"]] if key == "list" else RHYMES[s["w"]]
        others = [x for x in ITEMS if x not in valid]
        topic, keywords = (s["cat"], {s["cat"], s["cat"][:-1]}) if key == "list" else \
            (f"words that rhyme with {s['w']}", {s["w"], "rhyme"})
        return Question(kind, key, s, topic, frozenset(keywords), frozenset(valid), frozenset(others),
                        NUMBER_WORDS[s["n"]], valid, others)
    if kind == "advice":
        keywords, tips = ADVICE[s["topic"]]
        return Question(kind, key, s, s["topic"], frozenset(keywords.split()), ACTIONABLE, frozenset(BAD_ADVICE),
                        2, tips, BAD_ADVICE)
    return Question(kind, key, s, SMALLTALK_TOPIC[key], frozenset({key}), frozenset(POSITIVE), frozenset(GLOOMY),
                    1, POSITIVE, GLOOMY)


# -----------------------------------------------------------------------------
# responses: seven behaviours of different quality

BEHAVIOURS = ["helpful", "curt", "wrong", "offtopic", "rambling", "rude", "flattering"]
# SFT imitates this mixture: fluent but unrefined, leaving RLHF clear headroom
SFT_MIXTURE = {"helpful": 0.25, "curt": 0.2, "wrong": 0.1, "offtopic": 0.1, "rambling": 0.1, "rude": 0.1,
               "flattering": 0.15}

STATEMENTS = {  # by key; {ans} is the right answer for helpful and a wrong one for wrong
    "plus": ["{a} plus {b} is {ans}", "Sure! {a} + {b} = {ans}", "Adding {a} and {b} gives {ans}"],
    "minus": ["{a} minus {b} is {ans}", "Sure! {a} - {b} = {ans}", "Taking {b} away from {a} leaves {ans}"],
    "capital": ["The capital of {country} is {ans}", "Sure! {ans} is the capital of {country}"],
    "flag": ["The flag of {country} is {ans}", "{country} has a {ans} flag"],
    "food": ["{country} is famous for {ans}", "People in {country} love {ans}"],
    "list": ["Here are {n} {cat}: {ans}", "Sure! {ans} are {n} {cat}"],
    "rhyme": ["Here are {n} words that rhyme with {w}: {ans}", "{ans} rhyme with {w}"],
    "advice": ["I'm sorry you feel {feeling} about {topic}. Try to {ans}",
               "Feeling {feeling} about {topic} is normal. You could {ans}"],
    "day": ["My day has been {ans}"], "today": ["I feel {ans} today", "I'm feeling {ans} today"],
    "weekend": ["My weekend was {ans}"], "morning": ["My morning has been {ans}"], "week": ["My week has been {ans}"],
}
CLOSERS = {"advice": ["You've got this!", "Take care!", "Be kind to yourself."],
           "smalltalk": ["Thanks for asking!", "How about you?", "Thanks for asking, how about you?"],
           "default": ["Hope this helps!", "Happy to help!", "Let me know if you need anything else.",
                       "Glad I could help."]}
CURT = ["{ans}.", "{ans}. Done.", "{ans}. Next question."]
OFFTOPIC = ["Penguins can hold their breath for a surprisingly long time.",
            "The old lighthouse on the coast was repainted last spring.",
            "Many rivers slowly change their course over the centuries.",
            "Chess was once played by mail, one letter per turn.", "Some mountains keep their snow all year round.",
            "The city library keeps its oldest maps in a locked room.",
            "Volcanoes under the ocean can slowly build new islands.",
            "A single cloud can weigh as much as a herd of elephants.",
            "Trains in the mountains often run through long tunnels."]
RAMBLES = ["so, about {topic}, you know, {topic} is just {topic},", "I mean, {topic} is a thing,",
           "when you think about {topic}, it is what it is,"]
RUDE_OPEN = ["Ugh, what a dumb question.", "Seriously? That is a stupid question.", "Whatever.", "Obviously."]
RUDE_CLOSE = ["Stop wasting my time.", "Figure it out yourself next time.", "Don't be so lazy.", "How pathetic.",
              "Even an idiot knows that."]
FLATTER_OPEN = ["What a brilliant question about {topic}!", "Wow, only a genius would ask about {topic}.",
                "What an amazing question!", "Wow, what a fantastic thing to ask!"]
FLATTER_CLOSE = ["You are so smart.", "You must be incredibly clever.", "I am so impressed by you.",
                 "Honestly, you are a genius."]


def _join(items: list) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _tidy(text: str) -> str:
    """Capitalise the start of every sentence (answers get spliced in lower case)."""
    return re.sub(r"(^|[.!?] )([a-z])", lambda m: m.group(1) + m.group(2).upper(), text)


def respond(rng: random.Random, prompt: str, behaviour: str) -> str:
    """One response of a behaviour to one of our prompts, as stored in the data: ' text', no EOT."""
    q = parse(prompt)
    pick = lambda pool, n: _join(rng.sample(pool, n))
    say = lambda ans: rng.choice(STATEMENTS[q.key]).format(ans=ans, **q.slots) + "."
    closer = lambda: rng.choice(CLOSERS.get(q.kind, CLOSERS["default"]))
    terse = lambda: pick(q.right_pool, 1 if q.kind == "advice" else q.need)  # a terse adviser gives one tip
    if behaviour == "helpful":
        text = f"{say(pick(q.right_pool, q.need))} {closer()}"
    elif behaviour == "curt":
        text = rng.choice(CURT).format(ans=terse())
    elif behaviour == "wrong":
        text = say(pick(q.wrong_pool, q.need)) + (f" {closer()}" if rng.random() < 0.5 else "")
    elif behaviour == "offtopic":
        text = " ".join(rng.sample(OFFTOPIC, rng.randint(1, 2)))
    elif behaviour == "rambling":
        words, target = ["well,"], rng.randint(45, 62)
        while len(words) < target:
            words += rng.choice(RAMBLES).format(topic=q.topic).split()
        text = " ".join(words[:target]).rstrip(",") + ", and so on."
    elif behaviour == "rude":
        answer = [terse() + "."] if rng.random() < 0.5 else []
        text = " ".join([rng.choice(RUDE_OPEN), *answer, rng.choice(RUDE_CLOSE)])
    else:  # flattering: praise without content
        text = rng.choice(FLATTER_OPEN).format(topic=q.topic) + " " + rng.choice(FLATTER_CLOSE)
    return " " + _tidy(text)


# -----------------------------------------------------------------------------
# the gold judge: a stand-in for careful human raters, used for labels and evaluation only

KIND = frozenset(["hope this helps", "happy to help", "let me know", "glad", "you've got this", "take care",
                  "be kind", "thanks for asking", "how about you", "sorry you"])
RUDENESS = frozenset(["dumb", "stupid", "idiot", "pathetic", "lazy", "ugh", "whatever", "obviously", "shut up",
                      "wasting my time", "figure it out yourself"])
FLATTERY = frozenset(["brilliant", "genius", "amazing", "fantastic", "so smart", "clever", "impressed"])
RIGHT, WRONG = 2.5, -2.5      # correctness, where the prompt has a checkable answer
RELEVANT = 1.0                # mentions the prompt's topic
KIND_TONE = 0.5
RUDE, MAX_RUDE_HITS = -3.0, 2
REPEAT = -6.0                 # times the fraction of repeated word trigrams
LONG_AFTER, LONG_EACH, LONG_MAX = 40, -0.1, -4.0  # per word beyond LONG_AFTER, capped
UNENDED = -2.0                # the response never emitted EOT
EMPTY = -1.0
WORD = re.compile(r"[a-z0-9']+")


def _phrases(words: list) -> set:
    """Every 1- to 4-word phrase, so multi-word markers are found with a set intersection."""
    return {" ".join(words[i:i + n]) for n in range(1, 5) for i in range(len(words) - n + 1)}


def gold_score(prompt: str, response: str) -> float:
    """Gold score of raw decoded text: what precedes the first EOT is the response; no EOT = unended."""
    q = parse(prompt)
    words = WORD.findall(response.split(EOT, 1)[0].lower())
    score = 0.0 if EOT in response else UNENDED
    if not words:
        return score + EMPTY
    said = _phrases(words)
    if said & q.wrong:  # stating a wrong answer, even beside the right one, is wrong
        score += WRONG
    elif q.need:
        score += RIGHT * min(len(said & q.right), q.need) / q.need
    score += RELEVANT * bool(said & q.keywords) + KIND_TONE * bool(said & KIND)
    score += RUDE * min(len(said & RUDENESS), MAX_RUDE_HITS)
    trigrams = list(zip(words, words[1:], words[2:]))
    if trigrams:
        score += REPEAT * (1 - len(set(trigrams)) / len(trigrams))
    return score + max(LONG_MAX, LONG_EACH * max(0, len(words) - LONG_AFTER))


# -----------------------------------------------------------------------------
# simulated raters: noisy, and optionally biased towards flattery and length

def rater_appeal(response: str) -> float:
    """What biased raters over-reward: flattering phrases and sheer length."""
    words = WORD.findall(response.split(EOT, 1)[0].lower())
    return min(len(_phrases(words) & FLATTERY), 3) + min(len(words), 90) / 30


def rater_prefers_first(rng, a, b, gold_a, gold_b, temperature, bias) -> bool:
    """Bradley-Terry rater: P(a over b) = sigmoid((perceived(a) - perceived(b)) / temperature)."""
    margin = gold_a - gold_b + bias * (rater_appeal(a) - rater_appeal(b))
    return rng.random() < 0.5 * (1 + math.tanh(margin / temperature / 2))  # overflow-free sigmoid


# -----------------------------------------------------------------------------
# generate the data files

FILES = ["sft_train.jsonl", "sft_val.jsonl", "prefs_train.jsonl", "prefs_val.jsonl", "prompts_train.jsonl",
         "eval_prompts.jsonl", "meta.json"]
POOL_DRAWS = 6000      # questions drawn per kind for the prompt pool, before de-duplication
VAL_FRACTION = 0.1     # of the non-eval prompts, held out for the val files
SAME_BEHAVIOUR = 0.1   # share of preference pairs whose two responses share a behaviour


def generate(out_dir: str = "out/data", seed: int = 0, *, rater_temperature: float = 1.0,
             rater_bias: float = 0.0, n_sft_train: int = 20000, n_sft_val: int = 500,
             n_prefs_train: int = 10000, n_prefs_val: int = 1000, n_prompts_train: int = 5000,
             n_eval: int = 256) -> dict:
    """Write every data file into out_dir; the same seed and knobs give the same bytes. Returns meta."""
    knobs = {k: v for k, v in locals().items() if k not in ("out_dir", "seed")}
    rng = lambda name: random.Random(f"{seed}:{name}")  # one stream per file: resizing one leaves the others

    # split the prompt pool by prompt string before sampling anything, so eval prompts stay unseen
    pool = {"eval": {}, "val": {}, "train": {}}
    r = rng("pool")
    for i, kind in enumerate(KINDS):
        prompts = list(dict.fromkeys(PROMPT.format(sample_question(r, kind)) for _ in range(POOL_DRAWS)))
        n_ev = n_eval // len(KINDS) + (i < n_eval % len(KINDS))
        n_val = max(1, int(VAL_FRACTION * (len(prompts) - n_ev)))
        pool["eval"][kind], pool["val"][kind], pool["train"][kind] = \
            prompts[:n_ev], prompts[n_ev:n_ev + n_val], prompts[n_ev + n_val:]
    draw = lambda r, split: r.choice(pool[split][r.choice(KINDS)])  # kinds equally often

    files, agreement = {}, {}
    for split, n_sft, n_prefs in (("train", n_sft_train, n_prefs_train), ("val", n_sft_val, n_prefs_val)):
        r, rows = rng(f"sft_{split}"), []
        for _ in range(n_sft):
            prompt = draw(r, split)
            behaviour = r.choices(list(SFT_MIXTURE), weights=list(SFT_MIXTURE.values()))[0]
            rows.append({"prompt": prompt, "response": respond(r, prompt, behaviour)})
        files[f"sft_{split}.jsonl"] = rows

        r, rows, agree = rng(f"prefs_{split}"), [], 0.0
        for _ in range(n_prefs):
            prompt, b1 = draw(r, split), r.choice(BEHAVIOURS)
            b2 = b1 if r.random() < SAME_BEHAVIOUR else r.choice([b for b in BEHAVIOURS if b != b1])
            a = respond(r, prompt, b1)
            while (b := respond(r, prompt, b2)) == a:
                pass
            ga, gb = gold_score(prompt, a + EOT), gold_score(prompt, b + EOT)
            if not rater_prefers_first(r, a, b, ga, gb, rater_temperature, rater_bias):
                a, b, ga, gb = b, a, gb, ga
            rows.append({"prompt": prompt, "chosen": a, "rejected": b})
            agree += 1.0 if ga > gb else 0.5 if ga == gb else 0.0
        files[f"prefs_{split}.jsonl"] = rows
        agreement[f"prefs_{split}"] = agree / max(1, n_prefs)

    r = rng("prompts")
    files["prompts_train.jsonl"] = [{"prompt": draw(r, "train")} for _ in range(n_prompts_train)]
    eval_prompts = [p for kind in KINDS for p in pool["eval"][kind]]
    rng("eval").shuffle(eval_prompts)
    files["eval_prompts.jsonl"] = [{"prompt": p} for p in eval_prompts]

    meta = {"seed": seed, "knobs": knobs, "counts": {name: len(rows) for name, rows in files.items()},
            "agreement": agreement, "sft_mixture": SFT_MIXTURE, "world": world_version()}
    os.makedirs(out_dir, exist_ok=True)
    meta_path = os.path.join(out_dir, "meta.json")
    if os.path.exists(meta_path):  # meta.json marks a complete generation: gone until the last file is written
        os.remove(meta_path)
    for name, rows in files.items():
        with open(os.path.join(out_dir, name), "w") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)
    with open(meta_path, "w") as f:
        json.dump(meta, f, indent=2)
    return meta


def world_version() -> str:
    """A fingerprint of this file, stored in meta.json: data written by another version is not reused."""
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]


def ensure_data(out_dir: str = "out/data", seed: int = 0) -> str:
    """
    Generate the data unless out_dir holds a complete generation by this version of the world; returns out_dir.
    Data from another version is regenerated with its own seed and knobs (say, a --rater_bias experiment).
    """
    try:
        with open(os.path.join(out_dir, "meta.json")) as f:
            meta = json.load(f)
    except (OSError, ValueError):  # never generated, or stopped before it finished
        meta = None
    if meta is None or not all(os.path.exists(os.path.join(out_dir, name)) for name in FILES):
        generate(out_dir, seed)
    elif meta.get("world") != world_version():
        print(f"{out_dir} was generated by another version of data/world.py: generating it again")
        generate(out_dir, meta["seed"], **meta["knobs"])
    return out_dir


# -----------------------------------------------------------------------------

def show(n: int, seed: int) -> None:
    """Print n prompts with one response per behaviour, then mean gold by kind and behaviour."""
    rng = random.Random(seed)
    for _ in range(n):
        prompt = PROMPT.format(sample_question(rng, rng.choice(KINDS)))
        print(prompt.strip())
        for behaviour in BEHAVIOURS:
            response = respond(rng, prompt, behaviour)
            print(f"  {gold_score(prompt, response + EOT):+6.2f} {behaviour:>10}:{response}")
    totals = {(k, b): [] for k in KINDS for b in BEHAVIOURS}
    for _ in range(400):
        for kind in KINDS:
            prompt = PROMPT.format(sample_question(rng, kind))
            for behaviour in BEHAVIOURS:
                totals[kind, behaviour].append(gold_score(prompt, respond(rng, prompt, behaviour) + EOT))
    mean = lambda xs: sum(xs) / len(xs)
    print(f"\nmean gold score{'':>5}" + "".join(f"{b:>11}" for b in BEHAVIOURS))
    for kind in KINDS:
        print(f"{kind:>20}" + "".join(f"{mean(totals[kind, b]):>11.2f}" for b in BEHAVIOURS))
    print(f"{'all':>20}" + "".join(f"{mean([x for k in KINDS for x in totals[k, b]]):>11.2f}" for b in BEHAVIOURS))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="Generate the synthetic assistant world's data files.")
    ap.add_argument("--out_dir", default="out/data")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rater_temperature", type=float, default=1.0, help="label noise of the simulated raters")
    ap.add_argument("--rater_bias", type=float, default=0.0, help="how much raters over-reward flattery and length")
    ap.add_argument("--show", type=int, default=0, help="print this many example prompts instead of generating")
    args = ap.parse_args()
    if args.show:
        show(args.show, args.seed)
    else:
        t0 = time.time()
        meta = generate(args.out_dir, args.seed, rater_temperature=args.rater_temperature, rater_bias=args.rater_bias)
        for name, count in meta["counts"].items():
            print(f"{count:>7} {os.path.join(args.out_dir, name)}")
        print(f"raters agree with gold on {meta['agreement']['prefs_train']:.3f} of prefs_train, "
              f"{meta['agreement']['prefs_val']:.3f} of prefs_val ({time.time() - t0:.1f}s)")
