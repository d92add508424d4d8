"""
The sharp edges a forker trips on, each found by trying it: what the command line builds from a config, what a
stage refuses, how a user's mistake is reported, and which module may import which.
"""
import ast
import json
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest
import torch

import common
import ppo
from common import parse_config, save_checkpoint
from model import GPT, GPTConfig, RewardModel, token_logprobs

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Forked:
    tag: str = "run#1"  # a default with a '#' in it (help: the run's tag)
    clip: float | None = None  # an optional number; none means off
    steps: int = 3  # an ordinary field after them


def test_optional_fields_and_defaults_with_a_hash_make_flags(capsys):
    assert common.field_docs(Forked) == {"tag": "a default with a '#' in it (help: the run's tag)",
                                         "clip": "an optional number; none means off", "steps": "an ordinary field after them"}
    assert parse_config(Forked, [])[0] == Forked()
    cfg, given = parse_config(Forked, ["--clip", "0.5", "--tag", "x#y"])
    assert (cfg.clip, cfg.tag, given) == (0.5, "x#y", {"clip", "tag"})
    assert parse_config(Forked, ["--clip", "none"])[0].clip is None
    with pytest.raises(SystemExit):
        parse_config(Forked, ["--clip", "half"])
    assert "invalid float value: 'half'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_config(Forked, ["--help"])
    assert "the run's tag) (default: 'run#1')" in " ".join(capsys.readouterr().out.split())


def test_a_field_of_a_type_the_command_line_cannot_read_is_named():
    @dataclass
    class Listed:
        sizes: list = None  # a list

    with pytest.raises(TypeError, match="Listed.sizes: the command line reads bool, int, float, str, tuple"):
        parse_config(Listed, [])


def test_log_probs_at_temperature_zero_are_refused():
    with pytest.raises(ValueError, match="temperature above 0"):
        token_logprobs(torch.zeros(2, 5), torch.tensor([1, 2]), temperature=0)


@pytest.fixture
def checkpoints(tmp_path):
    """A tiny policy and reward model in the real formats, and prompt files."""
    from tokenizer import load_tokenizer, save_bpe, train_bpe
    prompts = [f"\n\nHuman: What is {a} plus {b}?\n\nAssistant:" for a in range(4) for b in range(4)]
    for name in ("prompts", "eval"):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    tok = str(tmp_path / "tok.tiktoken")
    save_bpe(train_bpe([p + " 3 plus 4 is 7." for p in prompts], 280), tok)
    config = GPTConfig(block_size=32, vocab_size=load_tokenizer(tok).n_vocab, n_layer=1, n_head=2, n_embd=16)
    shared = {"model_config": asdict(config), "tokenizer": tok}
    save_checkpoint(tmp_path / "sft.pt", {"kind": "policy", "model": GPT(config).state_dict(), **shared})
    save_checkpoint(tmp_path / "rm.pt", {"kind": "reward_model", "model": RewardModel(config).state_dict(),
                                         **shared})
    return tmp_path


def ppo_args(d, *extra):
    return ["--sft_ckpt", str(d / "sft.pt"), "--reward_ckpt", str(d / "rm.pt"), "--prompts_file", str(d / "prompts.jsonl"),
            "--eval_prompts", str(d / "eval.jsonl"), "--out_dir", str(d / "ppo"), "--iterations", "1",
            "--rollout_batch", "4", "--minibatch", "2", "--max_new_tokens", "4", "--n_eval", "2", *extra]


@pytest.mark.parametrize("flags,message", [
    (["--temperature", "0"], "--temperature must be above 0, not 0.0"),
    (["--missing_eot_penalty", "-1"], "give 0 or more, not -1.0, which would reward never ending"),
    (["--rollout_batch", "6", "--minibatch", "4"], "--rollout_batch 6 must be a multiple of --minibatch 4"),
])
def test_ppo_refuses_what_it_would_silently_do_otherwise(checkpoints, flags, message):
    with pytest.raises(SystemExit, match=message):
        ppo.main(ppo_args(checkpoints, *flags))


