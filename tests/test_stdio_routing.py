"""`proxy.upstream.stdio.routing`: whose each message of a stdio child is, with many clients over it.

Pure state, no I/O: every test admits client requests, feeds the child's messages to `Switchboard.route`
and asserts exactly what each inbox holds, what goes back to the child, and what is counted as dropped.
A Hypothesis property closes it: for any interleaving of several owners' requests and the child's answers
(in any order), each caller gets exactly its own answer under its own id, and nobody else's.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.upstream.stdio import modern
from proxy.upstream.stdio.routing import (
    ABANDONED_FOR,
    INBOX,
    MAX_ASKED,
    STREAM_INBOX,
    Asked,
    Caller,
    ChildLost,
    Inbox,
    Listener,
    Session,
    Switchboard,
)


def req(request_id: Any, method: str = "tools/call", token: Any = None, **params: Any) -> dict[str, Any]:
    body: dict[str, Any] = dict(params)
    if token is not None:
        body["_meta"] = {"progressToken": token}
    return {"jsonrpc": "2.0", "id": request_id, "method": method, "params": body}


def result(child_id: Any, value: Any = "ok") -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": child_id, "result": {"value": value}}


def progress(token: Any, n: int = 1) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progressToken": token, "progress": n}}


def log_line(level: str, data: Any = "x") -> dict[str, Any]:
    return {"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": level, "data": data}}


def question(child_id: Any, method: str = "sampling/createMessage") -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": child_id, "method": method, "params": {"x": 1}}


def drain(inbox: Inbox) -> list[Any]:
    return [inbox._items.popleft() for _ in range(len(inbox))]


def refusal(child_id: Any, why: str) -> list[dict[str, Any]]:
    return [{"jsonrpc": "2.0", "id": child_id, "error": {"code": -32603, "message": f"mcp proxy: {why}"}}]


NOBODY = "no client request is in flight to ask"
SEVERAL = "requests of several clients are in flight, so whose this is cannot be told (isolation: per_session)"
TOO_MANY = "too many questions are waiting on clients"
NOT_ASKABLE = "the client cannot be asked (no session, or it does not accept a stream)"


# -- ids ------------------------------------------------------------------------------------------


def test_ids_are_renamed_to_distinct_integers_and_restored() -> None:
    board = Switchboard()
    a, to_child_a = board.admit("A", req(7), 1, askable=True)
    b, to_child_b = board.admit("B", req("seven"), 1, askable=True)
    assert to_child_a == {**req(7), "id": a.child_id}
    assert to_child_b == {**req("seven"), "id": b.child_id}
    assert type(a.child_id) is int and type(b.child_id) is int and a.child_id != b.child_id
    assert board.route(1, result(b.child_id, "b")) == []
    assert board.route(1, result(a.child_id, "a")) == []
    assert drain(a.inbox) == [result(7, "a")]
    assert drain(b.inbox) == [result("seven", "b")]
    assert board.callers == {}
    assert board.dropped == 0


def test_colliding_client_ids_of_two_owners_never_meet() -> None:
    board = Switchboard()
    a, sent_a = board.admit("A", req(1), 1, askable=True)
    b, sent_b = board.admit("B", req(1), 1, askable=True)
    assert sent_a["id"] != sent_b["id"]
    board.route(1, result(sent_b["id"], "for B"))
    board.route(1, result(sent_a["id"], "for A"))
    assert drain(a.inbox) == [result(1, "for A")]
    assert drain(b.inbox) == [result(1, "for B")]


def test_an_error_answer_is_restored_too() -> None:
    board = Switchboard()
    a, sent = board.admit("A", req("x"), 1, askable=False)
    error = {"jsonrpc": "2.0", "id": sent["id"], "error": {"code": -32601, "message": "nope"}}
    board.route(1, error)
    assert drain(a.inbox) == [{**error, "id": "x"}]


def test_the_admitted_message_is_not_modified() -> None:
    board = Switchboard()
    original = req(3, token="t")
    snapshot = {**original, "params": {**original["params"], "_meta": dict(original["params"]["_meta"])}}
    board.admit("A", original, 1, askable=True)
    assert original == snapshot


@pytest.mark.parametrize("bad_id", [999, "1", None, True, 1.0])
def test_a_response_with_an_unknown_id_is_dropped_and_counted(bad_id: Any) -> None:
    board = Switchboard()
    a, _ = board.admit("A", req(1), 1, askable=True)
    assert a.child_id == 1
    assert board.route(1, {"jsonrpc": "2.0", "id": bad_id, "result": {}}) == []
    assert len(a.inbox) == 0
    assert board.dropped == 1
    assert a.child_id in board.callers


def test_a_second_answer_to_the_same_id_is_dropped() -> None:
    board = Switchboard()
    a, sent = board.admit("A", req(1), 1, askable=True)
    board.route(1, result(sent["id"], "first"))
    board.route(1, result(sent["id"], "second"))
    assert drain(a.inbox) == [result(1, "first")]
    assert board.dropped == 1


def test_a_released_caller_answer_is_dropped() -> None:
    board = Switchboard()
    a, sent = board.admit("A", req(1), 1, askable=True)
    board.release(a)
    board.release(a)  # twice is harmless
    board.route(1, result(sent["id"]))
    assert len(a.inbox) == 0
    assert board.dropped == 1


def test_a_batch_from_the_child_is_dropped() -> None:
    board = Switchboard()
    a, sent = board.admit("A", req(1), 1, askable=True)
    assert board.route(1, [result(sent["id"])]) == []
    assert board.dropped == 1
    assert len(a.inbox) == 0


# -- progress -------------------------------------------------------------------------------------


def test_progress_tokens_are_renamed_and_restored_across_owners() -> None:
    board = Switchboard()
    a, sent_a = board.admit("A", req(1, token="tok"), 1, askable=True)
    b, sent_b = board.admit("B", req(2, token="tok"), 1, askable=True)
    c, sent_c = board.admit("C", req(3, token=5), 1, askable=True)
    assert sent_a["params"]["_meta"] == {"progressToken": a.child_id}
    assert sent_b["params"]["_meta"] == {"progressToken": b.child_id}
    assert sent_c["params"]["_meta"] == {"progressToken": c.child_id}
    board.route(1, progress(b.child_id, 1))
    board.route(1, progress(a.child_id, 2))
    board.route(1, progress(c.child_id, 3))
    assert drain(a.inbox) == [progress("tok", 2)]
    assert drain(b.inbox) == [progress("tok", 1)]
    assert drain(c.inbox) == [progress(5, 3)]
    assert board.dropped == 0


def test_other_meta_keys_survive_the_token_renaming() -> None:
    board = Switchboard()
    message = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "n", "_meta": {"progressToken": 0, "k": "v"}},
    }
    a, sent = board.admit("A", message, 1, askable=True)
    assert sent["params"] == {"name": "n", "_meta": {"progressToken": a.child_id, "k": "v"}}
    assert a.token == 0
    board.route(1, progress(a.child_id))
    assert drain(a.inbox) == [progress(0)]


@pytest.mark.parametrize("token", [999, "1", None])
def test_progress_with_an_unknown_token_is_dropped_and_counted(token: Any) -> None:
    board = Switchboard()
    a, _ = board.admit("A", req(1, token="t"), 1, askable=True)
    assert a.child_id == 1
    board.route(1, progress(token))
    assert len(a.inbox) == 0
    assert board.dropped == 1


def test_progress_naming_a_caller_that_set_no_token_is_dropped() -> None:
    board = Switchboard()
    a, sent = board.admit("A", req(1), 1, askable=True)
    assert "_meta" not in sent["params"]
    board.route(1, progress(a.child_id))
    assert len(a.inbox) == 0
    assert board.dropped == 1


# -- questions of the child's ---------------------------------------------------------------------


@pytest.mark.parametrize("method", ["sampling/createMessage", "elicitation/create", "roots/list"])
def test_a_question_goes_to_the_sole_waiting_client_and_its_answer_back(method: str) -> None:
    board = Switchboard()
    a, _ = board.admit("A", req(1), 1, askable=True)
    a2, _ = board.admit("A", req(2), 1, askable=True)
    assert board.route(1, question(40, method)) == []
    [asked] = drain(a.inbox)
    assert len(a2.inbox) == 0
    assert asked == {**question(40, method), "id": "mcp-proxy-1"}
    answer = {"jsonrpc": "2.0", "id": "mcp-proxy-1", "result": {"roots": []}}
    assert board.answer_to_child("A", answer) == {**answer, "id": 40}
    assert board.answer_to_child("A", answer) is None  # a second answer
    assert board.asked == {}


def test_two_owners_questions_get_distinct_proxy_ids_and_string_child_ids_survive() -> None:
    board = Switchboard()
    a, _ = board.admit("A", req(1), 1, askable=True)
    board.route(1, question("q"))
    [to_a] = drain(a.inbox)
    assert board.answer_to_child("A", {"jsonrpc": "2.0", "id": to_a["id"], "result": {}}) == {
        "jsonrpc": "2.0",
        "id": "q",
        "result": {},
    }
    board.route(1, {"jsonrpc": "2.0", "id": a.child_id, "result": {}})  # A's own request answered
    assert board.release(a) == []  # answered: nothing left to void
    b, _ = board.admit("B", req(1), 1, askable=True)
    board.route(1, question("q"))
    [to_b] = drain(b.inbox)
    assert (to_a["id"], to_b["id"]) == ("mcp-proxy-1", "mcp-proxy-2")
    answer = {"jsonrpc": "2.0", "id": "mcp-proxy-2", "result": {}}
    assert board.answer_to_child("A", answer) is None  # another owner's
    assert board.answer_to_child("B", answer) == {**answer, "id": "q"}


def test_a_client_that_leaves_with_a_question_unanswered_voids_it_to_the_child() -> None:
    board = Switchboard()
    a, _ = board.admit("A", req(1), 1, askable=True)
    board.route(1, question("q"))
    assert board.release(a) == [
        {
            "jsonrpc": "2.0",
            "id": "q",
            "error": {"code": -32603, "message": "mcp proxy: the client left before it answered"},
        }
    ]
    assert board.asked == {}
    assert board.answer_to_child("A", {"jsonrpc": "2.0", "id": "mcp-proxy-1", "result": {}}) is None


@pytest.mark.parametrize("key", ["mcp-proxy-9", 1, None, "mcp-proxy-1 "])
def test_an_answer_to_a_question_never_issued_is_refused(key: Any) -> None:
    board = Switchboard()
    board.admit("A", req(1), 1, askable=True)
    board.route(1, question(40))
    assert board.answer_to_child("A", {"jsonrpc": "2.0", "id": key, "result": {}}) is None
    assert list(board.asked) == ["mcp-proxy-1"]


def test_a_question_with_several_owners_waiting_is_refused() -> None:
    board = Switchboard()
    a, _ = board.admit("A", req(1), 1, askable=True)
    b, _ = board.admit("B", req(1), 1, askable=True)
    assert board.route(1, question(40)) == refusal(40, SEVERAL)
    assert board.route(1, question(41, "roots/list")) == refusal(41, SEVERAL)
    assert len(a.inbox) == len(b.inbox) == 0
    assert board.asked == {}


def test_a_question_with_nobody_waiting_is_refused_but_roots_list_answered_empty() -> None:
    board = Switchboard()
    assert board.route(1, question(40)) == refusal(40, NOBODY)
    assert board.route(1, question(41, "elicitation/create")) == refusal(41, NOBODY)
    assert board.route(1, question(0, "roots/list")) == [{"jsonrpc": "2.0", "id": 0, "result": {"roots": []}}]


def test_pings_do_not_count_as_waiting() -> None:
    board = Switchboard()
    board.admit("P", req(1, "ping"), 1, askable=True)
    a, _ = board.admit("A", req(1), 1, askable=True)
    assert board.route(1, question(40)) == []
    assert drain(a.inbox)[0]["id"] == "mcp-proxy-1"
    board.route(1, {"jsonrpc": "2.0", "id": a.child_id, "result": {}})
    board.release(a)
    assert board.route(1, question(0, "roots/list")) == [{"jsonrpc": "2.0", "id": 0, "result": {"roots": []}}]


def test_a_question_to_a_client_that_cannot_be_asked_is_refused() -> None:
    board = Switchboard()
    a, _ = board.admit("A", req(1), 1, askable=False)
    assert board.route(1, question(40)) == refusal(40, NOT_ASKABLE)
    assert board.route(1, question(41, "roots/list")) == refusal(41, NOT_ASKABLE)
    assert len(a.inbox) == 0


def test_a_question_uses_the_stream_of_the_clients_askable_request() -> None:
    board = Switchboard()
    board.admit("A", req(1), 1, askable=False)
    streaming, _ = board.admit("A", req(2), 1, askable=True)
    assert board.route(1, question(40)) == []
    assert drain(streaming.inbox) == [{**question(40), "id": "mcp-proxy-1"}]


def test_questions_past_max_asked_are_refused() -> None:
    board = Switchboard()
    a, _ = board.admit("A", req(1), 1, askable=True)
    for n in range(MAX_ASKED):
        assert board.route(1, question(n)) == []
    assert len(board.asked) == MAX_ASKED
    assert board.route(1, question("over")) == refusal("over", TOO_MANY)
    assert len(a.inbox) == MAX_ASKED  # a question always fits, past INBOX too
    assert board.answer_to_child("A", {"jsonrpc": "2.0", "id": "mcp-proxy-1", "result": {}}) is not None
    assert board.route(1, question("again")) == []


def test_the_childs_cancellation_of_a_question_reaches_the_asked_client_under_the_proxy_id() -> None:
    board = Switchboard()
    a, _ = board.admit("A", req(1), 1, askable=True)
    board.route(1, question(40))
    drain(a.inbox)
    cancelled = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 40, "reason": "r"}}
    board.route(1, cancelled)
    assert drain(a.inbox) == [{**cancelled, "params": {"requestId": "mcp-proxy-1", "reason": "r"}}]
    assert board.asked == {}
    board.route(1, cancelled)  # nothing asked under 40 any more
    assert board.dropped == 1
    assert len(a.inbox) == 0


# -- cancellation of a client's request --------------------------------------------------------------


def test_a_clients_cancellation_names_only_its_own_request() -> None:
    board = Switchboard()
    a, _ = board.admit("A", req(1), 1, askable=True)
    b, _ = board.admit("B", req(1), 1, askable=True)
    cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 1, "reason": "r"}}
    assert board.cancellation("B", cancel) == {**cancel, "params": {"requestId": b.child_id, "reason": "r"}}
    assert board.cancellation("A", cancel) == {**cancel, "params": {"requestId": a.child_id, "reason": "r"}}
    assert board.cancellation("C", cancel) is None
    assert board.cancellation("A", {**cancel, "params": {"requestId": "1"}}) is None
    assert board.cancellation("A", {"jsonrpc": "2.0", "method": "notifications/cancelled"}) is None
    board.release(a)
    assert board.cancellation("A", cancel) is None


# -- log lines ------------------------------------------------------------------------------------


def test_a_log_line_goes_to_the_sole_waiting_client_filtered_by_its_level() -> None:
    board = Switchboard()
    board.sessions["A"] = Session("A", 0.0, level="warning")
    a, _ = board.admit("A", req(1), 1, askable=True)
    for level in ("debug", "info", "notice", "warning", "error", "emergency"):
        board.route(1, log_line(level, level))
    assert drain(a.inbox) == [log_line(level, level) for level in ("warning", "error", "emergency")]
    assert board.dropped == 0


def test_a_log_line_to_a_session_without_a_level_passes() -> None:
    board = Switchboard()
    board.sessions["A"] = Session("A", 0.0)
    a, _ = board.admit("A", req(1), 1, askable=False)
    board.route(1, log_line("debug"))
    assert drain(a.inbox) == [log_line("debug")]


def test_a_log_line_with_several_owners_or_nobody_waiting_is_dropped_and_counted() -> None:
    board = Switchboard()
    board.route(1, log_line("error"))
    assert board.dropped == 1
    a, _ = board.admit("A", req(1), 1, askable=True)
    b, _ = board.admit("B", req(1), 1, askable=True)
    board.route(1, log_line("error"))
    assert board.dropped == 2
    assert len(a.inbox) == len(b.inbox) == 0


# -- list changes and resource updates --------------------------------------------------------------


def listener(**notifications: Any) -> Listener:
    wanted = modern.listen_filter({"params": {"notifications": notifications}})
    return Listener(lambda message: modern.wants(wanted, message), set(wanted.uris))


def test_list_changed_goes_to_every_session_stream_and_each_wanting_listener() -> None:
    board = Switchboard()
    s1, s2, s3 = (
        Session("1", 0.0, stream=Inbox(STREAM_INBOX)),
        Session("2", 0.0, stream=Inbox(STREAM_INBOX)),
        Session("3", 0.0),
    )
    board.sessions.update({"1": s1, "2": s2, "3": s3})
    tools, prompts = listener(toolsListChanged=True), listener(promptsListChanged=True)
    board.listeners.update({tools, prompts})
    a, _ = board.admit("1", req(1), 1, askable=True)
    changed = {"jsonrpc": "2.0", "method": "notifications/tools/list_changed"}
    assert board.route(1, changed) == []
    assert s1.stream is not None and s2.stream is not None
    assert drain(s1.stream) == [changed]
    assert drain(s2.stream) == [changed]
    assert drain(tools.inbox) == [changed]
    assert len(prompts.inbox) == 0
    assert len(a.inbox) == 0  # not on a request's stream
    assert board.dropped == 0


def test_resources_updated_only_to_subscribed_sessions_and_watching_listeners() -> None:
    board = Switchboard()
    s1 = Session("1", 0.0, subscriptions={"file:///a"}, stream=Inbox(STREAM_INBOX))
    s2 = Session("2", 0.0, subscriptions={"file:///b"}, stream=Inbox(STREAM_INBOX))
    s3 = Session("3", 0.0, subscriptions={"file:///a"})  # no stream open: nothing to put it on
    board.sessions.update({"1": s1, "2": s2, "3": s3})
    on_a, on_b = (
        listener(resourceSubscriptions=["file:///a"]),
        listener(resourceSubscriptions=["file:///b"], toolsListChanged=True),
    )
    board.listeners.update({on_a, on_b})
    updated = {"jsonrpc": "2.0", "method": "notifications/resources/updated", "params": {"uri": "file:///a"}}
    board.route(1, updated)
    assert s1.stream is not None and s2.stream is not None
    assert drain(s1.stream) == [updated]
    assert len(s2.stream) == 0
    assert drain(on_a.inbox) == [updated]
    assert len(on_b.inbox) == 0
    assert board.subscribed() == {"file:///a", "file:///b"}


def test_an_unknown_notification_is_dropped_and_counted() -> None:
    board = Switchboard()
    board.sessions["1"] = Session("1", 0.0, stream=Inbox(STREAM_INBOX))
    board.route(1, {"jsonrpc": "2.0", "method": "notifications/whatever"})
    assert board.dropped == 1


# -- the child's end ------------------------------------------------------------------------------


def test_child_lost_cuts_off_that_generation_and_older_only() -> None:
    board = Switchboard()
    old, _ = board.admit("A", req(1), 1, askable=True)
    mid, _ = board.admit("B", req(1), 2, askable=True)
    new, _ = board.admit("C", req(1), 3, askable=True)
    board.asked["mcp-proxy-x"] = Asked(9, "A", 2)
    board.asked["mcp-proxy-y"] = Asked(9, "C", 3)
    board.child_lost(2, "it died")
    [lost_old] = drain(old.inbox)
    [lost_mid] = drain(mid.inbox)
    assert isinstance(lost_old, ChildLost) and lost_old.reason == "it died"
    assert isinstance(lost_mid, ChildLost) and lost_mid.reason == "it died"
    assert len(new.inbox) == 0
    assert list(board.callers) == [new.child_id]
    assert list(board.asked) == ["mcp-proxy-y"]


# -- bounds and summaries ----------------------------------------------------------------------------


def test_a_caller_inbox_drops_progress_and_log_lines_past_its_bound_but_never_the_answer() -> None:
    board = Switchboard()
    a, sent = board.admit("A", req(1, token="t"), 1, askable=True)
    for n in range(INBOX + 5):
        board.route(1, progress(a.child_id, n))
    board.route(1, log_line("info"))
    assert len(a.inbox) == INBOX
    assert a.inbox.dropped == 6
    board.route(1, result(sent["id"]))
    items = drain(a.inbox)
    assert len(items) == INBOX + 1
    assert items[0] == progress("t", 0) and items[-2] == progress("t", INBOX - 1)
    assert items[-1] == result(1)


def test_inbox_bounds() -> None:
    keeps = Inbox(2)
    for item in ("a", "b", "c"):
        keeps.put(item)
    keeps.put("d", droppable=True)
    assert drain(keeps) == ["a", "b", "c"] and keeps.dropped == 1
    oldest = Inbox(2)
    for item in ("a", "b", "c", "d"):
        oldest.put(item, oldest_first=True)
    assert drain(oldest) == ["c", "d"] and oldest.dropped == 2


async def test_inbox_get_waits_for_a_put() -> None:
    inbox = Inbox(4)
    getter = asyncio.ensure_future(inbox.get())
    await asyncio.sleep(0)
    assert not getter.done()
    inbox.put("x")
    assert await asyncio.wait_for(getter, 5) == "x"


def test_a_session_stream_keeps_the_newest_notifications() -> None:
    board = Switchboard()
    session = Session("1", 0.0, stream=Inbox(STREAM_INBOX))
    board.sessions["1"] = session
    for n in range(STREAM_INBOX + 3):
        board.route(1, {"jsonrpc": "2.0", "method": "notifications/resources/list_changed", "params": {"n": n}})
    assert session.stream is not None
    items = drain(session.stream)
    assert [item["params"]["n"] for item in items] == list(range(3, STREAM_INBOX + 3))
    assert session.stream.dropped == 3


def test_most_verbose_level_and_subscribed() -> None:
    board = Switchboard()
    assert board.most_verbose_level() is None
    assert board.subscribed() == set()
    board.sessions["1"] = Session("1", 0.0, level="error", subscriptions={"a"})
    board.sessions["2"] = Session("2", 0.0, level="info", subscriptions={"a", "b"})
    board.sessions["3"] = Session("3", 0.0)
    board.listeners.add(listener(resourceSubscriptions=["c"]))
    assert board.most_verbose_level() == "info"
    assert board.subscribed() == {"a", "b", "c"}
    board.sessions["2"].level = "emergency"
    assert board.most_verbose_level() == "error"


# -- the property -----------------------------------------------------------------------------------

OWNERS = ("A", "B", "C")


@st.composite
def interleavings(draw: st.DrawFn) -> tuple[list[tuple[str, Any]], list[int]]:
    """Requests of several owners (colliding ids allowed) and a permutation in which the child answers."""
    requests = draw(
        st.lists(
            st.tuples(st.sampled_from(OWNERS), st.one_of(st.integers(-3, 3), st.sampled_from(["a", "b", "1"]))),
            min_size=1,
            max_size=12,
        )
    )
    return requests, draw(st.permutations(range(len(requests))))


@given(interleavings(), st.data())
def test_each_caller_receives_exactly_its_own_response_with_its_own_id(
    case: tuple[list[tuple[str, Any]], list[int]], data: st.DataObject
) -> None:
    requests, order = case
    board = Switchboard()
    callers: list[Caller] = []
    sent: list[dict[str, Any]] = []
    answered: list[int] = []
    pending = list(order)
    admitted = 0
    while admitted < len(requests) or pending:
        # interleave: admit the next request or answer an admitted one, as the draw says
        can_answer = [i for i in pending if i < admitted]
        if admitted < len(requests) and (not can_answer or data.draw(st.booleans())):
            owner, client_id = requests[admitted]
            caller, message = board.admit(owner, req(client_id, token=f"{owner}-{admitted}"), 1, askable=True)
            callers.append(caller)
            sent.append(message)
            admitted += 1
        else:
            index = can_answer[0]
            pending.remove(index)
            board.route(1, progress(sent[index]["params"]["_meta"]["progressToken"], index))
            board.route(1, result(sent[index]["id"], index))
            answered.append(index)
    assert sorted(answered) == list(range(len(requests)))
    assert len({m["id"] for m in sent}) == len(requests)
    for index, caller in enumerate(callers):
        owner, client_id = requests[index]
        assert (caller.owner, caller.client_id) == (owner, client_id)
        assert drain(caller.inbox) == [progress(f"{owner}-{index}", index), result(client_id, index)]
    assert board.callers == {}
    assert board.dropped == 0


def test_questions_of_clients_gone_do_not_use_up_max_asked() -> None:
    board = Switchboard()
    for n in range(MAX_ASKED):
        gone, _ = board.admit(f"gone-{n}", req(1), 1, askable=True)
        assert board.route(1, question(n)) == []
        board.route(1, {"jsonrpc": "2.0", "id": gone.child_id, "result": {}})  # its call answered, its question not
        board.release(gone)
    live, _ = board.admit("live", req(1), 1, askable=True)
    assert board.route(1, question("now")) == []
    assert drain(live.inbox)[0]["method"] == "sampling/createMessage"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_request_its_client_gave_up_on_keeps_owning_what_the_child_sends_for_a_while() -> None:
    """A's request is abandoned (cancelled in the child, which may run on); B calls: a log line or a
    question now could be either's, so the question is refused and the line dropped, until
    `ABANDONED_FOR` passes or the child answers the abandoned request."""
    clock = FakeClock()
    board = Switchboard(clock=clock)
    a, _ = board.admit("A", req(1), 1, askable=True)
    board.release(a)  # unanswered: A gave up
    assert list(board.abandoned) == [a.child_id]
    b, _ = board.admit("B", req(1), 1, askable=True)
    assert board.route(1, question(40)) == refusal(40, SEVERAL)
    board.route(1, {"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "info", "data": "A's"}})
    assert drain(b.inbox) == []
    clock.now += ABANDONED_FOR + 1
    assert board.route(1, question(41)) == []
    assert drain(b.inbox)[0]["method"] == "sampling/createMessage"


def test_the_childs_late_answer_to_an_abandoned_request_ends_its_claim() -> None:
    board = Switchboard(clock=FakeClock())
    a, _ = board.admit("A", req(1), 1, askable=True)
    board.release(a)
    b, _ = board.admit("B", req(1), 1, askable=True)
    board.route(1, {"jsonrpc": "2.0", "id": a.child_id, "result": {}})  # the child finished it after all
    assert board.abandoned == {}
    assert board.route(1, question(40)) == []
    assert drain(b.inbox)[0]["id"].startswith("mcp-proxy-")


@pytest.mark.parametrize(
    ("logs", "expected"),
    [(None, []), ("warning", ["warning", "error"]), ("debug", ["debug", "info", "warning", "error"])],
)
def test_a_2026_caller_gets_only_the_log_lines_it_asked_for(logs: str | None, expected: list[str]) -> None:
    """A 2026-07-28 request asks for log lines in its own `_meta` (no session, no setLevel): none asked, none sent."""
    board = Switchboard()
    caller, _ = board.admit("modern-1", req(1), 1, askable=False, logs=logs)
    for level in ("debug", "info", "warning", "error"):
        board.route(1, log_line(level))
    assert [m["params"]["level"] for m in drain(caller.inbox)] == expected
