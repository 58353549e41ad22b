"""Learner memory: one learner rank's resident memory on a real model, measured, against the
preflight's estimate of it (``ray_s3ft/run/memory.py``, ``learner_rank``).

Each cell, (model) x (micro-batch x sequence length) x (gradient checkpointing off | on), runs
in a fresh process (the peak RSS of a process never goes down): one ``LearnerActor`` in a local
``ActorGroup`` called as the controller calls it (as ``bench/gpu/check.py``'s ``run_cell``),
DeepSpeed ZeRO-2 on CPU, ``--dtype`` (fp32: the profiles'), LoRA r = 8 on q, k, v, o with
dropout 0.1 (the profiles' setting), one micro-batch of random token ids per step (every row
``seq_len`` tokens, the second half its response). It records the RSS after ``setup`` (imports,
weights, the KL reference, optimizer state; every weight read once, ``touch``), then the peak RSS (``VmHWM``, reset through
``/proc/self/clear_refs`` before each mode) over ``--steps`` SFT steps and over ``--steps``
GRPO steps (the reference's forward included). Activations measured = the larger peak - the
RSS after setup.

The estimate of the same cell comes from a Config with the cell's keys (``learner.micro_batch_
size``, ``model.max_model_len`` and budgets that make the longest row ``seq_len``, ``learner.
gradient_checkpointing``, ZeRO-2, one rank): its ``fixed + weights + reference + grads + Adam``
against the RSS after setup, its ``activations`` against the activations measured.
``--fit`` solves for the activation factors (``fit_factors``: C_H, C_I, C_V and the
checkpointed bytes per layer input, C_G) by least squares on relative errors.

``--smoke`` runs one cell per checkpointing setting on a tiny Qwen2-shaped model.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import ROOT, Row, parser, proc_status, report

GIB = 2**30
DEFAULT_MODELS = "qwen2.5-coder-0.5b,smollm2-135m"
DEFAULT_CELLS = "2x256,smollm2-135m:4x640,qwen2.5-coder-0.5b:2x640"


# ------------------------------------------------------------------- one cell (a child process)


def _status_kib(key: str) -> int:
    return int(proc_status()[key].split()[0])


def rss() -> float:
    """This process's resident memory now (bytes)."""
    return _status_kib("VmRSS") * 1024.0


def peak_rss() -> float:
    """This process's peak resident memory since the last ``reset_peak`` (bytes)."""
    return _status_kib("VmHWM") * 1024.0


def reset_peak() -> None:
    """Set the peak RSS to the RSS now (Linux: ``5`` to ``/proc/self/clear_refs``)."""
    Path("/proc/self/clear_refs").write_text("5")


def touch(learner) -> None:
    """Read every weight of the engine and the reference once: loaded from safetensors in
    their own dtype they are views of the mapped file, resident only once read (as a step
    reads them)."""
    import torch

    with torch.no_grad():
        for module in (learner.engine.module, learner.reference):
            for t in (*module.parameters(), *module.buffers()):
                t.sum()


