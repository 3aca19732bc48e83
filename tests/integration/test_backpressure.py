"""Back-pressure in the keeper: a client that cannot keep up throttles the box (nothing is
dropped), one that takes nothing at all is detached after the stall timeout.

The clients are real socket clients run as the box's user (tests/probe/keeper_client.py);
the box prints numbered lines with `seq`, so any lost or reordered byte shows.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pexpect

from tests.conftest import BoxUser

PROBE = Path(__file__).resolve().parent.parent / "probe" / "keeper_client.py"
LINES = 400_000  # ~3 MB through the PTY: well past the socket buffers and HIGH_WATER
AGENT = ["sh", "-c", f"read go; seq 1 {LINES}; echo seq-$((40+2)); exec sleep 1000"]
TIMEOUT = 60


def start_box(user: BoxUser, name: str, stall: float) -> tuple[Path, str]:
    """A detached box waiting for a line before it prints; its directory and socket."""
    ws = user.workspace()
    res = user.coopy("-d", "-n", name, "--", *AGENT, cwd=ws,
                     env={"COOPY_CLIENT_STALL_S": str(stall)})
    assert res.returncode == 0, res.stderr
    box_dir = user.home / ".local/state/coopy/boxes" / name
    record = json.loads((box_dir / "box.json").read_text())
    return box_dir, record["socket"]


def client(user: BoxUser, sock: str, *args: str) -> subprocess.Popen[str]:
    """The probe client, as the box's user; returns once it has attached."""
    argv = [*user.argv([])[:-1], sys.executable, str(PROBE), sock, *args]  # setpriv prefix
    proc = subprocess.Popen(argv, env=user.env(), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "attached\n"
    return proc


def result(proc: subprocess.Popen[str]) -> dict[str, object]:
    out, _ = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0
    return dict(json.loads(out))


def numbers_in(log: bytes) -> list[int]:
    return [int(line) for line in log.replace(b"\r", b"").split(b"\n") if line.isdigit()]


def wait_for(path: Path, marker: bytes) -> float:
    deadline = time.monotonic() + TIMEOUT
    while marker not in path.read_bytes():
        assert time.monotonic() < deadline, f"{marker!r} never reached {path}"
        time.sleep(0.05)
    return time.monotonic()


def test_stuck_client_throttles_the_box_until_it_is_detached(box_user: BoxUser,
                                                              name: str) -> None:
    stall = 3.0
    box_dir, sock = start_box(box_user, name, stall)
    reader = client(box_user, sock, "read", "0")
    stuck = client(box_user, sock, "stuck")  # types "go": the box starts printing
    t0 = time.monotonic()
    try:
        # Throttled: the keeper stopped reading the PTY, so the box's writes block and
        # its log stands still, far from the end, while the stall timeout runs.
        time.sleep(1.0)
        size = (box_dir / "log").stat().st_size
        time.sleep(1.0)
        log = (box_dir / "log").read_bytes()
        assert len(log) == size and b"seq-42" not in log
        assert len(numbers_in(log)) < LINES // 2
        # Detached after the stall timeout; the box then runs to the end.
        done = wait_for(box_dir / "log", b"seq-42")
        assert done - t0 >= stall - 0.5
        # The other client waited with the box, then got everything, in order.
        got = result(reader)
        assert got["end"] and got["contiguous"] and got["count"] == LINES, got
        assert float(str(got["seconds"])) >= stall - 0.5
        # The stuck one got a prefix of the output, then the keeper closed its socket.
        assert stuck.stdin is not None
        stuck.stdin.write("\n")
        stuck.stdin.flush()
        cut = result(stuck)
        assert cut["eof"] and cut["contiguous"] and not cut["end"], cut
    finally:
        for proc in (reader, stuck):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert numbers_in((box_dir / "log").read_bytes()) == list(range(1, LINES + 1))
    assert "took nothing for 3 s" in (box_dir / "keeper.log").read_text()
    # The scrollback holds the end of it, as a person reattaching sees it.
    argv = box_user.argv(["attach", name])
    term = pexpect.spawn(argv[0], argv[1:], env=box_user.env(), timeout=20)
    try:
        term.expect(f"{LINES}\r\nseq-42")
        term.send("\x1d")
        term.expect(pexpect.EOF)
    finally:
        term.close(force=True)
    listed = {b["name"]: b for b in json.loads(box_user.coopy("ls", "--json").stdout)}
    assert listed[name]["state"] == "running"


def test_slow_client_slows_the_box_and_is_never_dropped(box_user: BoxUser, name: str) -> None:
    stall = 1.0
    box_dir, sock = start_box(box_user, name, stall)
    slow = client(box_user, sock, "read", "0.02", "go")  # ≤ 64 KiB per 20 ms: ≤ 3.3 MB/s
    try:
        got = result(slow)
    finally:
        if slow.poll() is None:
            slow.kill()
            slow.wait()
    # It always made progress, so it stayed attached for longer than the stall timeout
    # and received every line in order.
    assert got["end"] and got["contiguous"] and got["count"] == LINES, got
    assert float(str(got["seconds"])) > stall
    assert "took nothing" not in (box_dir / "keeper.log").read_text()
    assert numbers_in((box_dir / "log").read_bytes()) == list(range(1, LINES + 1))


def test_a_frozen_terminal_is_detached_and_told(box_user: BoxUser, name: str) -> None:
    box_dir, _ = start_box(box_user, name, 2.0)
    argv = box_user.argv(["attach", name])
    # pexpect reads the terminal only inside expect(): until then coopy attach blocks
    # writing to it, as it would on a frozen terminal, and stops reading the keeper.
    term = pexpect.spawn(argv[0], argv[1:], env=box_user.env(), timeout=TIMEOUT)
    try:
        term.sendline("go")
        wait_for(box_dir / "keeper.log", b"took nothing for 2 s")
        term.expect("its keeper detached this client")
        term.expect(f"coopy attach {name}")
        term.expect(pexpect.EOF)
    finally:
        term.close(force=True)
    assert term.exitstatus == 125
    wait_for(box_dir / "log", b"seq-42")  # the box went on without it
