"""The stdio rule: what a stdio upstream's children did, from `stdio_child_exited` and `stdio_question_refused`.

Same contract as `rules.py`: ``(analysis, config) -> list[Proposal]``, nothing for healthy traffic. Its
evidence is counts of episodes with no denominator, as for lost sessions (`rules_upstream`): the proxy
counts no question it delivered, and a child's exit is no share of anything. So each decision has a
small absolute floor (`MIN_QUESTIONS_REFUSED`, `MIN_START_TIMEOUTS`, `MIN_CHILD_EXITS`) and a confidence
from the count (`proposal.confidence`). It speaks only on an upstream the file still runs as a child
(``command``), and proposes, per upstream:

- ``isolation: per_session`` (shared today) when the child's questions were refused because requests of
  several clients were in flight on it: with a child per session, each would have reached its client;
- a longer ``child.start_timeout`` when starts ran it out while other starts in the window came up: the
  child starts slowly, near the limit, rather than never;
- one advisory for the rest (no change, no diff, as `session_lost`'s): children that keep exiting, by
  reason, pointing at their stderr lines; questions no client waiting could be asked; questions past
  the proxy's bound.
"""

from __future__ import annotations

from collections import Counter

from proxy.analyzer.advice import AdvicePart, advisory
from proxy.analyzer.aggregate import Analysis
from proxy.analyzer.model import ChildExit, StdioStats, UpstreamStats
from proxy.analyzer.proposal import NOTHING, Addressed, Change, Effect, Proposal, confidence
from proxy.analyzer.scope import upstream_config, window_evidence
from proxy.analyzer.stats import format_duration, nice_duration, percentile
from proxy.config.model import ProxyConfig, UpstreamConfig

__all__ = ["stdio"]

MIN_QUESTIONS_REFUSED = 3
"""Questions of the child refused for one reason before the rule speaks. A count: the proxy does not count
the questions it delivered, so there is no share to bound; one or two are a chance overlap of two clients'
calls, three in the window are a pattern (as for breaker openings and lost sessions)."""
MIN_START_TIMEOUTS = 2
"""Starts that ran out `child.start_timeout` before a longer one is proposed. Two, not three: each costs the
whole limit and a backoff with no child up (every call waits, then gets 503), and the proposal also needs
a start that worked (`_longer_start_timeout`), which one unlucky start cannot give."""
MIN_CHILD_EXITS = 3
"""Unplanned exits of an upstream's children before the advisory speaks: one is a crash the supervisor
handled; a second may be its restart failing once; a third in the window is a loop."""
MAX_START_TIMEOUT_S = 300.0
"""The longest `child.start_timeout` proposed: every call that arrives meanwhile waits as long for a child."""
SHORT_UPTIME_S = 60.0
"""A child up less than this before it exited keeps the restart backoff growing (the supervisor starts the
count again only after a minute up): what a crash loop looks like."""
_QUESTIONS = {"sampling/createMessage": "sampling", "elicitation/create": "elicitation", "roots/list": "roots"}


def stdio(analysis: Analysis, config: ProxyConfig, addressed: Addressed = NOTHING) -> list[Proposal]:
    """Per stdio upstream in the file: ``isolation: per_session`` for questions refused on a shared child
    (`_per_session`), a longer ``child.start_timeout`` for starts that ran it out (`_longer_start_timeout`),
    one advisory for the rest (`_advice`). Nothing for an upstream whose children neither exited nor asked
    in vain, nor for one that is no longer a stdio upstream in the file."""
    proposals = []
    for stats in sorted(analysis.upstreams.values(), key=lambda s: s.name):
        upstream = upstream_config(config, stats.name)
        if upstream is None or not upstream.is_stdio or not stats.stdio:
            continue
        isolation = _per_session(analysis, stats.name, stats.stdio, upstream)
        longer = _longer_start_timeout(analysis, stats, upstream)
        covered = frozenset() if longer is None else longer[1]
        advice = _advice(analysis, stats, upstream, covered)
        proposals += [p for p in (isolation, None if longer is None else longer[0], advice) if p is not None]
    return proposals


def _listed(counts: dict[str, int]) -> str:
    """``2× exited with code 1, 1× was killed by SIGKILL``: the count first, since reasons hold numbers."""
    return ", ".join(f"{n}× {name}" for name, n in counts.items())


