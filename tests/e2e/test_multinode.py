"""``ray job submit`` to a multi-node Ray cluster on this host, as a user runs it: three raylets
started with ``ray start --head`` and ``ray start --address`` (each ``--block`` in its own
process group, with its own free ports, temp dir and the head's auth token), like the KubeRay
layout in ``cluster/kuberay/rayjob.yaml``:

    head      1 CPU, no role resource       the driver (the job's entrypoint) and the judges
    rollout   1 CPU, ``rollout_slot: 1``    the vLLM rollout worker
    learner   2 CPUs, ``learner_slot: 2``   the two DeepSpeed ranks

The run is submitted with ``ray job submit`` before the learner node exists (an autoscaling
start): ``resources.wait_for_resources_s`` makes the preflight wait for it, saying what is
missing; the test starts the learner node once the job's logs say it waits. Mid-run the learner
node's raylet is SIGKILLed by its PID, then the rollout node's, and a replacement for each
starts once the run has said it lost the node and waits for another: the run goes on
(``trainer.node_wait_s``), each step logged once, each loss counted.
With ``trainer.node_wait_s=0`` a lost node stops the run with exit status 1 and the command that
resumes it. The summary must name a node of the right kind for
every actor, and the weights crossed from the learner node to the rollout node through the
object store. Every node is stopped by SIGTERM to its ``ray start``; the test fails if one of
its processes outlives that.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import psutil
import pytest
import yaml
from _jobs import (
    BIN,
    PINNED,
    ROOT,
    api,
    follow_to_success,
    free_ports,
    stop_node,
    wait_for_jobs_api,
)
from _jobs import job as ray_job

pytestmark = pytest.mark.slow

HEAD = {"num_cpus": 1, "resources": {}}
ROLLOUT = {"num_cpus": 1, "resources": {"rollout_slot": 1}}
LEARNER = {"num_cpus": 2, "resources": {"learner_slot": 2}}


def _node_cmd(spec: dict, ports: list[int], head_gcs: int | None) -> list:
    agent, agent_grpc, metrics, node, objects, runtime_env = ports
    where = ["--head"] if head_gcs is None else [f"--address=127.0.0.1:{head_gcs}"]
    return [
        BIN / "ray", "start", *where, "--block", "--disable-usage-stats",
        f"--num-cpus={spec['num_cpus']}", "--num-gpus=0",
        f"--resources={json.dumps(spec['resources'])}", "--object-store-memory=500000000",
        f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
        f"--metrics-export-port={metrics}", f"--node-manager-port={node}",
        f"--object-manager-port={objects}", f"--runtime-env-agent-port={runtime_env}",
    ]  # fmt: skip


class _Cluster:
    """Raylets on this host, each a ``ray start --block`` process group of its own."""

    def __init__(self, tmp: Path) -> None:
        self.temp = Path(tempfile.mkdtemp(prefix="rm-", dir="/tmp"))  # short socket paths
        self.tmp, self.procs, self.temps = tmp, [], [self.temp]
        token = self.temp / "auth_token"
        token.write_text(secrets.token_hex(32))
        token.chmod(0o600)
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token), TMPDIR=str(self.temp))
        env["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] = "0"
        self.env, self.token = env, token.read_text()
        self.gcs, dash, client = free_ports(3)
        self.address = f"http://127.0.0.1:{dash}"
        cmd = _node_cmd(HEAD, free_ports(6), None) + [
            f"--temp-dir={self.temp}", f"--port={self.gcs}", f"--ray-client-server-port={client}",
            "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
        ]  # fmt: skip
        self.head = self._start("head", cmd)
        wait_for_jobs_api(self.address, self.token, self.head, tmp / "head.log")

    def _start(self, name: str, cmd: list) -> subprocess.Popen:
        with (self.tmp / f"{name}.log").open("w") as out:
            proc = subprocess.Popen(cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                    cwd=self.tmp, start_new_session=True)  # fmt: skip
        self.procs.append(proc)
        return proc

    def add_node(self, name: str, spec: dict) -> subprocess.Popen:
        temp = Path(tempfile.mkdtemp(prefix=f"rm{name[0]}-", dir="/tmp"))
        self.temps.append(temp)
        return self._start(name, [*_node_cmd(spec, free_ports(6), self.gcs), f"--temp-dir={temp}"])

    def nodes(self) -> list[dict]:
        r = subprocess.run(
            [BIN / "ray", "list", "nodes", f"--address={self.address}", "--format=json",
             "--detail"],
            capture_output=True, text=True, env=self.env, timeout=60,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr[-2000:]
        return json.loads(r.stdout)

    def stop(self) -> list[str]:
        """SIGTERM each node's ``ray start`` (workers first, the head last); each node has its
        own temp dir, so what names it is that node's (a node sharing the head's would wipe
        the head's runtime_env files when its agent starts)."""
        left = []
        for proc, temp in reversed(list(zip(self.procs, self.temps, strict=True))):
            left += stop_node(proc, temp)
            shutil.rmtree(temp, ignore_errors=True)
        return left


