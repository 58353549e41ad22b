"""One-step off-policy GRPO (``rollout.async=true``) on the real stack: the next GRPO batch is
sampled while the current step trains, with the weights from before that step.

- every step after the first trains on a prefetched batch one version old (staleness 1), with
  truncated importance weights logged; the first samples on-policy (staleness 0);
- the engine logprobs of a stale batch differ from the learner's (they come from the previous
  policy) while the on-policy first step still matches to 1e-4: the weights really are one
  step behind, not re-synced behind the controller's back;
- the same prompts and seeds as the synchronous run: step 0 samples identical tokens;
- exact resume: the checkpoint at step 3 holds the batch that was being prefetched for step 3,
  so a run resumed from it (the later checkpoint gone, as after a crash) trains steps 3-5 on
  the same stale samples, with the same losses, as the run that never stopped.

The synchronous and the asynchronous run are the step-anatomy benchmark's smoke run
(``bench/step_anatomy.py --keep``: the same two runs, timed by phase), so that benchmark's
checks are here too: the asynchronous run prefetched, the synchronous one synced and sampled
inside its steps.
"""

import json
import shutil
import subprocess
import sys

import pytest
from _e2e import SHORT_GRPO, bench_smoke, cli_env

pytestmark = pytest.mark.slow

# the benchmark's runs are GRPO on gold targets (GRPO steps read no S3FT target)
COMMON = [
    *SHORT_GRPO,
    "algorithm.targets=gold",
    "trainer.max_steps=6",
    "trainer.checkpoint_every=3",
]


def _rows(out):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def _train(tmp, out, *extra):
    env = cli_env(tmp)
    r = subprocess.run(
        [sys.executable, "-m", "ray_s3ft.cli", "train", *COMMON, *extra,
         f"trainer.output_dir={out}"],
        capture_output=True, text=True, env=env, cwd=tmp, timeout=900,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    return _rows(out)


def test_async_rollout_trains_on_one_step_old_samples_with_is_weights(tmp_path):
    runs = tmp_path / "runs"
    anatomy = bench_smoke(
        "step_anatomy", tmp_path, "--steps", "6", "--overrides", " ".join(COMMON),
        "--keep", str(runs), env=cli_env(tmp_path),
    )["details"]  # fmt: skip
    # the asynchronous run prefetched; the synchronous one synced and sampled inside its steps
    assert anatomy["sync"]["phases_s"]["prefetch"] == 0 < anatomy["async"]["phases_s"]["prefetch"]
    assert anatomy["sync"]["phases_s"]["sync"] > 0
    sync, rows = _rows(runs / "sync0"), _rows(runs / "async0")
    assert [r["step"] for r in rows] == list(range(6))
    assert [r["rollout/staleness"] for r in rows] == [0, 1, 1, 1, 1, 1]
    assert all(r["rollout/discarded"] == 0 for r in rows)
    assert all(r["timing/prefetch"] > 0 for r in rows[:-1])  # none after the last step
    assert rows[0]["rollout/is_weight"] == 1.0  # on-policy: no weights applied
    for r in rows[1:]:
        assert 0 < r["rollout/is_weight"] <= 2.0 and 0 <= r["rollout/is_clip_frac"] <= 1
    # on-policy step: engine and learner agree; later steps score the previous policy's samples
    assert rows[0]["rollout/logprob_max_diff"] < 1e-4
    assert max(r["rollout/logprob_max_diff"] for r in rows[1:]) > 1e-3
    assert rows[0]["rollout/sample_digest"] == sync[0]["rollout/sample_digest"]
    assert rows[0]["learner/loss"] == pytest.approx(sync[0]["learner/loss"], abs=1e-6)

    # a crash after the checkpoint at step 3: resume from it
    cut = tmp_path / "cut"
    shutil.copytree(runs / "async0", cut)
    shutil.rmtree(cut / "checkpoints" / "step_6")
    assert (cut / "checkpoints" / "step_3" / "pending_rollout.json").is_file()
    resumed = _train(tmp_path, cut, "rollout.async=true")
    assert [r["step"] for r in resumed] == list(range(6))
    for a, b in zip(rows[3:], resumed[3:], strict=True):
        assert b["rollout/staleness"] == a["rollout/staleness"] == 1, a["step"]
        assert b["rollout/sample_digest"] == a["rollout/sample_digest"], a["step"]
        assert b["learner/loss"] == pytest.approx(a["learner/loss"], abs=1e-6), a["step"]
        assert b["reward/mean"] == a["reward/mean"], a["step"]