def _per_session(analysis: Analysis, name: str, stdio: StdioStats, upstream: UpstreamConfig) -> Proposal | None:
    """`MIN_QUESTIONS_REFUSED` questions refused because several clients were waiting on a shared child: give
    each legacy session a child of its own, so whatever a child asks is its one client's."""
    refused = stdio.refusals("several_clients")
    n = len(refused)
    if n < MIN_QUESTIONS_REFUSED or upstream.isolation != "shared":
        return None
    methods, most = stdio.methods("several_clients"), stdio.most_waiting.get("several_clients", 0)
    unsolicited = len(stdio.refusals("nobody_waiting"))
    level, why = confidence(n, MIN_QUESTIONS_REFUSED, "questions refused because several clients were waiting")
    children = upstream.child.max_children
    return Proposal(
        rule="stdio", target=name,
        title=f"Give each session of {name} a child of its own: {n} questions of its child reached no client",
        rationale=(
            f"The child of {name} asked {n} questions ({_listed(methods)}) while requests of several clients were in "
            f"flight on it (up to {most} at once). A stdio message names no request, so nobody could tell whose "
            f"question it was, and the proxy refused each to the child (-32603) rather than put one client's "
            f"question to another: the child got an error instead of an answer. With isolation: "
            f"per_session each legacy session gets a child of its own, initialized with its client's own "
            f"initialize, so whatever that child asks is its client's."
            + (f" Questions asked with no client waiting ({unsolicited} more) a per-session child sends to its "
               f"session's GET stream, when its client keeps one open." if unsolicited else "")
            + f" The cost: a process per session (at most child.max_children, {children}; a session past it gets "
            f"503 with Retry-After, and an idle one's child stops after child.idle_timeout), and state the server "
            f"keeps is no longer shared between clients. Clients of the 2026-07-28 era have no session: they "
            f"still share one child, and cannot be asked questions either way."
        ),
        evidence=window_evidence(
            analysis, refused, several_clients=n, methods=methods, clients_waiting_max=most, nobody_waiting=unsolicited,
            isolation="shared",
        ),
        effect=Effect(
            f"the {n} questions refused because several clients were waiting would have reached their client, each "
            f"asked by a child serving that client's session alone (for clients with a legacy session)",
            {"several_clients": n, "clients_waiting_max": most},
        ),
        confidence=level, confidence_reason=why,
        changes=(Change(name, None, "isolation", "per_session", "shared"),),
    )  # fmt: skip


def _longer_start_timeout(
    analysis: Analysis, stats: UpstreamStats, upstream: UpstreamConfig
) -> tuple[Proposal, frozenset[int]] | None:
    """(twice `child.start_timeout`, capped at `MAX_START_TIMEOUT_S`; the exits it covers) when
    `MIN_START_TIMEOUTS` starts ran it out and a start worked in the window too (`_came_up`).

    A start that ran out the limit is slow or stuck, and the events cannot time a start. What tells them
    apart is that the same command came up at other times: then its start-up straddles the limit (a cold
    ``npx``/``uvx`` fetching its package, a slow disk, a busy host), and a longer limit lets the slow starts
    finish. When no start worked, nothing shows that more time would help: that is the advisory's."""
    name, stdio, limit = stats.name, stats.stdio, upstream.child.start_timeout
    timed_out = [e for e in stdio.exits if e.start_timed_out]
    k = len(timed_out)
    new = nice_duration(2 * limit, cap=MAX_START_TIMEOUT_S)
    if k < MIN_START_TIMEOUTS or new <= limit:
        return None
    ran, ok_after = _came_up(stats, upstream, timed_out)
    if not ran and not ok_after:
        return None
    old, longer = format_duration(limit), format_duration(new)
    worked = []
    if ran:
        worked.append(f"{len(ran)} came up and ran before exiting")
    if ok_after:
        worked.append(f"{ok_after} calls succeeded after the first start that timed out, so a later child came up")
    level, why = confidence(k, MIN_START_TIMEOUTS, "starts that ran out child.start_timeout")
    proposal = Proposal(
        rule="stdio", target=name,
        title=f"Raise child.start_timeout for {name} from {old} to {longer}: {k} starts ran it out",
        rationale=(
            f"{k} children of {name} did not answer initialize within child.start_timeout ({old}) and were stopped "
            f"before they came up, while in the same window {' and '.join(worked)}: the command does start, only not always "
            f"within {old}. A start-up that straddles the limit (a cold npx or uvx fetching its package, a slow "
            f"disk, a busy host) finishes with more time; meanwhile each failed start left the upstream without a "
            f"child for the whole limit and a backoff, its calls waiting and then answered 503. The events cannot "
            f"time a start: if the child instead hangs now and then, a longer limit only makes each hang cost more; "
            f"the stderr lines of the children that timed out (stdio_child_stderr, "
            f"{_pids(timed_out)}) say which."
        ),
        evidence=window_evidence(
            analysis, [e.id for e in timed_out], start_timed_out=k, came_up=len(ran), ok_after_timeout=ok_after,
            start_timeout_s=limit,
        ),
        effect=Effect(
            f"each start gets {longer} instead of {old}: the {k} starts that ran out the limit would have come up if "
            f"they needed at most {longer}, and the upstream been down that much less",
            {"start_timed_out": k, "came_up": len(ran), "ok_after_timeout": ok_after, "new_start_timeout_s": new},
        ),
        confidence=level, confidence_reason=why,
        changes=(Change(name, None, "child.start_timeout", longer, old),),
    )  # fmt: skip
    return proposal, frozenset(e.id for e in timed_out)