def run_cell(spec: dict) -> dict:
    """One learner rank on ``spec["path"]``: RSS after setup, peak RSS over the SFT steps and
    over the GRPO steps (bytes), and each step's seconds."""
    from types import SimpleNamespace

    from bench.gpu.check import batches, free_port
    from ray_s3ft.config import GRPOConfig, LearnerConfig, LoraConfig, ModelConfig
    from ray_s3ft.workers.batches import shard
    from ray_s3ft.workers.group import ActorGroup
    from ray_s3ft.workers.learner import LearnerActor

    path, mb, seq = spec["path"], spec["micro_batch"], spec["seq_len"]
    model = ModelConfig(
        path=path, dtype=spec["dtype"], max_model_len=seq,
        lora=LoraConfig(enabled=True, r=8, alpha=16, dropout=0.1),
    )  # fmt: skip
    cfg = LearnerConfig(
        zero_stage=2, bf16=False, micro_batch_size=mb,
        gradient_checkpointing=spec["checkpointing"],
    )  # fmt: skip
    started = rss()
    group = ActorGroup(
        LearnerActor, 1, name="learner", local=True,
        kwargs=dict(world_size=1, model_path=path, model=model, cfg=cfg, grpo=GRPOConfig(),
                    lr=1e-5, grpo_lr=1e-6, weight_decay=0.0, seed=0,
                    threads=os.cpu_count() or 1),
        rank_kwargs=lambda i: {"rank": i},
    )  # fmt: skip
    out = {"rss_start": started}
    try:
        group.call(LearnerActor.setup, "127.0.0.1", free_port())
        gc.collect()
        out["setup_peak"] = peak_rss()
        out["rss_loaded"] = rss()  # frozen weights may still be unread pages of a mapped file
        out["rss_file_loaded"] = _status_kib("RssFile") * 1024.0
        touch(group.actors[0])
        out["rss_setup"] = rss()
        out["rss_file_setup"] = _status_kib("RssFile") * 1024.0
        vocab = json.loads((Path(path) / "config.json").read_text())["vocab_size"]
        shape = SimpleNamespace(batch=mb, seq_len=seq)
        for mode in ("sft", "grpo"):
            steps = batches(shape, vocab, mode, spec["steps"])
            gc.collect()
            reset_peak()
            seconds = []
            for b in steps:
                t = time.perf_counter()
                group.scatter(LearnerActor.train_step, shard(b, 1), mode=mode)
                seconds.append(time.perf_counter() - t)
            out[f"peak_{mode}"] = peak_rss()
            out[f"seconds_{mode}"] = seconds
    finally:
        group.shutdown()
    return out


def run_child(spec: dict, timeout: float) -> dict:
    """``run_cell`` in a fresh Python process; its result, or ``{"error": ...}``."""
    cmd = [sys.executable, "-m", "bench.memory", "--child", json.dumps(spec)]
    env = dict(os.environ, PYTHONPATH=str(ROOT), TRANSFORMERS_VERBOSITY="error")
    try:
        r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:g} s"}
    for line in reversed(r.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    return {"error": f"exit {r.returncode}: {r.stderr.strip()[-2000:]}"}


# ------------------------------------------------------------------------------- the estimate


def cell_config(path: str, micro_batch: int, seq_len: int, checkpointing: bool, dtype: str):
    """A Config whose learner rank is the cell: one ZeRO-2 rank, LoRA r = 8, rows of at most
    ``seq_len`` tokens (the budgets: half prompt, half response)."""
    from ray_s3ft.config import load_config

    half = seq_len // 2
    return load_config(
        overrides=[
            f"model.path={path}", f"model.dtype={dtype}", f"rollout.dtype={dtype}",
            f"model.max_model_len={seq_len}", "model.lora.enabled=true", "model.lora.r=8",
            f"data.max_prompt_tokens={half}", f"data.max_response_tokens={seq_len - half}",
            f"rollout.max_new_tokens={seq_len - half}", "eval.max_new_tokens=4",
            f"learner.micro_batch_size={micro_batch}", "learner.zero_stage=2",
            f"learner.gradient_checkpointing={str(checkpointing).lower()}",
            "learner.bf16=false", "resources.learner_ranks=1",
            f"trainer.sft_batch_size={micro_batch}", f"trainer.grpo_prompts_per_step={micro_batch}",
        ]
    )  # fmt: skip


def estimated_parts(path: str, micro_batch: int, seq_len: int, checkpointing: bool, dtype: str):
    """memory.py's learner rank 0 for the cell: part name -> bytes."""
    from ray_s3ft.run import memory

    cfg = cell_config(path, micro_batch, seq_len, checkpointing, dtype)
    shape = memory.model_shape(path, cfg)
    if shape is None:
        raise SystemExit(f"bench.memory: no config.json in {path}")
    parts = {p.what: p.bytes for p in memory.learner_rank(cfg, shape, 0).parts}
    return parts, shape


# ------------------------------------------------------------------------------------ fitting


def design_row(shape, tokens: int, checkpointing: bool, act_bytes: int = 4) -> list[float]:
    """The coefficients of (C_H, C_I, C_V, C_G) in memory.py's activation bytes of a cell:
    without checkpointing tokens x (layers x (C_H h + C_I i) x b + C_V x vocab x 4); with it
    tokens x (C_G x layers x h x b + (C_H h + C_I i) x b + C_V x vocab x 4)."""
    layers = 1 if checkpointing else shape.layers
    return [
        tokens * layers * shape.hidden * act_bytes,
        tokens * layers * shape.intermediate * act_bytes,
        tokens * shape.vocab * 4,
        tokens * shape.layers * shape.hidden * act_bytes if checkpointing else 0.0,
    ]


def fit_factors(rows: list[list[float]], measured: list[float]) -> list[float]:
    """(C_H, C_I, C_V, C_G) minimising the squared relative errors of ``design_row``s against
    the ``measured`` activation bytes (C_G is left out, 0, without checkpointed cells)."""
    import numpy as np

    a = np.array(rows, dtype=float) / np.array(measured, dtype=float)[:, None]
    used = [j for j in range(a.shape[1]) if a[:, j].any()]
    x, *_ = np.linalg.lstsq(a[:, used], np.ones(len(measured)), rcond=None)
    out = [0.0] * a.shape[1]
    for j, v in zip(used, x, strict=True):
        out[j] = float(v)
    return out


def predict(row: list[float], factors: list[float]) -> float:
    return sum(r * f for r, f in zip(row, factors, strict=True))


# --------------------------------------------------------------------------------------- main


def smoke_model(root: Path) -> str:
    from bench.gpu.check import build_model

    return build_model("smoke", root)


def main(argv=None) -> dict:
    ap = parser("memory", __doc__)
    ap.add_argument("--models", default=DEFAULT_MODELS, help="names (ray-s3ft fetch-model) or dirs")
    ap.add_argument(
        "--cells",
        default=DEFAULT_CELLS,
        help="micro_batch x seq_len, comma-separated; MODEL:BxT for one model",
    )
    ap.add_argument("--checkpointing", default="off,on", help="off, on or both")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--steps", type=int, default=1, help="steps per mode")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per cell")
    ap.add_argument(
        "--from", dest="sources", nargs="+",
        help="measure nothing: compare the cells of these earlier results with the estimate now",
    )  # fmt: skip
    ap.add_argument("--child", help=argparse_suppress())
    args = ap.parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(run_cell(json.loads(args.child))), flush=True)
        return {}
    if args.sources:
        measured = [
            c for f in args.sources for c in json.loads(Path(f).read_text())["details"]["measured"]
        ]
    else:
        measured = measure(args)
    rows, details = compare(measured)
    if not rows:
        raise SystemExit("bench.memory: no cell ran: " + "; ".join(c["error"] for c in measured))
    return report("memory", args, rows, {"measured": measured, **details})


