"""The ``ray-s3ft`` command as a user runs it: bad config is exit 2 with the key named, no traceback."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def _run(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "ray_s3ft.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


def _start(tmp, *args, cwd=None, env=None) -> tuple[subprocess.Popen, Path]:
    """``ray-s3ft ARGS`` in the background, its stdout and stderr in files under ``tmp``."""
    with (tmp / "stdout").open("w") as out, (tmp / "stderr").open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ray_s3ft.cli", *args], stdout=out, stderr=err, cwd=cwd,
            env=env,
        )  # fmt: skip
    return proc, tmp


def _finished(started, timeout: float) -> subprocess.CompletedProcess:
    proc, tmp = started
    proc.wait(timeout=timeout)
    stdout, stderr = ((tmp / name).read_text() for name in ("stdout", "stderr"))
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


@pytest.fixture(scope="module")
def slow_commands(tmp_path_factory):
    """The module's two slow commands, started together when the first of their tests asks:
    ``eval`` on the built-in model and ``train`` on a broken data file. Each is an interpreter
    that imports torch and transformers (the train also starts a Ray while it reads the data),
    10-20 s of one core; side by side they take the two cores."""
    eval_dir, train_dir = tmp_path_factory.mktemp("eval"), tmp_path_factory.mktemp("train")
    good = {"question": "What is 2 + 3?", "answer": "2 + 3 = 5\n#### 5"}
    lines = [json.dumps(good)] * 8 + ['{"question": "cut short', json.dumps({"question": "x"})]
    data = train_dir / "train.jsonl"
    data.write_text("\n".join(lines) + "\n")
    env = {**os.environ, "TMPDIR": str(train_dir)}
    started = {
        "eval": _start(
            eval_dir, "eval", "eval.task_size=16", "eval.heldout_size=8",
            f"eval.output_dir={eval_dir / 'eval'}",
        ),
        "train": _start(
            train_dir, "train", "data.task=gsm8k", f"data.train_path={data}",
            f"data.eval_path={data}", f"trainer.output_dir={train_dir / 'run'}",
            "data.max_bad_fraction=0.1", cwd=train_dir, env=env,
        ),
    }  # fmt: skip
    try:
        yield {
            "eval_out": eval_dir / "eval",
            "data": data,
            "train_out": train_dir / "run",
            **started,
        }
    finally:
        for proc, _ in started.values():
            if proc.poll() is None:
                proc.kill()


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


def test_eval_on_the_builtin_model_saves_numbers(slow_commands):
    out = slow_commands["eval_out"]
    r = _finished(slow_commands["eval"], timeout=300)
    assert r.returncode == 0, r.stderr
    report = json.loads((out / "eval.json").read_text())
    assert report["task"]["n"] == 16 and set(report["heldout"]) == {"compare", "sort", "reverse"}
    for s in [report["task"], *report["heldout"].values()]:
        assert 0 <= s["correct"] <= s["n"] and s["accuracy"] == s["correct"] / s["n"]
    assert (out / "config.yaml").is_file()
    assert "held-out mean" in r.stdout
    # the engine's own output (transformers' loading bar; vLLM's logs on that backend) is in
    # the log, not on the console: stdout holds our lines only
    assert r.stderr == ""
    assert "Loading weights" not in r.stdout
    assert "Loading weights" in (out / "logs" / "eval.log").read_text()


def _train_fails_fast(tmp_path, *args, env=None):
    """``ray-s3ft train`` with a bad input: exit 2, one message, no traceback, in seconds."""
    import os
    import time

    started = time.perf_counter()
    r = subprocess.run(
        [sys.executable, "-m", "ray_s3ft.cli", "train", *args],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
        env={**os.environ, "TMPDIR": str(tmp_path), **(env or {})},
    )  # fmt: skip
    seconds = time.perf_counter() - started
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    return r, seconds


def test_a_missing_model_an_unwritable_output_and_an_unreachable_ray_in_one_message(tmp_path):
    import socket

    (tmp_path / "afile").write_text("")
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r, seconds = _train_fails_fast(
        tmp_path, "model.path=/no/such/model", f"trainer.output_dir={tmp_path}/afile/run",
        env={"RAY_ADDRESS": f"127.0.0.1:{port}"},
    )  # fmt: skip
    for needle in ("model.path", "/no/such/model", "trainer.output_dir", "RAY_ADDRESS"):
        assert needle in r.stderr, (needle, r.stderr)
    assert seconds < 60  # no Ray start, no wait for a cluster


def test_a_data_file_with_too_many_broken_lines_stops_before_any_actor(slow_commands):
    data, out = slow_commands["data"], slow_commands["train_out"]
    r = _finished(slow_commands["train"], timeout=120)
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    assert f"{data}:9: invalid JSON" in r.stderr, r.stderr
    report = json.loads((out / "data_report.json").read_text())
    entry = report["files"][str(data)]
    assert (entry["rows"], entry["used"], entry["bad"]) == (10, 8, 2)
    assert entry["problems"][1].startswith(f"{data}:10: ")
    assert not (out / "logs").exists()  # no actor was started
