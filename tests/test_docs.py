"""The documentation cannot drift from the code: the config table is the model's, every link lands, the
error and event tables name every code and type, the limits table names only constants that exist, and the
README stays a newcomer's page with its two commands.

Nothing here runs the proxy; the files are read as a reader (or GitHub) would.
"""

from __future__ import annotations

import ast
import json
import re
import resource
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from proxy import errors
from tests import docs_gen
from tests.conftest import REPO

README = REPO / "README.md"
DOCS = REPO / "docs"
PAGES = [README, *sorted(DOCS.rglob("*.md"))]
DEMO_COMMAND = "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/mcp-resilience-proxy demo"
TEST_COMMAND = "bash .ci/run"
README_MAX_LINES = 200

LIMITS_HEADER = "| bound | default | what happens past it |"
ERRORS_HEADER = "| situation | HTTP | JSON-RPC `code` | `data.reason` |"
EVENT_TYPES_HEADER = "| type | when | fields of its own |"

_FENCE = re.compile(r"^\s*(```|~~~)")
_LINK = re.compile(r"(?<!\!)\[(?:[^\[\]]|\[[^\]]*\])*\]\(([^()\s]+)\)")
_CODE_SPAN = re.compile(r"`[^`]*`")


def prose_lines(path: Path) -> list[str]:
    """The lines of a Markdown page outside fenced code blocks (where ``# comment`` is no heading)."""
    lines, fenced = [], False
    for line in path.read_text(encoding="utf-8").splitlines():
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).replace("`", "").lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: Counter[str] = Counter()
    found = set()
    for line in prose_lines(path):
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            base = slug(match.group(1))
            found.add(base if seen[base] == 0 else f"{base}-{seen[base]}")
            seen[base] += 1
    return found