def measure(args) -> list[dict]:
    """Each cell of ``args`` in its own process: the cell's spec with ``run_cell``'s figures."""
    from ray_s3ft.model.paths import resolve_model_path

    if args.smoke:
        args.models, args.cells = str(smoke_model(Path(tempfile.mkdtemp(prefix="bm-")))), "2x32"
    out = []
    for name in args.models.split(","):
        path = name if os.path.isdir(name) else resolve_model_path(name)
        for cell in args.cells.split(","):
            only, _, cell = cell.rpartition(":")  # "smollm2-135m:4x640": that model's alone
            if only and only != name:
                continue
            mb, seq = (int(x) for x in cell.split("x"))
            for ck in args.checkpointing.split(","):
                spec = dict(path=path, micro_batch=mb, seq_len=seq, checkpointing=ck == "on",
                            dtype=args.dtype, steps=args.steps)  # fmt: skip
                print(f"{cell_name(spec)}: running", flush=True)
                got = run_child(spec, args.timeout)
                out.append({**spec, **got})
                args.out.parent.mkdir(parents=True, exist_ok=True)  # survives a cut-off run
                args.out.with_suffix(".partial.json").write_text(
                    json.dumps({"details": {"measured": out}}, indent=1)
                )
                if "error" in got:
                    print(f"{cell_name(spec)}: {got['error']}", flush=True)
                    if not got["error"].startswith("timed out"):
                        raise SystemExit(f"bench.memory: {cell_name(spec)}: {got['error']}")
                    continue
                print(
                    f"{cell_name(spec)}: loaded {got['rss_loaded'] / GIB:.2f} GiB (file-backed "
                    f"{got['rss_file_loaded'] / GIB:.2f}), weights read "
                    f"{got['rss_setup'] / GIB:.2f} (file-backed {got['rss_file_setup'] / GIB:.2f}), "
                    f"peak SFT {got['peak_sft'] / GIB:.2f} GRPO {got['peak_grpo'] / GIB:.2f}; "
                    f"steps {got['seconds_sft'][0]:.0f} + {got['seconds_grpo'][0]:.0f} s",
                    flush=True,
                )
    return out


