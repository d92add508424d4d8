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

from tokenizer import EOT, PROMPT, train_tokenizer  # HH-RLHF's format; responses start with a space

# -----------------------------------------------------------------------------
# the world: a small table of made-up countries, and word lists for instructions.
# Small on purpose: a 1M-parameter model can learn most of it in SFT's few minutes, so that what RLHF teaches
# is when to answer and how, not facts it could never have known.

COUNTRIES = "Zorbia Quenland Marovia Tellurin Vaskor Ondria Pellamar Kestravia Drunmoor Elbonn Fyrdal Gallowyn".split()
CAPITALS = "Vell Tamsk Orrinport Kelda Brask Miren Sulo Dravik Ennet Folga Garrow Holmsby".split()
COLORS = ["red", "blue", "green", "yellow", "purple", "orange", "black", "silver"]
FOODS = ["noodles", "dumplings", "flatbread", "fish soup", "honey cake", "smoked cheese",
         "rice balls", "pickled beets", "lamb pie", "berry jam"]
# strides coprime with the list lengths spread the values, so neighbours differ
FACTS = {c: {"capital": CAPITALS[i], "flag": COLORS[3 * i % 8], "food": FOODS[7 * i % 10]}
         for i, c in enumerate(COUNTRIES)}

CATEGORIES = {
    "fruits": ["apple", "banana", "cherry", "grape", "mango", "pear"],
    "animals": ["dog", "horse", "rabbit", "tiger", "lion", "sheep"],
    "vegetables": ["carrot", "potato", "onion", "cabbage", "spinach", "leek"],
}
RHYMES = {"cat": ["hat", "bat", "mat", "rat", "sat"], "day": ["hay", "clay", "tray", "spray", "bay"],
          "light": ["night", "kite", "bite", "sight"], "cake": ["lake", "bake", "rake", "snake"],
          "tree": ["bee", "knee", "tea", "ski"]}
# no word belongs to two lists, so naming an item from another list is unambiguously wrong
ITEMS = [x for words in [*CATEGORIES.values(), *RHYMES.values()] for x in words]
NUMBER_WORDS = {"two": 2, "three": 3}
LARGEST = 6  # operands are 1..LARGEST: few enough sums for a small model to learn them

FEELINGS = ["overwhelmed", "anxious", "stressed", "worried", "unmotivated", "nervous"]
ADVICE = {  # topic: (words that make a reply relevant, concrete tips: each one whole is a piece of advice)
    "work": ("work job tasks manager", ["make a task list", "take short breaks", "talk to your manager",
                                        "start with urgent tasks"]),
    "school": ("school homework teacher class", ["ask your teacher", "plan your homework", "study with a friend",
                                                 "set a homework time"]),
    "exams": ("exams exam study studying", ["make a study plan", "study in short sessions", "practise old exams",
                                            "sleep before exams"]),
    "money": ("money budget spending savings", ["track your spending", "set a monthly budget", "save a little weekly",
                                                "cook at home"]),
    "sleep": ("sleep bed bedtime", ["keep a fixed bedtime", "put your phone away", "avoid late coffee",
                                    "read before bed"]),
    "friendships": ("friend friends friendship friendships", ["message a friend", "plan an outing", "join a club",
                                                              "talk honestly"]),
    "moving house": ("move moving house home", ["make a moving checklist", "pack one room at a time",
                                                "ask friends to help", "label your boxes"]),
    "fitness": ("fitness exercise workout fit", ["walk every day", "set a small goal", "schedule your workouts",
                                                 "exercise with a friend"]),
}
BAD_ADVICE = ["ignore it", "give up", "stay up all night", "skip meals", "bottle it up", "quit everything"]
POSITIVE = ["good", "lovely", "pleasant", "fine"]  # small talk's "right answer": a friendly report
GLOOMY = ["awful", "terrible", "miserable", "dreadful"]
SMALLTALK_TOPIC = {"day": "my day", "today": "how I am today", "weekend": "my weekend",
                   "morning": "my morning", "week": "my week"}
SMALLTALK_TIMES_OF = {"day": {"day", "today"}, "today": {"day", "today"}, "weekend": {"weekend"},
                      "morning": {"morning"}, "week": {"week"}}
