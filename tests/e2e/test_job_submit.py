"""``ray job submit`` as a user runs it: a short ``ray-s3ft train`` submitted from the repository
root with ``cluster/runtime_env.yaml`` (working_dir upload, relative --config) to a Ray head this
test starts (``ray start --head --block``: its own free ports, temp dir and auth token, the
rollout_slot / learner_slot resources of the KubeRay worker groups), followed with
``ray job logs --follow`` to SUCCEEDED. The head is stopped by SIGTERM to its ``ray start``;
the test fails if a process of its process group or its temp dir outlives that (and kills it)."""

import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # the project's environment: ray and ray-s3ft
SHORT = [
    "data.train_size=16",
    "eval.task_size=20",
    "eval.heldout_size=10",
    "eval.every=0",
    "trainer.max_steps=3",
    "schedule.warmup_steps=1",
    "trainer.checkpoint_every=3",
]
SLOTS = {"rollout_slot": 1, "learner_slot": 2}  # what the KubeRay worker groups advertise
PINNED = [
    "resources.rollout_node_resource=rollout_slot",
    "resources.learner_node_resource=learner_slot",
]
RAY_WORKER_PORTS = range(10002, 20000)  # Ray's default worker port range: not for our services


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    while len(ports) < n:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        if s.getsockname()[1] not in RAY_WORKER_PORTS:
            ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def _alive(match) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["cmdline", "status"]):
        with contextlib.suppress(OSError, psutil.Error):
            if p.info["status"] != psutil.STATUS_ZOMBIE and p.pid != os.getpid() and match(p):
                out.append(p)
    return out


def _head_processes(pgid: int, temp: Path) -> list[psutil.Process]:
    """The head's process group, and whatever names its temp dir (raylet, GCS, workers...)."""
    return _alive(
        lambda p: os.getpgid(p.pid) == pgid or any(str(temp) in a for a in p.info["cmdline"] or [])
    )


def _stop(proc: subprocess.Popen, temp: Path) -> list[str]:
    """SIGTERM ``ray start --block``, which stops the raylet (and its workers), the GCS and the
    dashboard in order; SIGKILL whatever of the head is left after a grace period. Returns the
    processes that had to be killed, as ``pid cmdline`` lines."""
    proc.terminate()
    deadline = time.monotonic() + 30
    while (proc.poll() is None or _head_processes(proc.pid, temp)) and time.monotonic() < deadline:
        time.sleep(0.5)
    left, lines = _head_processes(proc.pid, temp), []
    for p in left:
        with contextlib.suppress(psutil.Error):
            lines.append(f"{p.pid} {' '.join(p.cmdline())[:200]}")
            p.kill()
    proc.wait(10)
    return lines


def _wait_for_jobs_api(address: str, token: str, proc: subprocess.Popen, log: Path) -> None:
    req = urllib.request.Request(
        f"{address}/api/jobs/", headers={"Authorization": f"Bearer {token}"}
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert proc.poll() is None, (
            f"ray start exited {proc.returncode}:\n{log.read_text()[-3000:]}"
        )
        errors = (urllib.error.URLError, ConnectionError, TimeoutError)
        with contextlib.suppress(*errors), urllib.request.urlopen(req, timeout=5) as r:
            if r.status == 200:
                return
        time.sleep(2)
    raise AssertionError(f"no job API at {address} after 180 s:\n{log.read_text()[-3000:]}")


@pytest.fixture
def head(tmp_path):
    """A private Ray head with the dashboard's job API: (address, environment of its clients)."""
    temp = Path(tempfile.mkdtemp(prefix="rj-", dir="/tmp"))  # Ray's socket paths: < 107 bytes
    token = temp / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token), TMPDIR=str(temp))
    # on SIGTERM, stop at once: no 30 s drain (for Ray Serve) before the processes are stopped
    env["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] = "0"
    gcs, dash, client, agent, agent_grpc, metrics, node, objects, runtime_env = _free_ports(9)
    log = tmp_path / "ray-start.log"
    cmd = [
        BIN / "ray", "start", "--head", "--block", "--disable-usage-stats",
        f"--temp-dir={temp}",
        "--num-cpus=4", "--num-gpus=0", f"--resources={json.dumps(SLOTS)}",
        "--object-store-memory=1000000000",
        "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
        f"--port={gcs}", f"--ray-client-server-port={client}",
        f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
        f"--metrics-export-port={metrics}", f"--node-manager-port={node}",
        f"--object-manager-port={objects}", f"--runtime-env-agent-port={runtime_env}",
    ]  # fmt: skip
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path,
                                start_new_session=True)  # fmt: skip
    address = f"http://127.0.0.1:{dash}"
    try:
        _wait_for_jobs_api(address, token.read_text(), proc, log)
        yield address, env
    finally:
        left = _stop(proc, temp)
        shutil.rmtree(temp, ignore_errors=True)
    assert not left, "processes of the Ray head survived SIGTERM:\n" + "\n".join(left)


def _job(head, verb: str, *args, timeout=120) -> subprocess.CompletedProcess:
    """``ray job VERB --address ... ARGS`` from the repository root, as a user types it."""
    address, env = head
    cmd = [BIN / "ray", "job", verb, f"--address={address}", "--log-style=record", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout)


def follow_to_success(head, job_id: str, timeout: int) -> str:
    """``ray job logs --follow`` to the end (the job stopped if that takes too long), then
    ``ray job status`` must say it succeeded; returns the logs."""
    try:
        logs = _job(head, "logs", "--follow", job_id, timeout=timeout)
    except subprocess.TimeoutExpired:
        _job(head, "stop", job_id)
        raise
    status = _job(head, "status", job_id)
    text = status.stdout + status.stderr
    assert f"Job '{job_id}' succeeded" in text, text + logs.stdout[-6000:]
    return logs.stdout


def test_ray_job_submit_runs_a_short_training_run(head, tmp_path):
    out = tmp_path / "run"
    job_id = f"ray-s3ft-test-{secrets.token_hex(4)}"
    started = time.monotonic()
    submit = _job(
        head, "submit", f"--submission-id={job_id}",
        "--runtime-env=cluster/runtime_env.yaml", "--no-wait", "--",
        str(BIN / "ray-s3ft"), "train", "--config", "configs/default.yaml",
        *SHORT, *PINNED, f"trainer.output_dir={out}",
    )  # fmt: skip
    assert submit.returncode == 0, submit.stdout[-2000:] + submit.stderr[-2000:]
    logs = follow_to_success(head, job_id, timeout=600)
    print(f"job {job_id} finished in {time.monotonic() - started:.0f} s")

    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"]["sft"] + summary["steps"]["grpo"] == 3
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert (out / "checkpoints" / "step_3" / "hf" / "model.safetensors").is_file()
    assert "targets (s3ft)" in logs  # the driver's progress reached the job's logs
    syncs = [r["timing/sync"] for r in rows]
    print(f"weight sync on one node: mean {sum(syncs) / len(syncs):.3f} s over {len(syncs)} steps")