def test_a_reply_that_never_ends_is_never_rewarded_for_it():
    """The penalty is a cost: whatever its sign meant before, a longer unended reply cannot score above its ended twin."""
    scores = ppo.score_responses(lambda ids, mask: torch.zeros(len(ids)), torch.ones(2, 1, dtype=torch.long),
                                 torch.ones(2, 1, dtype=torch.long), torch.tensor([[3, 0], [3, 3]]),
                                 torch.ones(2, 2, dtype=torch.long), 0, ppo.Config.missing_eot_penalty)
    assert scores[1] < scores[0] and ppo.Config.missing_eot_penalty > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_says_what_to_do_instead():
    with pytest.raises(SystemExit, match="--device cuda, but this torch sees no CUDA GPU .*: give --device cpu, or auto"):
        common.setup_runtime("cuda")


def run(script, *args, cwd):
    return subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def test_a_users_mistake_is_one_line_without_a_traceback(checkpoints):
    d = checkpoints
    (d / "bad.jsonl").write_text('{"prompt": "a"}\n{"prompt": 3}\n')
    cases = [(run("ppo.py", *ppo_args(d, "--sft_ckpt", d / "missing.pt"), cwd=d), f"no checkpoint at {d / 'missing.pt'}"),
             (run("ppo.py", *ppo_args(d, "--reward_ckpt", d / "sft.pt"), cwd=d),
              f"{d / 'sft.pt'} is a policy checkpoint (written by sft.py or dpo.py); --reward_ckpt needs a reward_model"),
             (run("ppo.py", *ppo_args(d, "--prompts_file", d / "bad.jsonl"), cwd=d),
              f"{d / 'bad.jsonl'}:2: field 'prompt' must be a string, not int"),
             (run("sft.py", "--train_file", d / "nothing.jsonl", "--val_file", d / "eval.jsonl", "--eval_prompts",
                  d / "eval.jsonl", "--tokenizer", d / "tok.tiktoken", cwd=d), f"no file {d / 'nothing.jsonl'}"),
             (run("dpo.py", "--loss_type", "kto", cwd=d), "--loss_type must be one of sigmoid, ipo, hinge, not 'kto'"),
             (run("sft.py", "--dtype", "half", cwd=d), "--dtype must be auto, float32, bfloat16 or float16, not 'half'")]
    for out, message in cases:
        assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr
        assert out.stderr.strip().splitlines()[-1].startswith(message), out.stderr


OURS = {p.stem for p in ROOT.glob("*.py")} | {"data", "experiments"}


def imports(path):
    """The top-level modules a file imports (data.world counts as data.world, and as data)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return names | {n.split(".")[0] for n in names}


def test_layers_only_look_down():
    """model.py and tokenizer.py import nothing of ours; the plumbing knows no task; the task needs no plumbing."""
    for name in ("model.py", "tokenizer.py"):
        assert not imports(ROOT / name) & OURS, name
    for name in ("common.py", "evaluate.py"):
        assert "data" not in imports(ROOT / name), name
    assert not imports(ROOT / "data" / "world.py") & (OURS - {"tokenizer"})


def test_requirements_name_every_package_the_code_imports():
    required = {line.split(">")[0].split("=")[0].strip().lower()
                for line in (ROOT / "requirements.txt").read_text().splitlines() if line.strip()}
    optional = {"matplotlib", "transformers"}  # imported where present, for plot.py's figures and bench.py's comparison
    files = [*ROOT.glob("*.py"), *ROOT.glob("data/*.py"), *ROOT.glob("experiments/*.py")]
    third_party = {n for f in files for n in imports(f) if "." not in n} - OURS - set(sys.stdlib_module_names)
    assert third_party - optional <= required, third_party - optional - required