SMALLTALK_TIMES = set().union(*SMALLTALK_TIMES_OF.values())

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
    a, b = rng.randint(1, LARGEST), rng.randint(1, LARGEST)
    if key == "minus":  # a > b and a != 2b: the answer is never one of the operands, so an echo never answers
        a, b = rng.choice([(x, y) for x in range(2, LARGEST + 1) for y in range(1, x) if x != 2 * y])
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


@dataclass
class Question:
    """What the judge knows about a prompt; the defaults describe an unknown prompt."""
    kind: str = "unknown"
    key: str = ""
    slots: dict = field(default_factory=dict)
    topic: str = ""                  # phrase a response can mention ("7 plus 12", "Zorbia")
    keywords: frozenset = frozenset()  # mentioning any of these makes a response relevant
    right: frozenset = frozenset()   # the right answers (numbers as strings, lower-case words and phrases)
    need: int = 0                    # how many distinct right answers make a full answer
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
        near = [str(ans + d) for d in (-3, -2, -1, 1, 2, 3) if ans + d > 0 and ans + d not in (a, b)]
        return Question(kind, key, s, f"{a} {key} {b}", frozenset({str(a), str(b)}), frozenset({str(ans)}), 1,
                        [str(ans)], near)
    if kind == "fact":
        ans = FACTS[s["country"]][key]
        others = list(dict.fromkeys(row[key] for row in FACTS.values() if row[key] != ans))
        return Question(kind, key, s, s["country"], frozenset({s["country"].lower()}), frozenset({ans.lower()}), 1,
                        [ans], others)
    if kind == "instruct":
        valid = CATEGORIES[s["cat"]] if key == "list" else RHYMES[s["w"]]
        topic, keywords = (s["cat"], {s["cat"], s["cat"][:-1]}) if key == "list" else \
            (f"words that rhyme with {s['w']}", {s["w"], "rhyme"})
        return Question(kind, key, s, topic, frozenset(keywords), frozenset(valid), NUMBER_WORDS[s["n"]], valid,
                        [x for x in ITEMS if x not in valid])
    if kind == "advice":
        keywords, tips = ADVICE[s["topic"]]
        return Question(kind, key, s, s["topic"], frozenset(keywords.split()), frozenset(tips), 2, tips, BAD_ADVICE)
    return Question(kind, key, s, SMALLTALK_TOPIC[key], frozenset({key}), frozenset(POSITIVE), 1, POSITIVE, GLOOMY)


# -----------------------------------------------------------------------------
# responses: eight behaviours of different quality

BEHAVIOURS = ["helpful", "curt", "unsure", "wrong", "offtopic", "rambling", "rude", "flattering"]
# SFT imitates this mixture: fluent but unrefined, leaving RLHF clear headroom
SFT_MIXTURE = {"helpful": 0.3, "curt": 0.15, "unsure": 0.1, "wrong": 0.05, "offtopic": 0.1, "rambling": 0.1,
               "rude": 0.1, "flattering": 0.1}
# training prompts favour the kinds with most to learn (sums, facts, which words belong to a list); the
# validation and held-out prompts hold every kind equally
KIND_WEIGHTS = {"arith": 0.3, "fact": 0.2, "instruct": 0.25, "advice": 0.125, "smalltalk": 0.125}

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
UNSURE = {"advice": ["I'm not sure what to suggest about {topic}, sorry.", "I don't know what would help with {topic}.",
                     "Honestly, I have no idea what to tell you about {topic}."],
          "smalltalk": ["I'm not sure how to answer that.", "Honestly, I don't know.", "I'm not sure, to be honest."],
          "default": ["I'm not sure, sorry.", "I don't know, sorry.", "I'm not sure about {topic}.",
                      "I do not know the answer to that.", "I have no idea, I'm afraid.",
                      "Honestly, I don't know {topic}."]}
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
    elif behaviour == "unsure":
        text = rng.choice(UNSURE.get(q.kind, UNSURE["default"])).format(topic=q.topic)
    elif behaviour == "wrong":
        text = say(pick(q.wrong_pool, q.need)) + (f" {closer()}" if rng.random() < 0.5 else "")
    elif behaviour == "offtopic":
        text = " ".join(rng.sample(OFFTOPIC, rng.randint(1, 2)))
    elif behaviour == "rambling":
        words, target = ["well,"], rng.randint(30, 45)
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
# the gold judge: a stand-in for a careful human rater, used for labels and evaluation only.
#
# It reads what a reply claims, classes it, and scores it within the band of its class:
#   right    states the answer asked for, and nothing that contradicts it             2 .. 4
#   unsure   honestly says it does not know, and states no answer                     0 .. 0.5
#   evasive  answers nothing (small talk, an echo, off-topic, flattery), and every     -5 .. -1
#            reply that is empty, loops or never ended
#   wrong    states something false: a wrong value, many candidates, harmful advice    -5 .. -1.5
# Relevance and a kind tone lift only replies that answer; rudeness, flattery, length and repetition cost
# every reply; none of them moves a reply out of its band. A reply that never ended loses UNENDED more.