@pytest.fixture
def cluster(tmp_path):
    c = _Cluster(tmp_path)
    try:
        yield c
    finally:
        left = c.stop()
    assert not left, "processes of the cluster survived SIGTERM:\n" + "\n".join(left)


def test_the_kuberay_manifests_advertise_what_this_cluster_does():
    """One layout: the worker groups' resources and the entrypoint's pins of the KubeRay
    manifests are the ones the multi-node test starts and submits with."""
    for name in ("rayjob.yaml", "rayjob-mistral7b-gsm8k.yaml"):
        doc = yaml.safe_load((ROOT / "cluster" / "kuberay" / name).read_text())
        groups = {
            g["groupName"]: json.loads(json.loads(g["rayStartParams"]["resources"]))
            for g in doc["spec"]["rayClusterSpec"]["workerGroupSpecs"]
        }
        assert groups["rollout"] == ROLLOUT["resources"], name
        assert groups["learner"] == LEARNER["resources"], name
        assert "resources" not in doc["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParams"]
        for pin in PINNED:
            assert pin in doc["spec"]["entrypoint"], (name, pin)


def _raylet(node: subprocess.Popen) -> psutil.Process:
    """The raylet that a node's ``ray start --block`` started."""
    found = [p for p in psutil.Process(node.pid).children(recursive=True) if p.name() == "raylet"]
    assert len(found) == 1, found
    return found[0]


def _rows(out: Path) -> list[dict]:
    path = out / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _wait_for_log(
    cluster: _Cluster, job_id: str, text: str, count: int = 1, timeout: float = 300
) -> float:
    """Until the job's logs hold ``text`` ``count`` times (read through the job API, a cheap
    HTTP call); the monotonic time that was seen. A job that ended first fails the test."""

    def get(path: str):
        return api(cluster.address, cluster.token, f"jobs/{job_id}{path}")

    deadline, logs = time.monotonic() + timeout, ""
    while time.monotonic() < deadline:
        logs = (get("/logs") or {}).get("logs", logs)
        if logs.count(text) >= count:
            return time.monotonic()
        status = (get("") or {}).get("status", "RUNNING")
        assert status in ("PENDING", "RUNNING"), f"the job is {status}:\n{logs[-6000:]}"
        time.sleep(1)
    raise AssertionError(f"{text!r} not {count}x in the job's logs in {timeout:.0f} s:\n"
                         f"{logs[-4000:]}")  # fmt: skip


