"""``ray start`` and ``ray job`` as a user runs them, for the tests that submit runs to Ray
clusters of their own on this host: free ports, the job API, stopping a node by its process."""

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # the project's environment: ray and ray-s3ft
PINNED = [
    "resources.rollout_node_resource=rollout_slot",
    "resources.learner_node_resource=learner_slot",
]
RAY_WORKER_PORTS = range(10002, 20000)  # Ray's default worker port range: not for our services


def free_ports(n: int) -> list[int]:
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


def _node_processes(pgid: int, temp: Path) -> list[psutil.Process]:
    """A node's process group, and whatever names its temp dir (raylet, GCS, workers...)."""
    return _alive(
        lambda p: os.getpgid(p.pid) == pgid or any(str(temp) in a for a in p.info["cmdline"] or [])
    )


def stop_node(proc: subprocess.Popen, temp: Path) -> list[str]:
    """SIGTERM ``ray start --block``, which stops the raylet (and its workers), the GCS and the
    dashboard in order; SIGKILL whatever of the node is left after a grace period. Returns the
    processes that had to be killed, as ``pid cmdline`` lines."""
    proc.terminate()
    deadline = time.monotonic() + 30
    while (proc.poll() is None or _node_processes(proc.pid, temp)) and time.monotonic() < deadline:
        time.sleep(0.5)
    left, lines = _node_processes(proc.pid, temp), []
    for p in left:
        with contextlib.suppress(psutil.Error):
            lines.append(f"{p.pid} {' '.join(p.cmdline())[:200]}")
            p.kill()
    proc.wait(10)
    return lines


def api(address: str, token: str, path: str, timeout: float = 10):
    """GET ``address/api/PATH`` of the dashboard with the cluster's token: the JSON it returns,
    or None while it does not answer."""
    req = urllib.request.Request(
        f"{address}/api/{path}", headers={"Authorization": f"Bearer {token}"}
    )
    errors = (urllib.error.URLError, ConnectionError, TimeoutError, ValueError)
    with contextlib.suppress(*errors), urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())
    return None


def wait_for_jobs_api(address: str, token: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert proc.poll() is None, (
            f"ray start exited {proc.returncode}:\n{log.read_text()[-3000:]}"
        )
        if api(address, token, "jobs/", timeout=5) is not None:
            return
        time.sleep(2)
    raise AssertionError(f"no job API at {address} after 180 s:\n{log.read_text()[-3000:]}")


def job(head, verb: str, *args, timeout=120) -> subprocess.CompletedProcess:
    """``ray job VERB --address ... ARGS`` from the repository root, as a user types it."""
    address, env = head
    cmd = [BIN / "ray", "job", verb, f"--address={address}", "--log-style=record", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout)


def follow_to_success(head, job_id: str, timeout: int) -> str:
    """``ray job logs --follow`` to the end (the job stopped if that takes too long), then
    ``ray job status`` must say it succeeded; returns the logs."""
    try:
        logs = job(head, "logs", "--follow", job_id, timeout=timeout)
    except subprocess.TimeoutExpired:
        job(head, "stop", job_id)
        raise
    status = job(head, "status", job_id)
    text = status.stdout + status.stderr
    assert f"Job '{job_id}' succeeded" in text, text + logs.stdout[-6000:]
    return logs.stdout
