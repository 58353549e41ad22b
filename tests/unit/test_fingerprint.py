"""Cached artefacts are reused only when what made them matches: the base model's evaluation,
a ``compare`` cell (the target store: test_target_store.py). A mismatch names every key that
differs, with both values, and ``--force`` redoes the artefact."""

import json

import pytest

from ray_s3ft.config import ConfigError, load_config
from ray_s3ft.run import fingerprint as fp


def test_differences_name_each_dotted_key_with_both_values():
    saved = {"eval": {"task_size": 1000, "heldout": ["a"]}, "gone": 1, "model": {"digest": "x"}}
    now = {"eval": {"task_size": 8, "heldout": ["a"]}, "new": True, "model": {"digest": "y"}}
    assert fp.differences(saved, now) == [
        "eval.task_size: 1000 -> 8",
        'gone: 1 -> "(absent)"',
        'model.digest: "x" -> "y"',
        'new: "(absent)" -> true',
    ]


def test_check_reuse_reuses_a_match_refuses_a_mismatch_and_force_redoes(tmp_path):
    art = tmp_path / "eval_before.json"
    assert fp.check_reuse(art, {"a": 1}, {"a": 1}, force=False) is True
    with pytest.raises(ConfigError, match=r"eval_before.json: .*a: 1 -> 2\. Rerun with --force"):
        fp.check_reuse(art, {"a": 1}, {"a": 2}, force=False)
    with pytest.raises(ConfigError, match="no fingerprint .* unknown. Rerun with --force"):
        fp.check_reuse(art, None, {"a": 2}, force=False)
    assert fp.check_reuse(art, {"a": 1}, {"a": 2}, force=True) is False


def test_a_setting_added_since_counts_only_off_its_default(tmp_path):
    # a cell made before schedule.mix existed: its fingerprint lacks those keys
    model = {"name": "builtin", "digest": "d"}
    now = fp.cell_fingerprint(load_config(None, []), model)
    saved = json.loads(
        json.dumps({k: v for k, v in now.items() if not k.startswith("schedule.mix.")})
    )
    assert saved != now and "schedule.mix.mu_start" in now
    assert fp.check_reuse(tmp_path, saved, now, force=False) is True  # at the defaults
    off = fp.cell_fingerprint(load_config(None, ["schedule.mix.mu_start=0.7"]), model)
    with pytest.raises(ConfigError, match=r'schedule.mix.mu_start: "\(absent\)" -> 0.7'):
        fp.check_reuse(tmp_path, saved, off, force=False)
    # a key that is no setting at all is never taken as a default
    with pytest.raises(ConfigError, match="extra"):
        fp.check_reuse(tmp_path, saved, {**now, "extra": 1}, force=False)


def test_eval_fingerprint_has_the_keys_of_the_evaluation_only():
    model = {"name": "builtin", "digest": "d"}
    base = fp.eval_fingerprint(load_config(None, []), model)
    assert base["model"] == model and base["eval.task_size"] == 1000
    # training keys and where the evaluation is written do not change it
    same = ["trainer.max_steps=3", "schedule.kind=sft", "eval.every=5", "data.train_size=8"]
    assert fp.eval_fingerprint(load_config(None, same), model) == base
    other = fp.eval_fingerprint(load_config(None, ["judge.math_extract=strict"]), model)
    assert fp.differences(base, other) == ['judge.math_extract: "flexible" -> "strict"']


def test_model_identity_follows_the_weights_or_fetch_json(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 10)
    first = fp.model_identity("mine", str(tmp_path))
    assert first == fp.model_identity("mine", str(tmp_path)) and first["name"] == "mine"
    (tmp_path / "model.safetensors").write_bytes(b"\x01" * 10)  # retrained in place
    assert fp.model_identity("mine", str(tmp_path))["digest"] != first["digest"]
    (tmp_path / "fetch.json").write_text('{"sha256": "abc"}')  # the fetched files' hashes
    fetched = fp.model_identity("mine", str(tmp_path))
    (tmp_path / "model.safetensors").write_bytes(b"\x02" * 10)
    assert fp.model_identity("mine", str(tmp_path)) == fetched
    assert fp.model_identity("org/hub-id", "org/hub-id") == {"name": "org/hub-id", "digest": None}