def _came_up(stats: UpstreamStats, upstream: UpstreamConfig, timed_out: list[ChildExit]) -> tuple[list[ChildExit], int]:
    """(the children that came up in the window: those that exited while running; the successful calls in
    summary windows that began after the first start that timed out). The second counts only for a shared
    child: it is the upstream's one child, so a success after a failed start shows a later start worked;
    per session, another session's child may have been up all along."""
    ran = [e for e in stats.stdio.exits if e.phase == "running"]
    if upstream.isolation != "shared":
        return ran, 0
    first = min(e.ts for e in timed_out)
    return ran, sum(ok for (end, length), ok in stats.windows.items() if end - length >= first)


def _pids(exits: list[ChildExit]) -> str:
    """The process ids of the last five of `exits`, each once, as their stderr lines name them."""
    pids = list(dict.fromkeys(str(e.pid) for e in exits if e.pid is not None))[-5:]
    return f"pid{'s' if len(pids) > 1 else ''} {', '.join(pids)}" if pids else "no pid: they never ran"


def _advice(
    analysis: Analysis, stats: UpstreamStats, upstream: UpstreamConfig, covered: frozenset[int]
) -> Proposal | None:
    """One advisory for what no change is shown to mend: children that keep exiting (`_exits`, but those a
    longer start_timeout covers), questions no client waiting could be asked (`_not_askable`), questions
    past the proxy's bound (`_too_many`); each part past its floor."""
    name, stdio = stats.name, stats.stdio
    parts = [
        part for part in (_exits(stats, upstream, covered), _not_askable(name, stdio), _too_many(name, stdio))
        if part is not None
    ]  # fmt: skip
    if not parts:
        return None
    return advisory(analysis, rule="stdio", target=name, title=f"Children of {name}: ", parts=parts, examples=lambda ids: ids[-3:])


def _exits(stats: UpstreamStats, upstream: UpstreamConfig, covered: frozenset[int]) -> AdvicePart | None:
    """`MIN_CHILD_EXITS` unplanned exits (but those `covered`): by reason and phase, what the reasons hint
    at, the calls they cut off, and where the children's own words are (their stderr lines)."""
    name, stdio = stats.name, stats.stdio
    exits = [e for e in stdio.exits if e.id not in covered]
    n = len(exits)
    if n < MIN_CHILD_EXITS:
        return None
    reasons = dict(Counter(e.reason for e in exits).most_common())
    phases = Counter(e.phase for e in exits)
    running = sorted(e.uptime_ms for e in exits if e.phase == "running" and e.uptime_ms is not None)
    short = sum(1 for ms in running if ms < SHORT_UPTIME_S * 1000)
    cut_off = sum(e.cut_off for e in exits)
    said = [
        f"The children of {name} ended {n} times without the proxy stopping them ({_listed(reasons)}): "
        f"{phases['starting']} before answering initialize, {phases['running']} after coming up"
        + (f" ({short} of them within {format_duration(SHORT_UPTIME_S)}, median uptime "
           f"{format_duration((percentile(running, 0.5) or 0.0) / 1000)})" if running else "")
        + f". The proxy restarted each after a growing backoff ({stdio.restarts} restarts so far); "
        f"{cut_off} client requests in flight were cut off (retried onto the next child where the retry policy "
        f"allows, answered with an error otherwise)."
    ]  # fmt: skip
    said += _hints(stats, exits, upstream)
    said.append(_stderr(name, exits, upstream))
    evidence: dict[str, object] = {
        "exits": n,
        "phases": dict(phases),
        "reasons": reasons,
        "cut_off": cut_off,
        "restarts": stdio.restarts,
    }
    if running:
        evidence["shortest_uptime_ms"] = round(running[0], 1)
    return AdvicePart(
        title=f"{n} unplanned exits ({_listed(reasons)})",
        rationale=" ".join(said),
        effect=f"{n} children exited unplanned, cutting off {cut_off} requests in flight",
        numbers={"exits": n, "cut_off": cut_off},
        evidence=evidence,
        ids=[e.id for e in exits],
    )


