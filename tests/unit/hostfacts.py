"""Host facts for the unit tests: a plain host, with what a test varies passed in."""

from __future__ import annotations

from typing import Any

from coopy.facts import HostFacts


def host_facts(uid: int = 1000, user: str = "alice", **fields: Any) -> HostFacts:
    """An ordinary host; ``fields`` override any HostFacts field."""
    base = HostFacts(
        uid=uid,
        gid=uid,
        user=user,
        home="/root" if user == "root" else f"/home/{user}",
        shell="/bin/sh",
        kernel=(6, 8),
        subuid=None,
        subgid=None,
        newuidmap=None,
        newgidmap=None,
        max_user_namespaces=1000,
        unprivileged_userns_clone=None,
        apparmor_restrict_userns=None,
    )
    return base._replace(**fields)