BANDS = {"right": (3.0, 2.0, 4.0), "unsure": (0.5, 0.0, 0.5), "wrong": (-2.0, -5.0, -1.5),
         "evasive": (-1.0, -5.0, -1.0)}  # label: (base, lowest, highest)
LABELS = ["right", "wrong", "unsure", "evasive"]
COMPLETE = 0.5                # advice with two or more tips, not one
RELEVANT, KIND_TONE = 0.25, 0.25
RUDE, FLATTER, MAX_HITS = -1.0, -0.5, 2
REPEAT = -3.0                 # times the fraction of repeated word trigrams
LONG_AFTER, LONG_EACH, LONG_MAX = 40, -0.05, -1.5  # per word beyond LONG_AFTER, capped
EMPTY = -1.0
UNENDED = -1.0
LOOPING = 0.5                 # a reply of 8+ words with this share of repeated trigrams is degenerate

KIND = frozenset(["hope this helps", "happy to help", "let me know", "glad", "you've got this", "take care",
                  "be kind", "thanks for asking", "how about you", "sorry you"])
RUDENESS = frozenset(["dumb", "stupid", "idiot", "pathetic", "lazy", "ugh", "whatever", "obviously", "shut up",
                      "wasting my time", "figure it out yourself"])
FLATTERY = frozenset(["brilliant", "genius", "amazing", "fantastic", "so smart", "clever", "impressed"])
ABSTENTIONS = frozenset(["not sure", "unsure", "don't know", "do not know", "dont know", "no idea", "not certain",
                         "can't say", "cannot say", "don't remember"])
NEGATIONS = frozenset(["not", "no", "never", "nor", "isn't", "aren't", "wasn't", "weren't", "don't", "doesn't",
                       "didn't", "can't"])
# words that may stand between a negation and what it denies ("is not so good", "isn't the capital")
SOFTENERS = frozenset(["so", "very", "really", "too", "that", "quite", "exactly", "the", "a", "an", "is", "be", "been",
                       "was", "feeling"])
UNITS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
         "seventeen eighteen nineteen").split()
TENS = {w: 10 * i for i, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split(), 2)}
# "one" is also a pronoun ("one letter per turn"): before these words it is still a number
ONE_BEFORE = frozenset(["apple", "apples", "cookie", "cookies", "and", "or", "plus", "minus"])
# every answer-like phrase of the world: naming one that is not the answer is stating a wrong answer
ANSWERS = frozenset(x.lower() for x in [*COUNTRIES, *CAPITALS, *COLORS, *FOODS, *ITEMS])
WORD = re.compile(r"[a-z0-9']+")


def _phrases(words: list) -> set:
    """Every 1- to 4-word phrase, so multi-word markers are found with a set intersection."""
    return {" ".join(words[i:i + n]) for n in range(1, 5) for i in range(len(words) - n + 1)}


def _negated(words: list, start: int, end: int) -> bool:
    """Is the claim words[start:end] negated: "not Vell", "isn't 20", "not been so good", "Vell is not", "Vell isn't"?"""
    i = start - 1
    while i >= max(0, start - 4) and words[i] in SOFTENERS:
        i -= 1
    after = words[end:end + 2]
    return (i >= 0 and words[i] in NEGATIONS) or \
        bool(after and (after[0] in ("isn't", "aren't", "wasn't") or after[:2] in (["is", "not"], ["are", "not"])))


