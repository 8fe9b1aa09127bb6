"""A child's process group: signalled as one, and watched until none of it is left.

Every child runs in a process group of its own (``start_new_session``), so a launcher's real server (the
``node`` that ``npx`` starts) is signalled with it and cannot outlive it (`proxy.upstream.stdio.child`).
"""

from __future__ import annotations

import os
import signal

__all__ = ["group_alive", "killpg"]


def killpg(pgid: int, sig: signal.Signals) -> None:
    """Signal process group `pgid`, if it still has members (never ours: a child has its own session)."""
    if pgid <= 1 or pgid == os.getpgrp():
        return
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass  # the group is gone (PermissionError: macOS says so for a group of zombies)


def group_alive(pgid: int) -> bool:
    """Whether process group `pgid` has a member that is not a zombie.

    Zombies are left out: once the leader is gone its leftovers are reparented to init, and an init that
    does not reap (a container's entrypoint) would otherwise keep the group "alive" for ever. On Linux
    /proc says which members are zombies; elsewhere any member counts.
    """
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        entries = os.listdir("/proc")
    except OSError:
        return True
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as file:
                stat = file.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 2 and fields[0] != b"Z" and fields[2] == str(pgid).encode():
            return True
    return False
