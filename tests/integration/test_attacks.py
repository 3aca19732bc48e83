"""The attack suite: each test tries, from inside a real box, something an agent gone
wrong (or a prompt injection) would try, and asserts that it fails; and the opposite:
what agents and their tools legitimately need still works.  Root and rootless."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import BoxUser

# Each snippet prints one word; `py` runs it with the box's python3.
SYSCALL = (
    "import ctypes, os\n"
    "libc = ctypes.CDLL(None, use_errno=True)\n"
    "def sc(nr, *a):\n"
    "    r = libc.syscall(nr, *[ctypes.c_long(x) for x in a])\n"
    "    return 'ok' if r >= 0 else os.strerror(ctypes.get_errno())\n"
)


def py(user: BoxUser, code: str, *args: str, ws: Path | None = None) -> str:
    ws = ws or user.workspace()
    (ws / "attack.py").write_text(SYSCALL + code)
    res = user.coopy("run", *args, "--", "python3", str(ws / "attack.py"), cwd=ws)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


@pytest.mark.parametrize(
    ("name", "code", "expected"),
    [
        ("unshare a user namespace", "print(sc(272, 0x10000000))", "Operation not permitted"),
        ("clone3", "print(sc(435, 0, 0))", "Function not implemented"),
        ("setns", "print(sc(308, 0, 0))", "Operation not permitted"),
        ("keyctl", "print(sc(250, 0))", "Function not implemented"),
        ("add_key", "print(sc(248, 0, 0, 0, 0, 0))", "Function not implemented"),
        ("bpf", "print(sc(321, 0, 0, 0))", "Operation not permitted"),
        ("perf_event_open", "print(sc(298, 0, 0, 0, 0, 0))", "Operation not permitted"),
        ("userfaultfd", "print(sc(323, 0))", "Operation not permitted"),
        ("io_uring_setup", "print(sc(425, 1, 0))", "Function not implemented"),
        ("init_module", "print(sc(175, 0, 0, 0))", "Operation not permitted"),
        ("finit_module", "print(sc(313, 0, 0, 0))", "Operation not permitted"),
        ("kexec_load", "print(sc(246, 0, 0, 0, 0))", "Operation not permitted"),
        ("set the clock", "print(sc(227, 0, 0))", "Operation not permitted"),
        ("open_by_handle_at", "print(sc(304, 0, 0, 0))", "Operation not permitted"),
        ("x32 ABI bypass", "print(sc(0x40000000 | 272, 0x10000000))", "Function not implemented"),
        ("mount", "print(sc(165, 0, 0, 0, 0, 0))", "Operation not permitted"),
        ("fsopen", "print(sc(430, 0, 0))", "Function not implemented"),
        ("socket AF_VSOCK", "print(sc(41, 40, 1, 0))", "Address family not supported by protocol"),
        ("socket AF_PACKET", "print(sc(41, 17, 3, 0))", "Address family not supported by protocol"),
        ("personality READ_IMPLIES_EXEC", "print(sc(135, 0x0400000))", "Operation not permitted"),
        ("mknod a disk", "try:\n    os.mknod('/tmp/sda', 0o60600, os.makedev(8, 0))\n"
         "    print('made')\nexcept OSError as e:\n    print(e.strerror)\n",
         "Operation not permitted"),
    ],
)
def test_denied_syscall(box_user: BoxUser, name: str, code: str, expected: str) -> None:
    assert py(box_user, code) == expected, name


def test_tiocsti_on_its_own_terminal_is_refused(box_user: BoxUser) -> None:
    out = py(box_user, "import fcntl, termios\ntry:\n    fcntl.ioctl(0, termios.TIOCSTI, b'x')\n"
             "    print('injected')\nexcept OSError as e:\n    print(e.strerror)\n", "-t")
    assert out.splitlines()[-1] == "Operation not permitted"


def test_unmount_and_remount_are_refused(box_user: BoxUser) -> None:
    ws = box_user.workspace()
    res = box_user.coopy(
        "run", "--", "sh", "-c",
        "umount /proc/keys 2>/dev/null && echo unmasked; "
        "umount -l /etc 2>/dev/null && echo etc-gone; "
        "mount -o remount,rw /usr 2>/dev/null && echo usr-rw; "
        "touch /usr/pwned 2>/dev/null && echo usr-written; echo done",
        cwd=ws,
    )
    assert res.stdout.split() == ["done"], res.stdout


def test_capabilities_and_no_new_privs(box_user: BoxUser) -> None:
    info = box_user.probe()
    bnd = int(info["cap_bnd"], 16)
    assert not bnd & (1 << 21), "CAP_SYS_ADMIN must not be in the bounding set"
    assert not bnd & (1 << 12), "CAP_NET_ADMIN must not be in the bounding set"
    assert bnd & (1 << 19), "CAP_SYS_PTRACE is kept (gdb, py-spy, CUDA IPC)"
    assert info["no_new_privs"] == "1"
    assert info["seccomp"] == "2"


def test_cannot_signal_a_host_process(box_user: BoxUser) -> None:
    out = py(box_user, f"import os\ntry:\n    os.kill({os.getpid()}, 0)\n    print('reached')\n"
             "except OSError as e:\n    print(e.strerror)\n")
    assert out == "No such process"


def test_git_hooks_and_config_are_read_only(box_user: BoxUser) -> None:
    ws = box_user.workspace()
    subprocess.run(["git", "init", "-q", str(ws)], check=True)
    subprocess.run(["chown", "-R", f"{box_user.uid}:{box_user.pw.pw_gid}", str(ws)], check=True)
    res = box_user.coopy(
        "run", "--", "sh", "-c",
        "echo 'echo pwned' > .git/hooks/pre-commit 2>/dev/null && echo hook-written; "
        "git config core.fsmonitor 'touch /tmp/x' 2>/dev/null && echo config-written; "
        "git status --short >/dev/null && echo status-ok; "
        "touch .git/newref && echo git-dir-writable", cwd=ws,
    )
    assert res.stdout.split() == ["status-ok", "git-dir-writable"], res.stdout + res.stderr
    assert not (ws / ".git/hooks/pre-commit").exists()
    assert "fsmonitor" not in (ws / ".git/config").read_text()


WIDENING = """\
[sandbox]
mounts = ["{secret}:/stolen:ro", "./inside:/inside"]