def _wait_for(out: Path, what: str, seen, job, timeout: float = 600) -> float:
    """Until a row of ``metrics.jsonl`` is ``seen``; the monotonic time it appeared."""
    deadline = time.monotonic() + timeout
    asked = time.monotonic()
    while time.monotonic() < deadline:
        if any(seen(r) for r in _rows(out)):
            return time.monotonic()
        if time.monotonic() - asked > 15:  # the job still runs
            status = ray_job(*job)
            text = status.stdout + status.stderr
            if "RUNNING" not in text and "PENDING" not in text:
                logs = ray_job(job[0], "logs", job[2]).stdout.splitlines()
                logs = [x for x in logs if "state-dump" not in x and "(raylet)" not in x]
                raise AssertionError(text[-1000:] + "\n".join(logs)[-6000:])
            asked = time.monotonic()
        time.sleep(0.5)
    raise AssertionError(f"no row with {what} in {timeout:.0f} s: {_rows(out)[-3:]}")


NODE_LOSS_RUN = [
    "data.train_size=16", "eval.task_size=20", "eval.heldout_size=10", "eval.every=0",
    "trainer.max_steps=30", "trainer.checkpoint_every=4", "schedule.warmup_steps=2",
]  # fmt: skip


def test_a_job_waits_for_late_nodes_pins_each_role_and_survives_losing_them(cluster, tmp_path):
    """Submitted before the learner node exists (it starts 20 s later); then the learner
    node's raylet is SIGKILLed mid-run and a replacement starts 10 s later: the learner group
    restarts there from the last checkpoint. Then the rollout node's: Ray restarts the engine
    on its replacement and the step it broke runs again."""
    rollout = cluster.add_node("rollout", ROLLOUT)
    out = tmp_path / "run"
    job_id = f"ray-s3ft-multinode-{secrets.token_hex(4)}"
    head = (cluster.address, cluster.env)
    submit = ray_job(
        head, "submit", f"--submission-id={job_id}",
        "--runtime-env=cluster/runtime_env.yaml", "--no-wait", "--",
        str(BIN / "ray-s3ft"), "train", "--config", "configs/default.yaml",
        *NODE_LOSS_RUN, *PINNED, "resources.wait_for_resources_s=180",
        "trainer.node_wait_s=300", f"trainer.output_dir={out}",
    )  # fmt: skip
    assert submit.returncode == 0, submit.stdout[-2000:] + submit.stderr[-2000:]
    submitted = time.monotonic()
    status = (head, "status", job_id)
    waits = _wait_for_log(cluster, job_id, "waiting for the cluster")  # the autoscaler's delay
    print(f"the preflight waited for nodes {waits - submitted:.0f} s after the submit")
    learner = cluster.add_node("learner", LEARNER)

    _wait_for(out, "step 5", lambda r: r["step"] >= 5, status)  # past the step-4 checkpoint
    print(f"step 5 done {time.monotonic() - submitted:.0f} s after the submit")
    _raylet(learner).kill()
    killed = time.monotonic()
    lost = "its node was lost; waiting up to"  # a new node comes up once the run waits
    noticed = _wait_for_log(cluster, job_id, lost)
    print(f"learner node lost: the run waited for a node {noticed - killed:.0f} s after the kill")
    cluster.add_node("learner2", LEARNER)
    back = _wait_for(out, "a learner restart", lambda r: r["faults/learner_restarts"], status)
    print(f"learner node lost: the next step was logged {back - killed:.0f} s after the kill")

    step = max(r["step"] for r in _rows(out))
    _wait_for(out, f"step {step + 2}", lambda r: r["step"] >= step + 2, status)
    _raylet(rollout).kill()
    killed = time.monotonic()
    noticed = _wait_for_log(cluster, job_id, lost, count=2)
    print(f"rollout node lost: the run waited for a node {noticed - killed:.0f} s after the kill")
    rollout2 = cluster.add_node("rollout2", ROLLOUT)
    back = _wait_for(out, "a second node loss", lambda r: r["faults/node_losses"] == 2, status)
    print(f"rollout node lost: the next step was logged {back - killed:.0f} s after the kill")
    logs = follow_to_success(head, job_id, timeout=900)
    rows = _rows(out)

    # ray job submit ran the run from the uploaded working dir (runtime_env.yaml, a relative
    # --config) and the driver's progress reached the job's logs
    assert "targets (s3ft)" in logs
    # the preflight waited for the learner node, naming what was missing, instead of failing
    assert "waiting for the cluster" in logs and "learner_slot" in logs
    assert "the cluster has what the run needs after" in logs
    # every step once; each lost node counted, with the group it took down
    assert [r["step"] for r in rows] == list(range(30))
    assert all(r["weights/version"] == r["step"] + 1 for r in rows)
    assert "its node was lost" in logs and "restarting the learner group from" in logs
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"]["sft"] + summary["steps"]["grpo"] == 30
    assert summary["checkpoint"] == str(out / "checkpoints" / "step_30")
    assert (out / "checkpoints" / "step_30" / "hf" / "model.safetensors").is_file()
    faults = summary["faults"]
    assert faults["node_losses"] == 2, faults
    assert faults["learner_restarts"] == 1 and faults["rollout_restarts"] == 1, faults
    # each role on a node of its kind: the replacements, at the end
    kinds = {}
    for node in cluster.nodes():
        if node["state"] == "ALIVE":
            res = node.get("resources_total") or {}
            kinds[node["node_id"]] = (
                "rollout" if "rollout_slot" in res else "learner" if "learner_slot" in res
                else "head"
            )  # fmt: skip
    assert sorted(kinds.values()) == ["head", "learner", "rollout"]
    placed = {role: [kinds.get(n) for n in ids] for role, ids in summary["nodes"].items()}
    assert placed["rollout"] == ["rollout"]
    assert placed["learner"] == ["learner", "learner"]
    assert len(placed["judge"]) == 2  # wherever there was room
    assert rollout2.poll() is None
    syncs = [r["timing/sync"] for r in rows]
    print(f"weight sync across nodes: mean {sum(syncs) / len(syncs):.3f} s over {len(syncs)} steps")


