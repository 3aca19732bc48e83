"""``coopy doctor`` tells the truth about this host, for root and for an ordinary user."""

from __future__ import annotations

import json
import os
import stat

from tests.conftest import BoxUser


def test_doctor_reports_this_host(box_user: BoxUser) -> None:
    res = box_user.coopy("doctor", "--json", cwd=box_user.workspace())
    assert res.returncode == 0, res.stdout + res.stderr
    checks = {c["name"]: c for c in json.loads(res.stdout)}
    assert checks["box"]["status"] == "ok"
    assert checks["subordinate ids"]["status"] == "ok"
    tun = os.stat("/dev/net/tun")
    usable = box_user.uid == 0 or stat.S_IMODE(tun.st_mode) & 0o006 == 0o006
    assert checks["/dev/net/tun"]["status"] == ("ok" if usable else "warn")
    if not usable:
        assert "chmod 666 /dev/net/tun" in checks["/dev/net/tun"]["fix"]
    with open("/proc/self/mountinfo") as f:
        hybrid = any(" - cgroup " in line for line in f)
    assert checks["cgroups"]["status"] == ("warn" if hybrid else checks["cgroups"]["status"])


def test_doctor_table_names_the_fix(box_user: BoxUser) -> None:
    res = box_user.coopy("doctor", "--no-box", cwd=box_user.workspace())
    assert res.returncode == 0
    lines = res.stdout.splitlines()
    assert lines[0].split()[:2] == ["ok", "kernel"]
    for i, line in enumerate(lines):
        if line.startswith("warn") or line.startswith("fail"):
            assert "fix:" in lines[i + 1] or "capabilities" in line


def test_doctor_security_blocks_every_attack(box_user: BoxUser) -> None:
    res = box_user.coopy("doctor", "--security", "--json", cwd=box_user.workspace())
    assert res.returncode == 0, res.stdout + res.stderr
    results = json.loads(res.stdout)
    assert len(results) >= 18
    assert all(r["outcome"].startswith("blocked") for r in results), results


def test_doctor_security_notices_a_weak_box(box_user: BoxUser) -> None:
    # With the filter turned off (by the user's own config), the self-test must say so:
    # proof that it can fail.
    env = box_user.user_config("[security]\nseccomp = false\n")
    res = box_user.coopy("doctor", "--security", "--json", cwd=box_user.workspace(), env=env)
    assert res.returncode == 1
    outcome = {r["attack"]: r["outcome"] for r in json.loads(res.stdout)}
    assert outcome["keyctl"] == "ALLOWED"
    assert outcome["read /etc/shadow"].startswith("blocked")