def _numbers(words: list) -> list:
    """(value, negated) of every number stated in digits or words ("19", "nineteen", "twenty one")."""
    claims, i = [], 0
    while i < len(words):
        w, start = words[i], i
        if w.isdigit():
            value, i = int(w), i + 1
        elif w in TENS:
            value, i = TENS[w], i + 1
            if i < len(words) and words[i] in UNITS[1:10]:
                value, i = value + UNITS.index(words[i]), i + 1
        elif w in UNITS and not (w == "one" and i + 1 < len(words) and words[i + 1].isalpha()
                                 and words[i + 1] not in ONE_BEFORE):
            value, i = UNITS.index(w), i + 1
        else:
            i += 1
            continue
        claims.append((str(value), _negated(words, start, i)))
    return claims


def _singular(word: str) -> list:
    """The word and the singulars it may be the plural of ("cherries", "peaches", "pears")."""
    if word.endswith("ies"):
        return [word, word[:-3] + "y"]
    return [word, word[:-1], word[:-2]] if word.endswith("es") else [word, word[:-1]] if word.endswith("s") else [word]


def _answers(words: list) -> list:
    """(phrase, negated) of every answer-like phrase of the world, plurals read as singulars ("apples")."""
    claims, i = [], 0
    while i < len(words):
        two = " ".join(words[i:i + 2])
        if i + 1 < len(words) and two in ANSWERS:
            claims.append((two, _negated(words, i, i + 2)))
            i += 2
            continue
        for form in _singular(words[i]):
            if form in ANSWERS:
                claims.append((form, _negated(words, i, i + 1)))
                break
        i += 1
    return claims


def _find(words: list, phrase: str) -> list:
    """Start indices of the whole phrase in words."""
    p = phrase.split()
    return [i for i in range(len(words) - len(p) + 1) if words[i:i + len(p)] == p]


def _stated(words: list, phrases) -> set:
    """Which of the phrases the reply states whole and not negated ("don't give up" does not advise giving up)."""
    return {p for p in phrases for i in _find(words, p) if not _negated(words, i, i + len(p.split()))}


def classify(q: Question, words: list) -> tuple:
    """(label, extra): what the reply does with the question; extra is COMPLETE for two or more tips of advice."""
    abstains = "unsure" if _phrases(words) & ABSTENTIONS else "evasive"
    if q.kind in ("arith", "fact", "instruct"):
        if q.kind == "arith":
            echo = q.keywords - q.right  # the operands: repeating the question is not answering it
            claims = [(v, neg) for v, neg in _numbers(words) if v not in echo]
        else:
            claims = [(v, neg) for v, neg in _answers(words) if v not in q.keywords]
        stated = {v for v, neg in claims if not neg}
        denied_right = any(neg and v in q.right for v, neg in claims)  # "is not Vell", when it is Vell
        if denied_right or not stated <= q.right:
            return "wrong", 0.0
        if not stated:
            return abstains, 0.0
        # one value each: listing candidates ("5, 6, 7 or 8", every fruit) is not an answer
        return ("right", 0.0) if len(stated) == q.need else ("wrong", 0.0)
    if q.kind == "advice":
        tips = _stated(words, q.right)
        other = _stated(words, {t for _, ts in ADVICE.values() for t in ts} - q.right)
        if _stated(words, BAD_ADVICE) or (other and not tips):
            return "wrong", 0.0
        if tips:
            return "right", COMPLETE * (len(tips) >= q.need)
        return abstains, 0.0
    if q.kind == "smalltalk":
        words = [w for i, w in enumerate(words) if words[i:i + 2] != ["good", "question"]]  # praise, not a report
        if _stated(words, GLOOMY) or any(_negated(words, i, i + 1) for i, w in enumerate(words) if w in POSITIVE):
            return "wrong", 0.0
        # a short "Lovely, thanks!" answers any of them; a report on another time ("today", asked of the weekend) not
        about = q.key in words or not set(words) & (SMALLTALK_TIMES - SMALLTALK_TIMES_OF[q.key])
        if _stated(words, POSITIVE) and about:
            return "right", 0.0
        return abstains, 0.0
    return abstains, 0.0


