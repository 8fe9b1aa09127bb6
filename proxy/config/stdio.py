"""Config of a stdio upstream: an MCP server the proxy runs as a child process (``command: [argv...]``).

Split from `proxy.config.model`, which re-exports these names. Everything here is checked when the config
is loaded (serve, validate, reload alike), so a typo in a command never starts a proxy: the program must
be found as the child would find it (`program_problem`), and the working directory must exist.

The child's environment is not the proxy's: it gets the configured ``env`` over a minimal safe set taken
from the proxy's own (`child_environment`), as the official MCP SDK does (its ``get_default_environment``
passes HOME, LOGNAME, PATH, SHELL, TERM and USER; the locale and TMPDIR are added here so a child
decodes its arguments and finds its temporary directory as a shell-started one would). A proxy's
credentials (cloud keys, tokens in its environment) never reach a server unless the file passes them.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Final, Literal, TypeAlias

from pydantic import Field, model_validator

from proxy.config.units import ConfigModel, Duration

__all__ = [
    "Isolation",
    "ChildConfig",
    "ENV_NAME",
    "INHERITED_ENV",
    "INHERITED_ENV_PREFIXES",
    "MAX_ARG_CHARS",
    "MAX_ARGS",
    "MAX_ENV_ENTRIES",
    "MAX_ENV_VALUE_CHARS",
    "RestartBackoffConfig",
    "child_environment",
    "argv_problems",
    "start_problems",
    "env_problems",
]

Isolation: TypeAlias = Literal["shared", "per_session"]
"""How clients share a stdio server: one child for all (`shared`), or a child per legacy session."""

INHERITED_ENV: Final = ("HOME", "LOGNAME", "PATH", "SHELL", "TERM", "USER", "LANG", "TMPDIR")
"""The proxy's environment variables a child inherits (with `INHERITED_ENV_PREFIXES`); nothing else."""
INHERITED_ENV_PREFIXES: Final = ("LC_",)
ENV_NAME: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
"""A portable environment variable name (POSIX shells accept no other)."""

MAX_ARGS: Final = 256
MAX_ARG_CHARS: Final = 4096
MAX_ENV_ENTRIES: Final = 256
MAX_ENV_VALUE_CHARS: Final = 32 * 1024
"""Bounds on what a child is started with: far above any real server's command line, far below the
kernel's own limit on one argument or variable (128 KiB) and on them all (ARG_MAX, 2 MiB on Linux)."""


class RestartBackoffConfig(ConfigModel):
    """The wait before a child that exited or failed to start is started again: `base`, doubled with each
    failure in a row, at most `max` (a child that keeps crashing is not restarted in a busy loop)."""

    base: Duration = Field(0.5, gt=0, description="Wait before the first restart after a failure.")
    max: Duration = Field(30.0, gt=0, description="Longest wait between restarts.")

    @model_validator(mode="after")
    def _ordered(self) -> RestartBackoffConfig:
        if self.base > self.max:
            raise ValueError(f"base ({self.base:g}s) is above max ({self.max:g}s)")
        return self


class ChildConfig(ConfigModel):
    """How the proxy starts, stops and restarts a stdio upstream's child processes."""

    start_timeout: Duration = Field(
        30.0,
        gt=0,
        description="From spawning a child to its answer to the proxy's initialize; past it the start has failed "
        "(the child is stopped, and started again after restart_backoff).",
    )
    stop_grace: Duration = Field(
        2.0,
        ge=0,
        description="How long a stopping child may take to exit once its stdin is closed before it gets SIGTERM, and "
        "as long again before SIGKILL (the official SDK waits 2s each).",
    )
    restart_backoff: RestartBackoffConfig = Field(default_factory=RestartBackoffConfig)  # type: ignore[arg-type]
    max_children: int = Field(
        32,
        ge=1,
        description="With isolation: per_session, the most children alive at once (one per session); a new session "
        "past it is refused.",
    )
    idle_timeout: Duration = Field(
        600.0,
        gt=0,
        description="With isolation: per_session, a child whose session sent no request and held no open stream "
        "(GET or listen) this long is stopped, and its session ends (the session keeper rebuilds it on its next "
        "request). An SDK client holds its GET stream while connected: its child stays.",
    )


