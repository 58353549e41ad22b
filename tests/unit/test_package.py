"""Package hygiene: importing ray_s3ft is cheap, and the console script is wired."""

import subprocess
import sys
from pathlib import Path

HEAVY = ("vllm", "deepspeed", "ray", "torch", "transformers")


def _imported_after(stmt: str) -> set[str]:
    code = f"import sys; {stmt}; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return {m.split(".")[0] for m in out.stdout.split()}


def test_package_import_pulls_no_heavy_framework():
    loaded = _imported_after("import ray_s3ft, ray_s3ft.cli, ray_s3ft.config")
    assert not loaded & set(HEAVY), loaded & set(HEAVY)


def test_algorithm_core_imports_nothing_heavier_than_torch():
    loaded = _imported_after(
        "import ray_s3ft.algo.losses, ray_s3ft.algo.grpo, ray_s3ft.algo.targets, ray_s3ft.algo.schedules"
    )
    assert not loaded & {"vllm", "deepspeed", "ray", "transformers"}


def test_console_script_help():
    exe = Path(sys.executable).parent / "ray-s3ft"
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, check=True).stdout
    for cmd in ("eval", "config", "build-model"):
        assert cmd in out


# The package's rooms, top to bottom: a module may import its own room and the rooms below it.
LAYERS = (
    ("cli",),
    ("experiments",),
    ("run",),
    ("evaluation", "tracking"),
    ("workers",),
    ("algo", "verifiers", "tasks", "model", "config"),
    ("prompts", "console", "timing", "errors"),
)
PACKAGE = Path(__file__).resolve().parents[2] / "ray_s3ft"


def _imports() -> dict[str, set[str]]:
    """Every module of the package -> the package modules it imports, at its top or inside a
    function (a lazy import is still a dependency)."""
    import ast

    mods = {
        ".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__"): p
        for p in PACKAGE.rglob("*.py")
    }
    graph = {}
    for name, path in mods.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                cands = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                cands = [a.name for a in node.names]
            else:
                continue
            deps |= {c for c in cands if c in mods and c != name}
        graph[name] = deps
    return graph


def test_imports_only_run_down_the_rooms():
    level = {room: i for i, rooms in enumerate(LAYERS) for room in rooms}
    graph = _imports()
    rooms = {m.split(".")[1] if "." in m else "" for m in graph} - {""}
    assert rooms <= set(level), f"rooms missing from LAYERS: {rooms - set(level)}"
    up = [
        f"{m} -> {d}"
        for m, deps in graph.items()
        for d in deps
        if "." in m and level[d.split(".")[1]] < level[m.split(".")[1]]
    ]
    assert not up, "imports that run up:\n" + "\n".join(sorted(up))


def test_no_import_cycle():
    graph = _imports()
    done: set[str] = set()

    def visit(m: str, path: list[str]) -> None:
        if m in path:
            raise AssertionError("import cycle: " + " -> ".join(path[path.index(m) :] + [m]))
        if m in done:
            return
        for d in sorted(graph[m]):
            visit(d, [*path, m])
        done.add(m)

    for m in sorted(graph):
        visit(m, [])
