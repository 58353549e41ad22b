"""Reads a W&B offline run back (``wandb/offline-run-*/run-*.wandb``) for the tests.

The file is a LevelDB-style log: a 7-byte header (``:W&B``, magic, version), then 32 KiB
blocks of records, each a 7-byte header (CRC32, length, type: 1 full, 2 first, 3 middle,
4 last) and its bytes; a block's tail shorter than a header is padding. Each whole record is
a ``wandb_internal_pb2.Record`` protobuf.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

BLOCK, HEADER = 32 * 1024, 7


def records(path: Path):
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path}: not a W&B log"
    pos, chunks = HEADER, []
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # padding to the next block
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        if kind == 0 and length == 0:
            break
        chunks.append(data[pos + HEADER : pos + HEADER + length])
        pos += HEADER + length
        if kind in (1, 4):  # a full record, or the last piece of one
            rec = pb.Record()
            rec.ParseFromString(b"".join(chunks))
            chunks = []
            yield rec


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)


def read_run(run_dir: Path, wait_s: float = 60.0) -> dict:
    """``{"run": RunRecord, "config": {...}, "history": [{...}], "summary": {...}}``.

    W&B's service process writes the log: on a loaded machine ``run.finish()`` can return
    before the last records are on disk, so this reads until the exit record is there."""
    import time

    deadline = time.monotonic() + wait_s
    while True:
        try:
            out = _read(run_dir)
        except Exception:  # the file not there yet, or its last record half written
            if time.monotonic() > deadline:
                raise
            out = {"exit": None}
        if out["exit"] is not None or time.monotonic() > deadline:
            return out
        time.sleep(0.5)


def _read(run_dir: Path) -> dict:
    (path,) = run_dir.glob("run-*.wandb")
    out = {"run": None, "config": {}, "history": [], "summary": {}, "exit": None}
    for rec in records(path):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            out["run"] = rec.run
            out["config"].update({_key(i): json.loads(i.value_json) for i in rec.run.config.update})
        elif kind == "config":
            out["config"].update({_key(i): json.loads(i.value_json) for i in rec.config.update})
        elif kind == "history":
            out["history"].append({_key(i): json.loads(i.value_json) for i in rec.history.item})
        elif kind == "summary":
            out["summary"].update({_key(i): json.loads(i.value_json) for i in rec.summary.update})
        elif kind == "exit":
            out["exit"] = rec.exit.exit_code
    return out
