"""Applying a proposal: re-derived on the file as it is, validated, backed up, written atomically."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from proxy.analyzer import ApplyError, Proposal, analyze, apply_proposal
from proxy.config.model import load_config_file
from tests.analyzer import scenarios as sc

NOW = 1_700_000_000.0


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "proxy.yaml"
    path.write_text(sc.CONFIG)
    path.chmod(0o640)
    return path


def proposal(events: list[dict[str, object]] | None = None) -> Proposal:
    return analyze(events or sc.slow_search(), sc.CONFIG, env={})[1][0]


def test_apply_writes_the_change_and_a_backup(config_file: Path) -> None:
    p = proposal()
    backup = apply_proposal(config_file, p, env={}, now=NOW)
    assert backup.parent == config_file.parent
    assert backup.name.startswith("proxy.yaml.bak-2023")
    assert backup.read_text() == sc.CONFIG
    assert config_file.read_text() == sc.CONFIG + "      - match: {tool: search}\n        timeouts:\n          per_try: 4s\n"
    assert (config_file.stat().st_mode & 0o777, backup.stat().st_mode & 0o777) == (0o640, 0o640)
    policy = load_config_file(config_file, {}).upstreams[0].rules[-1]
    assert policy.timeouts is not None and policy.timeouts.per_try == 4.0
    assert sorted(f.name for f in config_file.parent.iterdir()) == sorted(["proxy.yaml", backup.name])


def test_a_second_backup_in_the_same_second_does_not_overwrite_the_first(config_file: Path) -> None:
    first = apply_proposal(config_file, proposal(), env={}, now=NOW)
    second = apply_proposal(config_file, proposal(sc.throttled()), env={}, now=NOW)
    assert first != second and first.read_text() == sc.CONFIG and "per_try: 4s" in second.read_text()


def test_changes_elsewhere_in_the_file_do_not_block_the_apply(config_file: Path) -> None:
    config_file.write_text("# edited by hand since\n" + sc.CONFIG.replace("failure_threshold: 5", "failure_threshold: 7"))
    apply_proposal(config_file, proposal(sc.flapping_breaker()), env={}, now=NOW)
    text = config_file.read_text()
    assert "reset_timeout: 1m        # then half-open" in text and "failure_threshold: 7" in text


def test_a_change_where_the_proposal_edits_is_refused(config_file: Path) -> None:
    config_file.write_text(sc.CONFIG.replace("reset_timeout: 30s       # then half-open", "reset_timeout: 45s"))
    with pytest.raises(ApplyError, match="changed where proposal 9b7dcc84ec edits it since the proposal was made"):
        apply_proposal(config_file, proposal(sc.flapping_breaker()), env={})
    assert [f.name for f in config_file.parent.iterdir()] == ["proxy.yaml"]


def test_an_applied_proposal_is_not_applied_twice(config_file: Path) -> None:
    p = proposal(sc.flapping_breaker())
    apply_proposal(config_file, p, env={}, now=NOW)
    with pytest.raises(ApplyError, match="already has the change of proposal 9b7dcc84ec"):
        apply_proposal(config_file, p, env={})


def test_an_apply_that_would_leave_an_invalid_file_writes_nothing(config_file: Path) -> None:
    config_file.write_text(sc.CONFIG.replace("max_attempts: 3          # the first included", "max_attempts: 0"))
    with pytest.raises(ApplyError, match=r"would make .* invalid: upstreams\[0\]\.retry\.max_attempts: must be >= 1 \(got 0\)"):
        apply_proposal(config_file, proposal(), env={})
    assert [f.name for f in config_file.parent.iterdir()] == ["proxy.yaml"]


def test_advice_cannot_be_applied(config_file: Path) -> None:
    with pytest.raises(ApplyError, match="advice only"):
        apply_proposal(config_file, proposal(sc.lost_sessions()), env={})


def test_the_write_is_atomic(config_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure at the final rename leaves the original file whole and no temporary file behind."""
    real_replace = os.replace

    def failing_replace(src: str, dst: str) -> None:
        if Path(dst) == config_file:
            raise OSError("disk full")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        apply_proposal(config_file, proposal(), env={}, now=NOW)
    assert config_file.read_text() == sc.CONFIG
    assert not [f for f in config_file.parent.iterdir() if f.name.endswith(".tmp")]


def test_apply_through_a_symlink_replaces_the_target_and_keeps_the_link(config_file: Path) -> None:
    link = config_file.parent / "link.yaml"
    link.symlink_to(config_file)
    apply_proposal(link, proposal(), env={}, now=NOW)
    assert link.is_symlink() and "per_try: 4s" in config_file.read_text()