def test_eval_before_is_reused_only_with_its_fingerprint(tmp_path):
    from ray_s3ft.run.session import cached_eval

    path, calls = tmp_path / "eval_before.json", []

    def evaluate():
        calls.append(1)
        return {"task": {"accuracy": 0.5}, "items": [{"set": "task", "id": "t0", "h": "h",
                                                      "correct": True}]}  # fmt: skip

    assert cached_eval(path, evaluate, {"eval.task_size": 8}) == {"task": {"accuracy": 0.5}}
    assert (tmp_path / "eval_before.items.jsonl").is_file()
    assert json.loads((tmp_path / "eval_before.fingerprint.json").read_text()) == {
        "eval.task_size": 8
    }
    cached_eval(path, evaluate, {"eval.task_size": 8})
    assert len(calls) == 1  # read back
    with pytest.raises(ConfigError, match=r"eval_before.json: .*eval.task_size: 8 -> 16"):
        cached_eval(path, evaluate, {"eval.task_size": 16})
    cached_eval(path, evaluate, {"eval.task_size": 16}, force=True)
    assert len(calls) == 2 and cached_eval(path, evaluate, {"eval.task_size": 16})
    (tmp_path / "eval_before.fingerprint.json").unlink()  # an old run's evaluation
    with pytest.raises(ConfigError, match="no fingerprint"):
        cached_eval(path, evaluate, {"eval.task_size": 16})


def _grid(out, cell_overrides=(), before_overrides=()):
    """A grid directory with the base model's evaluation and a finished s3ft-s0 cell, made by
    the default config plus ``cell_overrides`` / ``before_overrides``."""
    from ray_s3ft.experiments.compare import Cell, cell_config
    from ray_s3ft.model.paths import resolve_model_path

    model = fp.model_identity("builtin", resolve_model_path("builtin"))
    acc = {"task": {"accuracy": 0.5, "correct": 1, "n": 2, "unparsed": 0},
           "a": {"accuracy": 0.5, "correct": 1, "n": 2, "unparsed": 0}, "heldout_mean": 0.5}  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval_before.json").write_text(json.dumps(acc))
    before = load_config(None, [*before_overrides, f"trainer.output_dir={out}"])
    fp.save(out / "eval_before.fingerprint.json", fp.eval_fingerprint(before, model))
    (out / "targets.jsonl").write_text("")
    cell = Cell("s3ft", 0)
    d = out / "cells" / cell.name
    d.mkdir(parents=True)
    (d / "summary.json").write_text(json.dumps({
        "run_dir": str(d), "accuracy_after": acc, "steps": {"sft": 1, "grpo": 0},
        "targets": {"self": 1.0, "paraphrase": 0.0, "gold": 0.0}, "wall_s": {"total": 1.0},
    }))  # fmt: skip
    fp.save(
        d / "fingerprint.json",
        fp.cell_fingerprint(cell_config(None, list(cell_overrides), cell, out), model),
    )
    return d


def test_compare_refuses_a_cell_made_by_another_config(tmp_path):
    from ray_s3ft.experiments.compare import run_grid

    _grid(tmp_path)
    r = run_grid(None, [], ["s3ft"], [0], tmp_path, gather=True)  # the same config: counted
    assert [c["method"] for c in r["cells"]] == ["s3ft"]
    with pytest.raises(ConfigError, match=r"cells/s3ft-s0: .*trainer.max_steps: 100 -> 70\. Rerun"):
        run_grid(None, ["trainer.max_steps=70"], ["s3ft"], [0], tmp_path, gather=True)
    with pytest.raises(ConfigError, match="--force has nothing to redo"):
        run_grid(None, [], ["s3ft"], [0], tmp_path, gather=True, force=True)


def test_compare_refuses_an_old_cell_and_an_eval_before_of_another_config(tmp_path):
    from ray_s3ft.experiments.compare import run_grid

    cell = _grid(tmp_path / "old")
    (cell / "fingerprint.json").unlink()  # made before fingerprints were kept
    with pytest.raises(ConfigError, match="s3ft-s0: it has no fingerprint"):
        run_grid(None, [], ["s3ft"], [0], tmp_path / "old", gather=True)
    _grid(tmp_path / "other", ["eval.task_size=8"], ["eval.task_size=8"])
    with pytest.raises(ConfigError, match=r"eval_before.json: .*eval.task_size: 8 -> 1000"):
        run_grid(None, [], ["base"], [0], tmp_path / "other", gather=True)


def test_force_is_an_option_of_train_build_targets_and_compare(capsys):
    from ray_s3ft.cli import _parser
    from ray_s3ft.experiments.compare import main

    for command in ("train", "build-targets"):
        args = _parser().parse_args([command, "--force", "trainer.max_steps=3"])
        assert args.force is True and args.overrides == ["trainer.max_steps=3"]
        assert _parser().parse_args([command]).force is False
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "--force" in capsys.readouterr().out