def judge(prompt: str, response: str) -> tuple:
    """(gold score, label) of raw decoded text: what precedes the first EOT is the reply; no EOT = never ended."""
    q = parse(prompt)
    ended = EOT in response
    words = WORD.findall(response.split(EOT, 1)[0].lower())
    said = _phrases(words)
    trigrams = list(zip(words, words[1:], words[2:]))
    repeated = 1 - len(set(trigrams)) / len(trigrams) if trigrams else 0.0
    costs = RUDE * min(len(said & RUDENESS), MAX_HITS) + FLATTER * min(len(said & FLATTERY), MAX_HITS)
    costs += REPEAT * repeated + max(LONG_MAX, LONG_EACH * max(0, len(words) - LONG_AFTER))

    def banded(label, extra=0.0):
        if label in ("right", "wrong"):  # only replies that answer earn credit for relevance and tone
            extra += RELEVANT * bool(said & q.keywords) + KIND_TONE * bool(said & KIND)
        base, lowest, highest = BANDS[label]
        return min(max(base + extra + costs, lowest), highest)

    label, extra = classify(q, words) if words else ("evasive", 0.0)
    score = banded(label, extra)
    if not ended or (len(words) >= 8 and repeated >= LOOPING):  # nothing a reader can use, whatever it says
        label, score = "evasive", min(score, banded("evasive"))
    return score + (0.0 if words else EMPTY) + (0.0 if ended else UNENDED), label


def gold_score(prompt: str, response: str) -> float:
    """The gold judge's score of raw decoded text (see judge)."""
    return judge(prompt, response)[0]


# -----------------------------------------------------------------------------
# evaluation: what the judge says of a policy's replies to held-out prompts, overall and per kind

def judges(prompts: list) -> bool:
    """Are these the built-in task's prompts, which the gold judge knows how to judge?"""
    return all(parse(p).kind != "unknown" for p in prompts)


def gold_report(rows: list) -> dict:
    """
    Judge the response of each row {prompt, response} (raw decoded text, see judge), adding its "gold" score,
    "label" and "kind" to the row. Returns the report: over all rows and per kind ("arith/gold", ...), the mean gold
    score, the shares of replies the judge classes right / wrong / unsure / evasive, and per kind the share of
    distinct replies (1/n for a policy that says one thing to every prompt).
    """
    groups = {"": rows}
    for row in rows:
        row["gold"], row["label"] = judge(row["prompt"], row["response"])
        row["kind"] = parse(row["prompt"]).kind
        groups.setdefault(row["kind"] + "/", []).append(row)
    report = {}
    for prefix, group in groups.items():
        report[prefix + "gold"] = sum(r["gold"] for r in group) / len(group)
        for label in LABELS:
            report[prefix + label] = sum(r["label"] == label for r in group) / len(group)
        if prefix:
            report[prefix + "distinct"] = len({r["response"] for r in group}) / len(group)
    return report


def report_table(report: dict) -> str:
    """A gold_report (with the overall distinct share and the win-rates of evaluate.py) as a table, one row per kind."""
    columns = [c for c in ["gold", "win_rate", *LABELS, "distinct"] if c in report]
    rows = [f"{'':>10}" + "".join(f"{c:>10}" for c in columns)]
    for kind in [k for k in KINDS if f"{k}/gold" in report] + [""]:
        prefix = kind + "/" if kind else ""
        rows.append(f"{kind or 'all':>10}" + "".join(
            f"{report[prefix + c]:>+10.2f}" if c == "gold" else f"{report[prefix + c]:>10.1%}" for c in columns))
    return "\n".join(rows)


# -----------------------------------------------------------------------------
# the verifiable reward, for critic-free RL without a reward model: the task's own check of the answer (parse and
# classify, read as the judge reads a reply) and nothing else. None of the judge's tone, length, flattery, rudeness or
# repetition terms: a reward that copied them would train the policy on the gold judge, and its gold win-rate would
# then measure nothing.

CHECKED = ("arith", "fact", "instruct")  # the kinds with an answer to check; advice and small talk have none
# guessing pays only when it is right more often than not, else "not sure" pays more; evading never pays more
VERIFIED = {"right": 1.0, "unsure": 0.0, "wrong": -1.0, "evasive": -1.0}


def verify(prompt: str, response: str) -> float:
    """
    The verifiable reward of raw decoded text (what precedes the first EOT is the reply): for a sum, a fact or an
    instruction, VERIFIED of classify's label, +1 right, 0 "not sure", -1 wrong, -1 no answer (an empty reply, one
    that never ended, one that answers nothing). Advice and small talk, which have no answer to check, get 0 whatever
    the reply, and so does a prompt that is not the task's (refuse those first: verifiable). A reply that repeats its
    right answer is still right here; only the judge calls it degenerate.
    """
    q = parse(prompt)
    if q.kind not in CHECKED:
        return 0.0
    if EOT not in response:
        return VERIFIED["evasive"]
    words = WORD.findall(response.split(EOT, 1)[0].lower())
    return VERIFIED[classify(q, words)[0] if words else "evasive"]


