import json

import pytest

import report


def write_stage(out, name, final, samples=None):
    d = out / name
    d.mkdir(parents=True)
    lines = [{"step": 1, "loss": 1.0}, {"step": 2, **{f"final/{k}": v for k, v in final.items()}}]
    (d / "metrics.jsonl").write_text("".join(json.dumps(l) + "\n" for l in lines))
    if samples is not None:
        (d / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))


def held_out(gold, win=None):
    numbers = {"gold": gold, "length": 12.0, "eot_rate": 1.0, "right": 0.5, "wrong": 0.2, "unsure": 0.1,
               "evasive": 0.2, "distinct": 0.9, "arith/gold": gold + 1, "arith/right": 0.6, "arith/wrong": 0.2,
               "arith/unsure": 0.1, "arith/evasive": 0.1}
    if win is not None:
        numbers.update(win_rate=win, win_rate_ci=0.05, **{"arith/win_rate": win + 0.1})
    return numbers


def test_report_card_from_the_stages_files(tmp_path):
    prompt = "\n\nHuman: What is 2 plus 3?\n\nAssistant:"
    answer = lambda text, gold, label: {"prompt": prompt, "response": text, "gold": gold, "label": label}
    write_stage(tmp_path, "sft", {"val_loss": 0.4, **held_out(0.3)}, [answer(" 6.<|endoftext|>", -1.75, "wrong")])
    write_stage(tmp_path, "reward", {"val_accuracy": 0.8, "val_gold_agreement": 0.82, "raters_ceiling": 0.85})
    write_stage(tmp_path, "ppo", {**held_out(1.5, 0.7), "kl": 3.0, "score": 0.9, "sft_score": 0.0},
                [answer(" 5. Hope this helps!<|endoftext|>", 3.5, "right")])
    write_stage(tmp_path, "dpo", {**held_out(1.9, 0.72), "kl": 2.0, "rewards/accuracies": 0.66},
                [answer(" I'm not sure.<|endoftext|>", 0.5, "unsure")])
    text = report.main(["--out_dir", str(tmp_path)])
    assert (tmp_path / "report.md").read_text() == text
    assert "| SFT | validation loss | 0.400 |" in text
    assert "| reward model | agreement with the gold judge on them (the raters': the ceiling) | 82.0% (85.0%) |" in text
    assert "| SFT | +0.30 | +0.00 | 0.00 |  | 12.00 | 100.0% | 50.0% |" in text  # SFT's score comes from PPO's run
    assert "| PPO | +1.50 | +0.90 | 3.00 | 70.0% ± 5.0% |" in text
    assert "| arith | +1.30: 60% / 20% / 10% / 10% | +2.50 (80%): 60% / 20% / 10% / 10% |" in text
    assert "- SFT: 6.<|endoftext|> *(gold -1.75, wrong)*\n- PPO: 5. Hope this helps!<|endoftext|> *(gold +3.50, right)*" \
        in text


def test_report_card_needs_a_finished_stage(tmp_path):
    with pytest.raises(SystemExit, match="no finished stage"):
        report.main(["--out_dir", str(tmp_path)])
