"""The recipes are shell scripts that call the stages with flags: each flag must be one the stage knows."""

import importlib
import re
import shlex
from pathlib import Path

import pytest

from common import parse_config

RECIPES = sorted((Path(__file__).resolve().parent.parent / "recipes").glob("*.sh"))
STAGES = ("sft", "label", "reward", "ppo", "dpo", "report")


def stage_calls(script):
    """(stage, its arguments) for every stage a recipe runs, its variables replaced by placeholders."""
    text = script.read_text().replace("\\\n", " ")
    calls = []
    for line in text.splitlines():
        line = line.split("  #")[0]
        line = re.sub(r'"\$\{(\w+)\[@\]\}"', lambda m: re.search(rf"^{m[1]}=\((.*?)\)", text, re.M)[1], line)
        line = re.sub(r"\$(\w+)", "x", line)
        words = shlex.split(line) if line.strip() and not line.lstrip().startswith("#") else []
        for i, word in enumerate(words):
            if word.removesuffix(".py") in STAGES and word.endswith(".py"):
                calls.append((word.removesuffix(".py"), words[i + 1:]))
    return calls


@pytest.mark.parametrize("script", RECIPES, ids=lambda p: p.name)
def test_every_flag_of_a_recipe_is_one_the_stage_knows(script):
    calls = stage_calls(script)
    assert [s for s, _ in calls if s != "label"] == ["sft", "reward", "ppo", "dpo", "report"]  # the whole chain
    for stage, args in calls:
        module = importlib.import_module(stage)
        parse_config(module.Config, args)  # argparse exits on a flag it does not know
