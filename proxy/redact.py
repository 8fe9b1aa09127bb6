"""The one redaction function: what every writer (logs, events, fixtures, /status, reloads) passes output through.

A sidecar sees its clients' credentials, and its operators read its logs, events, fixtures and admin
pages; none of those may carry a credential out. Code should never put one there in the first place;
`redact` is the net under it, and it is the *only* one, so a new rule here covers every writer at once.

What is replaced by ``[redacted]``:

* **By key name**, at any depth of dicts and lists: a key is secret when, after camelCase is split
  (``accessKey`` -> ``access_key``), it contains ``authorization``, ``password``/``passwd``,
  ``passphrase``, ``secret``, ``credential``, ``cookie``, ``token`` (not ``tokens``/``tokenizer``:
  ``max_tokens`` is an LLM setting, not a credential), ``api_key``, ``access_key``, ``private_key``,
  ``signing_key`` or ``session_id`` (a legacy ``Mcp-Session-Id`` is a bearer capability); or has
  one of ``auth``, ``oauth``, ``pwd``, ``pass``, ``jwt``, ``bearer``, ``csrf``, ``xsrf`` as a whole
  word. Whole words, so ``author``, ``authority``, ``bypass`` and ``signature`` stay readable.
* **Inside strings** (an error message can quote a raw header line or a URL): the value after a
  secret-looking name followed by ``:`` or ``=`` (``Authorization: …``, ``"password": "…"``,
  ``?token=…&api_key=…``, ``PASSWORD=…``; but ``auth:<hash>``, a short word glued to its value by a
  colon, is a label such as the proxy's own client keys, and stays), to the end of the line for credential headers
  (``Authorization``, ``Cookie``: their values hold spaces and ``;``), else to the next delimiter;
  the credential after ``Bearer``/``Basic``/``Digest``/``Negotiate``; a URL's user info
  (``https://user:pass@host`` -> ``https://[redacted]@host``); and URL query parameters named
  ``key``, ``sig``, ``signature``, ``code`` or ``X-Amz-*`` (signed URLs, API keys in queries).

False positives (a word after "Basic" in prose) are the accepted price: a leaked credential cannot be
called back. The string scan is heuristic by nature, which is why values are also redacted by key.

`redact` also bounds what it returns, so one hostile value never makes a huge log line or event:
strings are clipped to `max_chars` (head kept, a marker says how much was cut; clipping happens
*before* the scan, so the work per value is bounded too), nesting beyond `max_depth` and items beyond
`max_items` are replaced by markers. Fixtures pass no char limit: they must replay the exact call.
"""

from __future__ import annotations

import functools
import re
from typing import Any, Final

__all__ = [
    "MAX_FIXTURE_DEPTH",
    "MAX_LOG_DEPTH",
    "MAX_LOG_ITEMS",
    "MAX_LOG_KEY_CHARS",
    "MAX_LOG_LINE_CHARS",
    "MAX_LOG_VALUE_CHARS",
    "REDACTED",
    "SECRET_KEY",
    "Budget",
    "is_secret_key",
    "redact",
    "redact_text",
]

REDACTED: Final = "[redacted]"

MAX_LOG_VALUE_CHARS: Final = 4096
"""A string in a log line or event is clipped to this many characters (then a ``…[N chars cut]`` marker)."""
MAX_LOG_LINE_CHARS: Final = 32768
"""Once a line's strings reached this many characters, every further string is clipped to `MIN_CLIP` characters."""
MAX_LOG_KEY_CHARS: Final = 128
"""A dict key in a log line or event (tool arguments are client-chosen) is clipped to this many characters."""
MAX_LOG_DEPTH: Final = 16
"""Nesting deeper than this in a log line or event is replaced by a marker (params can nest 1,000 deep)."""
MAX_LOG_ITEMS: Final = 512
"""Values (scalars and containers) in one log line or event; the rest are replaced by one marker."""
MIN_CLIP: Final = 64
"""What a string still gets once its line used up `MAX_LOG_LINE_CHARS`: enough to say what it was."""
MAX_FIXTURE_DEPTH: Final = 128
"""Fixtures keep the call exact up to this depth (below Python's recursion limit, above any sane params)."""

