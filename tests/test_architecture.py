"""The architecture, held by tests so the README's test command enforces it.

- The import contracts in pyproject.toml (`[tool.importlinter]`: the layers, `proxy.mcp` pure, the
  analyzer offline, policies never the server, the HTTP/1.1 client private to `proxy.upstream`, config
  standalone) are checked by running `lint-imports`, exactly as `.ci/run` does.
- Background tasks are started only by `proxy.tasks.spawn` and stopped by `proxy.tasks.cancel_and_wait`
  (STYLE.md habit 8). Ruff (TID251) bans `asyncio.create_task` and `asyncio.ensure_future`; it cannot
  see `loop.create_task` or a `.cancel()` nobody awaits, so this module reads `proxy/` with `ast` and
  counts every way of starting a task and every `.cancel()` of something other than a timer handle,
  per file. The sites that predate `proxy.tasks` are listed below; a new site fails the test.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "proxy"

SPAWN_SITES: dict[tuple[str, str], int] = {}  # none left: every task starts through proxy.tasks.spawn
"""Tasks started other than by `spawn`: at most this many per (file, call). Upper bounds, so moving a
site to `spawn` passes at once; the entry goes when its count reaches 0."""

CANCEL_SITES: dict[tuple[str, str], int] = {
    # A deadline cancels the attempt's own task, which catches it (the `asyncio.timeout` idiom).
    ("proxy/policies/timeout.py", "self.task"): 1,
}
"""`.cancel()` calls outside `proxy/tasks.py`: at most this many per (file, receiver). Cancelling a handle
from `loop.call_later` / `call_at` / `call_soon` (a timer) is synchronous, nothing runs after it, so
those are not counted: the scan knows them by their assignment in the same module."""

HANDLE_FACTORIES = frozenset({"call_later", "call_at", "call_soon", "call_soon_threadsafe"})
STARTERS = frozenset({"create_task", "ensure_future"})


def test_import_contracts_hold() -> None:
    """`lint-imports` (import-linter) keeps every contract in pyproject.toml; its report says which broke."""
    run = subprocess.run(
        [sys.executable, "-c", "from importlinter.cli import lint_imports_command; lint_imports_command()",
         "--no-cache", "--no-logo"],
        cwd=REPO, capture_output=True, text=True, timeout=100,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert "0 broken" in run.stdout


def _task_groups(tree: ast.AST) -> set[str]:
    """Names bound by ``async with asyncio.TaskGroup() as name``: their tasks are owned and awaited by the group."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.AsyncWith):
            for item in node.items:
                call = item.context_expr
                if (
                    isinstance(call, ast.Call)
                    and ast.unparse(call.func) in ("asyncio.TaskGroup", "TaskGroup")
                    and isinstance(item.optional_vars, ast.Name)
                ):
                    names.add(item.optional_vars.id)
    return names


def _handles(tree: ast.AST) -> set[str]:
    """What is assigned a handle from ``loop.call_later(...)`` and the like (``self._timer``, ``handle``)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign | ast.AnnAssign) and isinstance(node.value, ast.Call):
            func = node.value.func
            if isinstance(func, ast.Attribute) and func.attr in HANDLE_FACTORIES:
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                names.update(ast.unparse(target) for target in targets)
    return names


def _sites(source: str) -> tuple[Counter[str], Counter[str]]:
    """(calls that start a task, receivers of `.cancel()` other than timer handles) in one module, counted."""
    tree = ast.parse(source)
    groups = _task_groups(tree)
    handles = _handles(tree)
    spawns: Counter[str] = Counter()
    cancels: Counter[str] = Counter()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id in STARTERS:
            spawns[func.id] += 1
        elif isinstance(func, ast.Attribute) and func.attr in STARTERS:
            if not (isinstance(func.value, ast.Name) and func.value.id in groups):
                spawns[ast.unparse(func)] += 1
        elif isinstance(func, ast.Attribute) and func.attr == "Task" and ast.unparse(func.value) == "asyncio":
            spawns["asyncio.Task"] += 1
        elif isinstance(func, ast.Attribute) and func.attr == "cancel" and ast.unparse(func.value) not in handles:
            cancels[ast.unparse(func.value)] += 1
    return spawns, cancels


def _over(found: Counter[tuple[str, str]], allowed: dict[tuple[str, str], int]) -> list[str]:
    return [f"{path}: {what} x{count} (allowed {allowed.get((path, what), 0)})"
            for (path, what), count in sorted(found.items()) if count > allowed.get((path, what), 0)]  # fmt: skip


def test_tasks_are_started_only_by_spawn() -> None:
    found: Counter[tuple[str, str]] = Counter()
    for path in sorted(PACKAGE.rglob("*.py")):
        name = path.relative_to(REPO).as_posix()
        if name == "proxy/tasks.py":
            continue
        spawns, _ = _sites(path.read_text(encoding="utf-8"))
        found.update({(name, what): count for what, count in spawns.items()})
    assert _over(found, SPAWN_SITES) == [], "start background tasks with proxy.tasks.spawn(coro, name=, owner=)"


def test_tasks_are_cancelled_only_by_cancel_and_wait() -> None:
    found: Counter[tuple[str, str]] = Counter()
    for path in sorted(PACKAGE.rglob("*.py")):
        name = path.relative_to(REPO).as_posix()
        if name == "proxy/tasks.py":
            continue
        _, cancels = _sites(path.read_text(encoding="utf-8"))
        found.update({(name, what): count for what, count in cancels.items()})
    assert _over(found, CANCEL_SITES) == [], (
        "stop tasks with `await proxy.tasks.cancel_and_wait(owner)` (a timer handle's cancel() is not counted "
        "when the handle is assigned from loop.call_later/call_at/call_soon in the same module)"
    )


def test_the_scan_sees_every_way_of_starting_and_cancelling() -> None:
    """The scanner itself: what counts as starting a task, what a TaskGroup owns, what a cancel is."""
    source = (
        "import asyncio\n"
        "from asyncio import create_task\n"
        "async def f(loop):\n"
        "    asyncio.create_task(g())\n"
        "    asyncio.ensure_future(g())\n"
        "    loop.create_task(g())\n"
        "    asyncio.get_running_loop().create_task(g())\n"
        "    create_task(g())\n"
        "    asyncio.Task(g())\n"
        "    async with asyncio.TaskGroup() as tg:\n"
        "        tg.create_task(g())\n"
        "    self._task.cancel()\n"
        "    task.cancel('why')\n"
        "    self._timer = loop.call_later(1, g)\n"
        "    self._timer.cancel()\n"
        "    handle: asyncio.TimerHandle = loop.call_at(1, g)\n"
        "    handle.cancel()\n"
    )
    spawns, cancels = _sites(source)
    assert spawns == Counter({
        "asyncio.create_task": 1, "asyncio.ensure_future": 1, "loop.create_task": 1,
        "asyncio.get_running_loop().create_task": 1, "create_task": 1, "asyncio.Task": 1,
    })  # fmt: skip
    assert cancels == Counter({"self._task": 1, "task": 1})
