"""The ``ray-s3ft`` command as a user runs it: bad config is exit 2 with the key named, no traceback."""

import json
import subprocess
import sys

import pytest


def _run(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "ray_s3ft.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


@pytest.mark.parametrize(
    "args,needle",
    [
        (["trainer.max_steps=abc"], "trainer.max_steps"),
        (["trainer.no_such_key=1"], "trainer.no_such_key"),
        (["schedule.kind=sometimes"], "sft, grpo, sft_then_grpo, fixed_ratio, sasr"),
        (["learner.zero_stage=4"], "learner.zero_stage"),
        (["--config", "does/not/exist.yaml"], "does/not/exist.yaml"),
    ],
)
def test_config_errors_exit_2_naming_the_key(args, needle):
    r = _run("config", *args)
    assert r.returncode == 2
    assert needle in r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""


def test_config_prints_the_resolved_yaml():
    r = _run("config", "trainer.max_steps=70")
    assert r.returncode == 0, r.stderr
    assert "max_steps: 70" in r.stdout


def test_eval_on_the_builtin_model_saves_numbers(tmp_path):
    out = tmp_path / "eval"
    r = _run("eval", "eval.task_size=16", "eval.heldout_size=8", f"eval.output_dir={out}")
    assert r.returncode == 0, r.stderr
    report = json.loads((out / "eval.json").read_text())
    assert report["task"]["n"] == 16 and set(report["heldout"]) == {"compare", "sort", "reverse"}
    for s in [report["task"], *report["heldout"].values()]:
        assert 0 <= s["correct"] <= s["n"] and s["accuracy"] == s["correct"] / s["n"]
    assert (out / "config.yaml").is_file()
    assert "held-out mean" in r.stdout