[env]
TOKEN = "$COOPY_TEST_TOKEN"
PLAIN = "ok"

[security]
seccomp = false

[workspace]
git = "rw"
"""


def test_untrusted_project_file_cannot_widen_the_box(box_user: BoxUser) -> None:
    ws, secret = box_user.workspace(), box_user.workspace()
    (secret / "key").write_text("host secret\n")
    (ws / "inside").mkdir()
    (ws / "coop.toml").write_text(WIDENING.format(secret=secret))
    subprocess.run(["chown", "-R", f"{box_user.uid}", str(ws)], check=True)
    probe = ("cat /stolen/key 2>/dev/null || echo no-mount; echo token=$TOKEN plain=$PLAIN; "
             "ls -d /inside; grep Seccomp: /proc/self/status")
    env = {"COOPY_TEST_TOKEN": "s3cret"}
    res = box_user.coopy("run", "--", "sh", "-c", probe, cwd=ws, env=env)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["no-mount", "token=", "plain=ok", "/inside", "Seccomp:", "2"]
    for what in ("mount " + str(secret), "env TOKEN from the host's $COOPY_TEST_TOKEN",
                 "turn the seccomp filter off", ".git/hooks and .git/config writable"):
        assert what in res.stderr, res.stderr
    assert "hint: review the file, then run `coopy trust`" in res.stderr

    # Approved: everything applies.  Then the agent edits the file: approval is void.
    trusted = box_user.coopy("trust", cwd=ws)
    assert trusted.returncode == 0, trusted.stderr
    assert "line 2: mount" in trusted.stdout
    res = box_user.coopy("run", "--", "sh", "-c", probe, cwd=ws, env=env)
    assert res.stdout.split() == ["host", "secret", "token=s3cret", "plain=ok", "/inside",
                                  "Seccomp:", "0"], res.stdout + res.stderr
    res = box_user.coopy("run", "--", "sh", "-c", "echo '# edited' >> coop.toml", cwd=ws)
    res = box_user.coopy("run", "--", "sh", "-c", probe, cwd=ws, env=env)
    assert res.stdout.split()[:2] == ["no-mount", "token="], res.stdout
    assert box_user.coopy("trust", "--revoke", cwd=ws).returncode == 0


def test_project_file_of_another_user_is_ignored(box_user: BoxUser) -> None:
    ws = box_user.workspace()
    (ws / "coop.toml").write_text('[env]\nFROM_FILE = "yes"\n')
    other = 65534  # nobody: neither the caller nor root
    os.chown(ws / "coop.toml", other, other)
    res = box_user.coopy("run", "--", "sh", "-c", "echo x$FROM_FILE", cwd=ws)
    assert res.stdout.strip() == "x"
    assert "belongs to another user" in res.stderr


def test_trust_without_a_file(box_user: BoxUser) -> None:
    res = box_user.coopy("trust", cwd=box_user.workspace())
    assert res.returncode == 125
    assert "no coop.toml here or in a parent directory" in res.stderr


def test_user_config_can_relax_security(box_user: BoxUser) -> None:
    ws = box_user.workspace()
    env = box_user.user_config("[security]\nnested_userns = true\n")
    res = box_user.coopy("run", "--", "unshare", "-U", "true", cwd=ws, env=env)
    assert res.returncode == 0, res.stderr


def test_pid_limit_counts_only_the_box(box_user: BoxUser) -> None:
    ws = box_user.workspace()
    env = box_user.user_config("[limits]\npids = 40\n")
    code = (
        "import os, time\nkids = []\nerr = 'none'\n"
        "for _ in range(200):\n"
        "    try:\n        pid = os.fork()\n    except OSError as e:\n"
        "        err = e.strerror\n        break\n"
        "    if pid == 0:\n        time.sleep(30)\n        os._exit(0)\n    kids.append(pid)\n"
        "for k in kids:\n    os.kill(k, 9)\n    os.waitpid(k, 0)\n"
        "print(len(kids), err)\n"
    )
    (ws / "bomb.py").write_text(code)
    res = box_user.coopy("run", "--", "python3", str(ws / "bomb.py"), cwd=ws, env=env)
    assert res.returncode == 0, res.stderr
    count, err = res.stdout.split(maxsplit=1)
    # init and python count too: 40 - 2 children at most, and no fewer than that minus
    # a margin: the host user's own processes are not counted (kernel >= 5.14)
    assert 30 <= int(count) <= 38, res.stdout
    assert err.strip() == "Resource temporarily unavailable"


def test_what_agents_need_still_works(box_user: BoxUser) -> None:
    ws = box_user.workspace()
    code = (
        "import ctypes, os, multiprocessing, multiprocessing.shared_memory as shm\n"
        "fd = os.memfd_create('x'); os.close(fd)\n"
        "m = shm.SharedMemory(create=True, size=1 << 20); m.close(); m.unlink()\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "pid = os.fork()\n"
        "if pid == 0:\n    import time; time.sleep(5); os._exit(0)\n"
        "PTRACE_ATTACH, PTRACE_DETACH = 16, 17\n"
        "r = libc.ptrace(PTRACE_ATTACH, pid, None, None)\n"
        "os.waitpid(pid, os.WUNTRACED)\n"
        "libc.ptrace(PTRACE_DETACH, pid, None, None); os.kill(pid, 9); os.waitpid(pid, 0)\n"
        "with multiprocessing.Pool(2) as p:\n    assert p.map(abs, [-1, -2]) == [1, 2]\n"
        "print('ptrace' if r == 0 else os.strerror(ctypes.get_errno()), 'all-ok')\n"
    )
    assert py(box_user, code, ws=ws) == "ptrace all-ok"