def table(path: Path, header: str) -> list[str]:
    """The rows of the table under `header` in `path` (header and separator excluded)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    start = lines.index(header) + 2
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append(line)
    return rows


def cells(row: str) -> list[str]:
    return [cell.strip() for cell in re.split(r"(?<!\\)\|", row.strip())[1:-1]]


# --- the configuration table -------------------------------------------------------------------------


def page_rows() -> list[docs_gen.Row]:
    return docs_gen.parse_table(docs_gen.table_in((DOCS / "configuration.md").read_text(encoding="utf-8")))


def test_the_config_table_has_every_key_of_the_model_and_no_other() -> None:
    documented = [row.key for row in page_rows()]
    model = [row.key for row in docs_gen.config_rows()]
    assert (sorted(set(model) - set(documented)), sorted(set(documented) - set(model))) == ([], []), (
        "missing from / not in the model; run python -m tests.docs_gen --write"
    )
    assert [key for key, count in Counter(documented).items() if count > 1] == []


def test_the_config_tables_defaults_are_the_models() -> None:
    model = {row.key: row.default for row in docs_gen.config_rows()}
    differ = {row.key: (row.default, model[row.key]) for row in page_rows() if model.get(row.key, row.default) != row.default}
    assert differ == {}, "documented vs model default; run python -m tests.docs_gen --write"


def test_the_config_table_is_the_generated_one() -> None:
    text = (DOCS / "configuration.md").read_text(encoding="utf-8")
    assert docs_gen.table_in(text) == docs_gen.render_table(), "run python -m tests.docs_gen --write"
    assert docs_gen.main(["--check"]) == 0


def test_every_config_key_says_what_it_means() -> None:
    assert [row.key for row in docs_gen.config_rows() if not row.meaning] == []


def test_the_table_renders_values_as_a_user_writes_them() -> None:
    rows = {row.key: row for row in docs_gen.config_rows()}
    assert [rows[key].default for key in ("limits.max_body_bytes", "upstreams[].retry.backoff.base", "analyzer.window")] == [
        "`4MiB`", "`100ms`", "`5m`",
    ]
    assert rows["upstreams[].retry.retry_on"].default == "`[connect_error, timeout, http_5xx, http_429]`"
    assert (rows["upstreams[].name"].default, rows["upstreams[].cache"].default, rows["client_identity.header"].default) == (
        "required", "off", "unset",
    )
    assert rows["upstreams[].retry.max_attempts"].type == "integer ≥ 1, ≤ 20"
    assert rows["security.forwarded_headers"].type == "`append` | `overwrite` | `pass`"
    assert docs_gen.parse_table(docs_gen.render_table()) == docs_gen.config_rows()


# --- links -----------------------------------------------------------------------------------------------


def links(path: Path) -> list[str]:
    found = []
    for line in prose_lines(path):
        found += _LINK.findall(_CODE_SPAN.sub("", line))
    return found


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_link_reaches_a_file_and_heading(page: Path) -> None:
    broken = []
    for target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ... : not ours to check offline
            continue
        path_part, _, anchor = target.partition("#")
        resolved = (page.parent / path_part).resolve() if path_part else page
        if not resolved.is_file() or REPO not in resolved.parents:
            broken.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target}: no heading #{anchor} in {resolved.relative_to(REPO)}")
    assert broken == []


def test_every_docs_page_is_linked_from_somewhere() -> None:
    linked = {(page.parent / target.partition("#")[0]).resolve() for page in PAGES for target in links(page)}
    assert [str(p.relative_to(REPO)) for p in PAGES[1:] if p.resolve() not in linked] == []


def test_the_slugs_follow_github() -> None:
    assert slug("What `/readyz` means") == "what-readyz-means"
    assert slug("Failure events (schema v1)") == "failure-events-schema-v1"
    assert slug("The analyzer: proposals from the proxy's own failures") == "the-analyzer-proposals-from-the-proxys-own-failures"


# --- the README ------------------------------------------------------------------------------------------


def test_the_readme_is_a_newcomers_page_with_the_two_commands() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES
    section = lines[lines.index("## Two commands") :]
    block = section[section.index("```sh") + 1 :]
    block = block[: block.index("```")]
    assert [line for line in block if line and not line.startswith("#")] == [DEMO_COMMAND, TEST_COMMAND]
    assert (REPO / ".ci" / "run").is_file()
    assert 'mcp-resilience-proxy = "proxy.cli.main:main"' in (REPO / "pyproject.toml").read_text(encoding="utf-8")


def test_the_demo_command_exists() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "demo", "--help"], cwd=REPO, capture_output=True, text=True, timeout=60, check=False
    )
    assert (result.returncode, result.stderr) == (0, "")


# --- the one error table, the events table, the one limits table --------------------------------------


def test_there_is_one_limits_table_and_one_error_table() -> None:
    def count(header: str) -> int:
        return sum(line == header for page in PAGES for line in page.read_text(encoding="utf-8").splitlines())

    assert (count(LIMITS_HEADER), count(ERRORS_HEADER)) == (1, 1)


def proxy_errors() -> list[type[errors.ProxyError]]:
    found, todo = [], [errors.ProxyError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo += cls.__subclasses__()
    return found


def test_the_error_table_has_every_code_and_reason_of_the_proxy() -> None:
    rows = [cells(row) for row in table(DOCS / "failure-semantics.md", ERRORS_HEADER)]
    pairs = {(cls.code, cls.reason) for cls in proxy_errors()}
    missing = [
        (code, reason)
        for code, reason in sorted(pairs)
        if not any(str(code) in row[2] and f"`{reason}`" in row[3] for row in rows)
    ]
    assert missing == []


_REASON = re.compile(r"[a-z][a-z0-9_]*")
REFUSERS = frozenset({"_refuse", "raw_error"})
"""Functions of `proxy/server/listener.py` that answer with a reason given as their third argument."""


def emitted_reasons() -> dict[str, str]:
    """Every ``data.reason`` (and ``X-Mcp-Proxy-Error``) the proxy's own answers can carry, with where each is
    written: found in ``proxy/`` with `ast` wherever a reason is spelled out, i.e. the value of a
    ``{"reason": ...}`` dict, a string assigned to a variable named ``reason`` (also in a tuple assignment,
    a conditional expression, an ``or``, or a ``.get(code, "default")`` of a module-level dict, whose values
    count too), a ``reason=`` keyword argument, the third argument of `REFUSERS`, and the ``reason`` of every
    `ProxyError` class."""
    found: dict[str, str] = {cls.reason: "proxy/errors.py" for cls in proxy_errors() if cls.reason}
    for path in sorted((REPO / "proxy").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        tables = {
            target.id: node.value
            for node in tree.body
            if isinstance(node, ast.Assign | ast.AnnAssign) and isinstance(node.value, ast.Dict)
            for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
            if isinstance(target, ast.Name)
        }
        where = str(path.relative_to(REPO))

        def add(value: ast.expr | None, line: int) -> None:
            if isinstance(value, ast.Constant) and isinstance(value.value, str) and _REASON.fullmatch(value.value):
                found.setdefault(value.value, f"{where}:{line}")  # noqa: B023 - used at once, in this loop
            elif isinstance(value, ast.IfExp):
                add(value.body, line)
                add(value.orelse, line)
            elif isinstance(value, ast.BoolOp):  # exc.reason or _REJECTED_AS.get(...)
                for operand in value.values:
                    add(operand, line)
            elif isinstance(value, ast.Call) and isinstance(value.func, ast.Attribute) and value.func.attr == "get":
                for default in value.args[1:]:
                    add(default, line)
                table = tables.get(value.func.value.id) if isinstance(value.func.value, ast.Name) else None  # noqa: B023
                for entry in table.values if table is not None else []:
                    add(entry, line)

        for node in ast.walk(tree):
            if isinstance(node, ast.keyword) and node.arg == "reason":  # MessageError(..., reason="too_many_values")
                add(node.value, getattr(node, "lineno", 0))
            elif isinstance(node, ast.Dict):
                for key, value in zip(node.keys, node.values, strict=True):
                    if isinstance(key, ast.Constant) and key.value == "reason":
                        add(value, node.lineno)
            elif isinstance(node, ast.Assign):
                for target in node.targets:
                    if isinstance(target, ast.Name) and target.id == "reason":
                        add(node.value, node.lineno)
                    elif isinstance(target, ast.Tuple) and isinstance(node.value, ast.Tuple):
                        for name, value in zip(target.elts, node.value.elts, strict=False):
                            if isinstance(name, ast.Name) and name.id == "reason":
                                add(value, node.lineno)
            elif isinstance(node, ast.Call) and len(node.args) >= 3:
                func = node.func
                if (func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)) in REFUSERS:
                    add(node.args[2], node.lineno)
    return found


def test_the_error_table_has_a_row_for_every_reason_the_proxy_answers_with() -> None:
    """Not only the `ProxyError` classes: the listener's and the handler's own refusals (``bad_json``,
    ``no_endpoint``, ``internal_error``...) each have a row naming their reason."""
    emitted = emitted_reasons()
    assert {"bad_json", "not_jsonrpc", "no_endpoint", "header_timeout", "internal_error", "rate_limited"} <= set(emitted)
    assert {"bad_http_request", "missing_host", "body_timeout", "too_many_values"} <= set(emitted)
    documented = {
        reason for row in table(DOCS / "failure-semantics.md", ERRORS_HEADER) for reason in re.findall(r"`(\w+)`", cells(row)[3])
    }
    assert {reason: where for reason, where in sorted(emitted.items()) if reason not in documented} == {}


def test_the_events_table_has_every_type_of_the_schema() -> None:
    schema = json.loads((REPO / "config" / "events.schema.json").read_text(encoding="utf-8"))
    documented = {name for row in table(DOCS / "events.md", EVENT_TYPES_HEADER) for name in re.findall(r"`(\w+)`", cells(row)[0])}
    assert set(schema["properties"]["type"]["enum"]) - documented == set()
    assert documented - set(schema["properties"]["type"]["enum"]) == set()


def module_constants() -> set[str]:
    names = set()
    for path in (REPO / "proxy").rglob("*.py"):
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
            names |= {t.id for t in targets if isinstance(t, ast.Name)}
    return names


def test_the_limits_and_error_tables_name_constants_and_keys_that_exist() -> None:
    rows = table(DOCS / "operations.md", LIMITS_HEADER) + table(DOCS / "failure-semantics.md", ERRORS_HEADER)
    named = {name for row in rows for name in re.findall(r"`([A-Z][A-Z0-9]*_[A-Z0-9_]+)`", row)}
    the_systems = {name for name in named if hasattr(resource, name) or hasattr(socket, name)}  # RLIMIT_NOFILE, ...
    assert named and named - module_constants() - the_systems == set()
    keys = {row.key.replace("[]", "") for row in docs_gen.config_rows()}
    sections = {part for key in keys for part in key.split(".")[:-1]}
    dotted = {
        name for row in rows for name in re.findall(r"`([a-z_]+(?:\.[a-z_]+)+)`", row) if name.split(".")[0] in sections
    }
    assert dotted and {name for name in dotted if not any(key.endswith(name) for key in keys)} == set()