_STRONG_KEY = (
    r"authori[sz]ation|authenticat|passw(?:or)?d|passphrase|passcode|secret|credential|cookie|token(?!s|i[sz])"
    r"|(?:api|access|private|signing|session|secret)[-_ ]?key|session[-_ ]?id"
)
_SHORT_WORDS = (
    r"(?<![a-z0-9])(?:o?auth|pwd|pass|jwt|bearer|csrf|xsrf|creds|otp|mfa|pin|hmac|refresh|key)(?![a-z0-9])"
)
"""Whole words only (``pin`` but not ``spinner``, ``key`` but not ``keyboard`` nor ``monkey``): a bare ``key``
or ``pin`` is as often a secret as not, and a redacted fixture costs less than a leaked one."""
SECRET_KEY: Final = re.compile(f"{_STRONG_KEY}|{_SHORT_WORDS}")
"""Matched against a key *normalized* by `_normalize` (camelCase split with ``_``, lower case)."""
_STRONG: Final = re.compile(_STRONG_KEY)
"""Inside strings, ``auth:x`` (a short word, a colon and no space) reads as a label (``auth:<hash>``), not a pair."""
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_LINE_VALUED = re.compile(r"authori[sz]ation|cookie")
"""Names whose values run to the end of the line: ``Bearer x``, ``a=1; b=2``."""

_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]{0,31}://)[^/\s@?#'\"<>\\]+@")
_PARTIAL_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]{0,31}://)[^/\s@?#'\"<>\\]*$")
_URL_PARAM = re.compile(r"([?&;](?:key|sig|signature|code|x-amz-[a-z-]+)=)[^&#\s'\"<>\\]*", re.IGNORECASE)
"""Query parameters that hold credentials under names too short or common to redact everywhere (``?key=``)."""
_SCHEME = re.compile(r"\b([Bb]earer|BEARER|Basic|BASIC|Digest|Negotiate)(\s+)[A-Za-z0-9\-._~+/]{4,}=*")
_NAME = re.compile(r"([A-Za-z_][A-Za-z0-9_.-]{0,63})([\"']?)[ \t]*[:=][ \t]*")
_HEADER_DUMP = re.compile(r"(?:^|(?<=['\"\n])|(?<=\\n))([A-Za-z][A-Za-z0-9_-]{0,63})([ \t]+)([^\s:=][^\r\n'\"\\]*)")
"""A header line as a parser quotes one it refused, without its colon (``b'Authorization Bearer x'``)."""
_HINTS: Final = (
    "auth", "pass", "pwd", "secret", "credential", "cookie", "token", "key", "session", "jwt", "bearer", "csrf",
    "xsrf", "basic", "digest", "negotiate", "://", "sig", "code", "x-amz",
)  # fmt: skip
"""Every rule below needs one of these in the text (lower-cased): substring tests spare the full scan of
almost every string (a case-insensitive regex alternation measured 6x slower than these tests)."""
_KEY_WORDS: Final = frozenset({"upstream", "client", "tool", "global"})
"""The values of a rate limit's ``key`` (`proxy.config.policies.RateLimitConfig`): a bare ``key`` with one of
these is the config's own word, shown in diffs and proposals, never a credential."""
_QUOTED = re.compile(r"\"(?:[^\"\\]|\\.)*\"?|'(?:[^'\\]|\\.)*'?")
_TO_EOL = re.compile(r"[^\r\n'\"\\]*")
_TOKEN = re.compile(r"[^\s,;&'\"<>(){}\[\]\\]*")


@functools.lru_cache(maxsize=4096)
def _normalize(key: str) -> str:
    return _CAMEL.sub("_", key).lower()


def is_secret_key(key: object) -> bool:
    """True when a value under this name is a credential (see the module docstring for the words)."""
    text = key if isinstance(key, str) else str(key)
    return _secret_name(text[:MAX_LOG_KEY_CHARS])  # clipped first: the memo must never hold a client's 1 MiB key


@functools.lru_cache(maxsize=4096)
def _secret_name(key: str) -> bool:
    """Memoized: the same few dozen keys make up nearly every log line and event."""
    return SECRET_KEY.search(_normalize(key)) is not None


def _scan_pairs(text: str) -> str:
    """Replace the value after each secret-looking ``name:`` / ``name=`` in `text`."""
    out: list[str] = []
    pos = 0
    while (match := _NAME.search(text, pos)) is not None:
        name = match.group(1)
        tight = match.group(2) == "" and match.group(0).endswith(":")
        if not is_secret_key(name) or text.startswith("//", match.end()) or (tight and not _STRONG.search(_normalize(name))):
            out.append(text[pos : match.end()])
            pos = match.end()
            continue
        start = match.end()
        value = _QUOTED.match(text, start) or (_TO_EOL if _LINE_VALUED.search(_normalize(name)) else _TOKEN).match(text, start)
        end = start if value is None else value.end()
        if _normalize(name).rsplit(".", 1)[-1] == "key" and text[start:end].strip("\"'") in _KEY_WORDS:
            out.append(text[pos:end])  # a rate limit's `key: client`: a word of the config, no secret
            pos = end
            continue
        quote = text[start] if end > start and text[start] in "\"'" else ""
        out.append(text[pos:start])
        out.append(f"{quote}{REDACTED}{quote}" if end > start else "")
        pos = end
    out.append(text[pos:])
    return "".join(out)