def child_environment(env: Mapping[str, str], parent: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment a child starts with: the safe part of `parent` (the proxy's, read when None), with
    `env` (the upstream's configured ``env``) over it. A value that starts with ``()`` is an exported shell
    function, never inherited (the SDK skips those too: a function can run code in a shell child)."""
    parent = os.environ if parent is None else parent
    inherited = {
        name: value
        for name, value in parent.items()
        if (name in INHERITED_ENV or name.startswith(INHERITED_ENV_PREFIXES)) and not value.startswith("()")
    }
    return {**inherited, **env}


def env_problems(env: Mapping[object, object]) -> list[tuple[tuple[int | str, ...], str]]:
    """What is wrong with a configured ``env`` as written, each with its location under it (the name at
    fault). A value is never quoted back: environment values are where secrets go."""
    problems: list[tuple[tuple[int | str, ...], str]] = []
    for name, value in env.items():
        where = (str(name),)
        if not isinstance(name, str) or not ENV_NAME.match(name):
            problems.append((where, f"not a variable name: must match {ENV_NAME.pattern}"))
        elif not isinstance(value, str):
            problems.append((where, f"must be a string (got {type(value).__name__}): quote it in the file"))
        elif len(value) > MAX_ENV_VALUE_CHARS:
            problems.append((where, f"must be at most {MAX_ENV_VALUE_CHARS} characters (got {len(value)})"))
        elif "\0" in value:
            problems.append((where, "must not contain a NUL character"))
    return problems


def argv_problems(command: tuple[str, ...]) -> list[tuple[tuple[int | str, ...], str]]:
    """What no process could be started with, each at its item of `command`: an empty program, an argument
    over `MAX_ARG_CHARS`, a NUL (the kernel takes C strings). An argument is never quoted back: it may
    carry a token."""
    problems: list[tuple[tuple[int | str, ...], str]] = []
    if command and not command[0]:
        problems.append(((0,), "the program to run must not be empty"))
    for index, argument in enumerate(command):
        if len(argument) > MAX_ARG_CHARS:
            problems.append(((index,), f"must be at most {MAX_ARG_CHARS} characters (got {len(argument)})"))
        elif "\0" in argument:
            problems.append(((index,), "must not contain a NUL character"))
    return problems


def start_problems(
    command: tuple[str, ...], env: Mapping[str, str], cwd: str | None
) -> list[tuple[tuple[int | str, ...], str]]:
    """What would keep a valid `command` from starting here, each at its key of the upstream: a working
    directory that is not one, a program not found.

    The program is looked up as the child's start will look it up: a name without a slash on the child's
    PATH (the configured ``env`` PATH, else the proxy's), a path with one relative to `cwd`."""
    if cwd is not None and ("\0" in cwd or not Path(cwd).is_dir()):
        return [(("cwd",), f"not a directory (got {cwd!r})")]
    program = command[0]
    if "/" in program:
        where = Path(cwd or ".") / program
        if not where.exists():
            base = cwd or "the proxy's working directory"
            relative = "" if program.startswith("/") else f" (relative to {base})"
            return [(("command",), f"{program!r} not found{relative}")]
        if not where.is_file() or not os.access(where, os.X_OK):
            return [(("command",), f"{program!r} is not an executable file")]
        return []
    path = child_environment(env).get("PATH", os.defpath)
    if shutil.which(program, path=path) is None:
        configured = " (the PATH set in env)" if "PATH" in env else ""
        return [(("command",), f"{program!r} not found on PATH{configured}")]
    return []