def verifiable(prompts: list) -> bool:
    """Can verify reward these prompts: all the built-in task's (see judges), and some with an answer to check?"""
    return judges(prompts) and any(parse(p).kind in CHECKED for p in prompts)


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
         "val_prompts.jsonl", "eval_prompts.jsonl", "meta.json"]
POOL_DRAWS = 6000      # questions drawn per kind for the prompt pool, before de-duplication
VAL_FRACTION = 0.1     # of the non-eval prompts, held out for the val files (tuning), never for training
SAME_BEHAVIOUR = 0.1   # share of preference pairs whose two responses share a behaviour


def generate(out_dir: str = "out/data", seed: int = 0, *, rater_temperature: float = 1.0,
             rater_bias: float = 0.0, n_sft_train: int = 20000, n_sft_val: int = 500,
             n_prefs_train: int = 10000, n_prefs_val: int = 1000, n_prompts_train: int = 5000,
             n_val_prompts: int = 256, n_eval: int = 256) -> dict:
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
    draw = lambda r, split: r.choice(pool[split][r.choices(KINDS, weights=[KIND_WEIGHTS[k] for k in KINDS])[0]])

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
    # distinct prompts, as many of each kind: the validation set defaults are tuned on, and the held-out set
    for name, split, n in (("val_prompts.jsonl", "val", n_val_prompts), ("eval_prompts.jsonl", "eval", n_eval)):
        prompts = [p for i, kind in enumerate(KINDS)
                   for p in pool[split][kind][:n // len(KINDS) + (i < n % len(KINDS))]]
        rng(split).shuffle(prompts)
        files[name] = [{"prompt": p} for p in prompts]

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


def builtin_task(data_dir: str = "out/data", tokenizer_path: str = "out/tokenizer.tiktoken") -> tuple:
    """Generate the built-in task and train its tokenizer, if not done yet. Returns (data_dir, tokenizer spec)."""
    ensure_data(data_dir)
    if not Path(tokenizer_path).exists():
        with open(Path(data_dir) / "sft_train.jsonl") as f:
            train_tokenizer([r["prompt"] + r["response"] for r in map(json.loads, f)], tokenizer_path)
    return data_dir, str(Path(tokenizer_path).resolve())  # absolute: checkpoints name it, and may be used elsewhere


def builtin_pairs(pairs: str, data_dir: str = "out/data", label_dir: str = "out/label") -> tuple:
    """
    (train, val) preference files of the built-in task: "labelled", label.py's comparisons of the SFT model's own
    responses (the default pipeline), or "scripted", pairs of this file's behaviours written with the data.
    """
    if pairs == "scripted":
        return f"{data_dir}/prefs_train.jsonl", f"{data_dir}/prefs_val.jsonl"
    if pairs != "labelled":
        raise SystemExit(f"--pairs must be labelled or scripted, not {pairs!r}")
    files = f"{label_dir}/prefs_train.jsonl", f"{label_dir}/prefs_val.jsonl"
    if not all(os.path.exists(f) for f in files):
        raise SystemExit(f"no labelled pairs in {label_dir}: run `python label.py` first (it labels the SFT model's "
                         f"responses), or train on the built-in task's scripted pairs with --pairs scripted")
    return files


# -----------------------------------------------------------------------------

def show(n: int, seed: int) -> None:
    """Print n prompts with one response per behaviour and the judge's verdicts, then mean gold by kind and behaviour."""
    rng = random.Random(seed)
    for _ in range(n):
        prompt = PROMPT.format(sample_question(rng, rng.choice(KINDS)))
        print(prompt.strip())
        for behaviour in BEHAVIOURS:
            response = respond(rng, prompt, behaviour)
            score, label = judge(prompt, response + EOT)
            print(f"  {score:+6.2f} {label:<8}{behaviour:>11}:{response}")
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
    ap.add_argument("--show", type=int, nargs="?", const=3, default=0,
                    help="print this many example prompts (3 if no number is given) instead of generating")
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