def _header_dump(match: re.Match[str]) -> str:
    if _STRONG.search(_normalize(match.group(1))) is None:
        return match.group(0)
    return match.group(1) + match.group(2) + REDACTED


def redact_text(text: str) -> str:
    """`text` with the credentials it quotes replaced (header lines, auth schemes, URL user info and params)."""
    if len(text) < 6 or (":" not in text and "=" not in text and " " not in text):
        return text  # the fast path of almost every value: a name, a kind, a hash
    lowered = text.lower()
    if not any(hint in lowered for hint in _HINTS):
        return text  # a plain message
    spaced = " " in text or "\t" in text
    if "@" in text and "://" in text:
        text = _USERINFO.sub(lambda m: m.group(1) + REDACTED + "@", text)
    if "=" in text:
        text = _URL_PARAM.sub(lambda m: m.group(1) + REDACTED, text)
    if spaced:
        text = _SCHEME.sub(lambda m: m.group(1) + m.group(2) + REDACTED, text)
    if ":" in text or "=" in text:
        text = _scan_pairs(text)
    return _HEADER_DUMP.sub(_header_dump, text) if spaced else text


_SCALARS: Final = frozenset({type(None), bool, int, float})
_CONTAINERS: Final = (dict, list, tuple)
_SEQUENCES: Final = (list, tuple)


class Budget:
    """How much one log line or event may still hold: characters of strings, and values."""

    __slots__ = ("chars", "items")

    def __init__(self, chars: int | None = MAX_LOG_LINE_CHARS, items: int | None = MAX_LOG_ITEMS) -> None:
        self.chars = chars
        self.items = items


def _clip(text: str, limit: int | None) -> str:
    """The head of `text` (scanned), and a marker saying how much was cut."""
    if limit is None or len(text) <= limit:
        return redact_text(text)
    head = redact_text(text[:limit])
    partial = _PARTIAL_USERINFO.search(head)  # the cut fell inside a URL's user info: never keep half of it
    if partial is not None:
        head = head[: partial.start()] + partial.group(1) + REDACTED
    return f"{head}…[{len(text) - limit} chars cut]"


def _string(text: str, max_chars: int | None, budget: Budget) -> str:
    limit = max_chars
    if budget.chars is not None:
        cap = max(budget.chars, MIN_CLIP)
        limit = cap if limit is None else min(limit, cap)
    clipped = _clip(text, limit)
    if budget.chars is not None:
        budget.chars = max(0, budget.chars - len(clipped))
    return clipped


def redact(
    value: Any,
    *,
    max_chars: int | None = MAX_LOG_VALUE_CHARS,
    max_depth: int = MAX_LOG_DEPTH,
    budget: Budget | None = None,
    _depth: int = 0,
) -> Any:
    """`value` with every credential replaced, bounded in size (see the module docstring).

    Dicts come back as new dicts (string keys), lists and tuples as lists; strings are scanned;
    numbers, booleans and None are kept; anything else becomes its ``repr``, scanned (what a JSON
    renderer would have written anyway). With ``max_chars=None`` and an unlimited `budget` nothing is
    clipped (fixtures).
    """
    budget = Budget() if budget is None else budget
    if budget.items is not None:
        if budget.items <= 0:
            return "…[cut: too many values]"
        budget.items -= 1
    kind = type(value)
    if kind in _SCALARS:
        return value
    if kind is str:
        return _string(value, max_chars, budget)
    if isinstance(value, _CONTAINERS) and _depth >= max_depth:
        return f"…[cut: nested deeper than {max_depth}]"
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if budget.items is not None and budget.items <= 0:
                out["…"] = "…[cut: too many values]"
                break
            name = str(key)
            if max_chars is not None and len(name) > MAX_LOG_KEY_CHARS:
                name = _clip(name, MAX_LOG_KEY_CHARS)
            if is_secret_key(key):
                out[name] = REDACTED
            else:
                out[name] = redact(item, max_chars=max_chars, max_depth=max_depth, budget=budget, _depth=_depth + 1)
        return out
    if isinstance(value, _SEQUENCES):
        items: list[Any] = []
        for item in value:
            if budget.items is not None and budget.items <= 0:
                items.append("…[cut: too many values]")
                break
            items.append(redact(item, max_chars=max_chars, max_depth=max_depth, budget=budget, _depth=_depth + 1))
        return items
    return _string(repr(value) if not isinstance(value, BaseException) else f"{type(value).__name__}: {value}", max_chars, budget)