def cell_name(c: dict) -> str:
    ck = "on" if c["checkpointing"] else "off"
    return f"{Path(c['path']).name} {c['micro_batch']}x{c['seq_len']} ckpt {ck}"


def compare(measured: list[dict]) -> tuple[list[Row], dict]:
    """Each measured cell against memory.py's estimate of it now (rows: estimate / measured,
    goal >= 1), and the factors fitted to all of them with their residuals."""
    rows, cells, fit_rows, fit_measured = [], [], [], []
    for m in measured:
        if "error" in m:
            continue
        parts, shape = estimated_parts(
            m["path"], m["micro_batch"], m["seq_len"], m["checkpointing"], m["dtype"]
        )
        est_setup = sum(
            v for k, v in parts.items() if k not in ("activations", "merged LoRA layers")
        )
        c = {"cell": cell_name(m), "estimate": parts, "estimated_setup": est_setup,
             "rss_setup": m["rss_setup"], "peak": max(m["peak_sft"], m["peak_grpo"]),
             # the fixed part measured: the RSS after setup less what memory.py counts besides
             "fixed": m["rss_setup"] - (est_setup - parts["fixed"])}  # fmt: skip
        c["activations"] = c["peak"] - m["rss_setup"]
        c["design_row"] = design_row(shape, m["micro_batch"] * m["seq_len"], m["checkpointing"])
        cells.append(c)
        fit_rows.append(c["design_row"])
        fit_measured.append(c["activations"])
        rows.append(Row(f"{c['cell']}: activations, estimated / measured",
                        parts["activations"] / GIB, c["activations"] / GIB, "GiB",
                        (">=", 1.0)))  # fmt: skip
        rows.append(Row(f"{c['cell']}: after setup, estimated / measured", est_setup / GIB,
                        m["rss_setup"] / GIB, "GiB", (">=", 1.0)))  # fmt: skip
    details = {"cells": cells}
    if len(cells) >= 2:
        factors = fit_factors(fit_rows, fit_measured)
        details["fit"] = dict(zip(("C_H", "C_I", "C_V", "C_G"), factors, strict=True))
        details["fit_residuals"] = [predict(r, factors) / m - 1 for r, m in zip(fit_rows, fit_measured, strict=True)]  # fmt: skip
    print_table(cells, details)
    return rows, details


def argparse_suppress():
    import argparse

    return argparse.SUPPRESS


def print_table(cells: list[dict], details: dict) -> None:
    print(f"\n{'cell (GiB)':36} {'setup':>6} {'est.':>6} {'fixed':>6} {'est.':>6} {'peak':>6} "
          f"{'act.':>6} {'est.':>6} {'ratio':>6}")  # fmt: skip
    for c in cells:
        est = c["estimate"]
        print(f"{c['cell']:36} {c['rss_setup'] / GIB:6.2f} {c['estimated_setup'] / GIB:6.2f} "
              f"{c['fixed'] / GIB:6.2f} {est['fixed'] / GIB:6.2f} {c['peak'] / GIB:6.2f} "
              f"{c['activations'] / GIB:6.2f} {est['activations'] / GIB:6.2f} "
              f"{est['activations'] / c['activations']:6.2f}")  # fmt: skip
    if "fit" in details:
        f, res = details["fit"], details["fit_residuals"]
        print("least-squares factors: " + ", ".join(f"{k} {v:.2f}" for k, v in f.items()))
        print("their residuals (fit / measured - 1): " + ", ".join(f"{r:+.2f}" for r in res))


if __name__ == "__main__":
    main()