def _hints(stats: UpstreamStats, exits: list[ChildExit], upstream: UpstreamConfig) -> list[str]:
    """What the reasons point at, for the families the proxy's words name; for starts that ran out the
    limit, why no longer one was proposed (`_longer_start_timeout`)."""
    hints = []
    early = [e for e in exits if e.phase == "starting" and not e.start_timed_out]
    if early:
        hints.append(
            f"{len(early)} exited before answering initialize: the command fails at start-up, typically a setting "
            f"it reads from its environment (the child gets only the upstream's env and a safe minimum of the "
            f"proxy's variables, not its whole environment: an API key the server needs must be in env), a wrong "
            f"argument or working directory."
        )
    stuck = [e for e in exits if e.start_timed_out]
    if stuck:
        said = f"{len(stuck)} did not answer initialize within child.start_timeout ({format_duration(upstream.child.start_timeout)})"
        ran, ok_after = _came_up(stats, upstream, stuck)
        if not ran and not ok_after:
            said += (
                " and no child came up in the window, so nothing shows a longer limit would help: a server that never "
                "answers is stuck or waits for something (input on a terminal, a login, a network it cannot reach). "
                "Run the command by hand and send it an initialize."
            )
        elif len(stuck) < MIN_START_TIMEOUTS:
            said += f"; other starts worked, and one is not yet a pattern (a longer limit is proposed from {MIN_START_TIMEOUTS})."
        else:
            said += f", already the longest proposed ({format_duration(MAX_START_TIMEOUT_S)}): look at what the child does at start-up."
        hints.append(said)
    if any("SIGKILL" in e.reason for e in exits):
        hints.append(
            "A child killed by SIGKILL that the proxy did not stop was most likely killed by the kernel's "
            "out-of-memory killer: check the memory limit of the container or cgroup, and the runtime's own "
            "(NODE_OPTIONS=--max-old-space-size in env for a Node server)."
        )
    if any("line over" in e.reason for e in exits):
        hints.append(
            "A child that wrote a line over the proxy's bound (8 MiB) is restarted, since the rest of its output "
            "cannot be trusted: a result that large is better asked for in pages."
        )
    return hints


def _stderr(name: str, exits: list[ChildExit], upstream: UpstreamConfig) -> str:
    """Where the children's own account of their end is, by the upstream's `stderr` setting."""
    pids = _pids(exits)
    if upstream.stderr == "log":
        return (
            f"Their own words are their stderr lines: stdio_child_stderr in the proxy's log, upstream {name}, {pids}."
        )
    if upstream.stderr == "inherit":
        return f"Their own words are their stderr lines, passed to the proxy's own stderr (stderr: inherit), {pids}."
    return "Their stderr is discarded (stderr: discard): set stderr: log to see in the proxy's log why they end."


def _not_askable(name: str, stdio: StdioStats) -> AdvicePart | None:
    """`MIN_QUESTIONS_REFUSED` questions the one client waiting could not be asked: the client's side."""
    refused = stdio.refusals("not_askable")
    n = len(refused)
    if n < MIN_QUESTIONS_REFUSED:
        return None
    methods = stdio.methods("not_askable")
    asked = sorted({_QUESTIONS.get(method, method) for method in methods})
    return AdvicePart(
        title=f"{n} questions the client waiting could not be asked",
        rationale=(
            f"The child of {name} asked {n} questions ({_listed(methods)}) while the one client waiting could not be "
            f"asked: its request accepted no SSE answer (an Accept without text/event-stream), or it speaks the "
            f"2026-07-28 era, which has no server-to-client requests on a stateless call. No setting of the "
            f"proxy's changes that: the server's {', '.join(asked)} reaches only legacy-era clients (2025-11-25 or "
            f"older) that accept text/event-stream, and its tools that ask fail for the others."
        ),
        effect=f"{n} questions of the child were refused because their client could not be asked",
        numbers={"not_askable": n},
        evidence={"not_askable": n, "not_askable_methods": methods},
        ids=refused,
    )


def _too_many(name: str, stdio: StdioStats) -> AdvicePart | None:
    """`MIN_QUESTIONS_REFUSED` questions refused at the proxy's bound on questions waiting for clients."""
    refused = stdio.refusals("too_many_questions")
    n = len(refused)
    if n < MIN_QUESTIONS_REFUSED:
        return None
    return AdvicePart(
        title=f"{n} questions past the bound on questions waiting",
        rationale=(
            f"The child of {name} asked {n} questions while 1,024 of its questions were already waiting on clients "
            f"(the proxy's bound): it asks faster than its clients answer, or asks without waiting for answers. "
            f"That is the server's or its clients' to fix; the proxy refuses the excess at once."
        ),
        effect=f"{n} questions of the child were refused at the bound",
        numbers={"too_many_questions": n},
        evidence={"too_many_questions": n},
        ids=refused,
    )