def test_with_node_wait_0_a_lost_learner_node_stops_the_run_with_how_to_resume(cluster, tmp_path):
    """``trainer.node_wait_s=0``: the job fails (exit status 1) naming the latest checkpoint
    and the command that resumes from it (``test_train_e2e`` resumes with it)."""
    cluster.add_node("rollout", ROLLOUT)
    learner = cluster.add_node("learner", LEARNER)
    out = tmp_path / "run"
    head = (cluster.address, cluster.env)
    cmd = [
        str(BIN / "ray-s3ft"), "train", "--config", "configs/default.yaml", *NODE_LOSS_RUN,
        "trainer.max_steps=12", *PINNED, "trainer.node_wait_s=0", f"trainer.output_dir={out}",
    ]  # fmt: skip
    job_id = f"ray-s3ft-nowait-{secrets.token_hex(4)}"
    submit = ray_job(head, "submit", f"--submission-id={job_id}",
                  "--runtime-env=cluster/runtime_env.yaml", "--no-wait", "--", *cmd)  # fmt: skip
    assert submit.returncode == 0, submit.stdout[-2000:] + submit.stderr[-2000:]
    _wait_for(out, "step 5", lambda r: r["step"] >= 5, (head, "status", job_id))
    _raylet(learner).kill()
    logs = ray_job(head, "logs", "--follow", job_id, timeout=300).stdout
    logs = "\n".join(x for x in logs.splitlines() if "state-dump" not in x)  # the raylet's
    status = ray_job(head, "status", job_id)
    assert "failed" in (status.stdout + status.stderr).lower(), status.stdout[-2000:]
    assert "trainer.node_wait_s=0: the run stopped" in logs, logs[-4000:]
    assert f"Its latest checkpoint is {out / 'checkpoints'}/step_" in logs, logs[-4000:]
    assert f"ray-s3ft train --config {out / 'config.yaml'}" in logs, logs[-4000:]
    assert "exit code 1" in (status.stdout + status.stderr + logs), status.stdout[-2000:]
