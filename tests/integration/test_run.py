"""``coopy run`` end to end: real namespaces, mounts and processes, as root and rootless."""

from __future__ import annotations

import os
import stat
import uuid
from pathlib import Path

import pytest

from tests.conftest import BoxUser


def test_readme_first_command_prints_os_release(box_user: BoxUser) -> None:
    res = box_user.coopy("run", "--", "cat", "/etc/os-release", cwd=box_user.workspace())
    assert res.returncode == 0, res.stderr
    assert res.stdout == Path("/etc/os-release").read_text()


@pytest.mark.parametrize(
    ("command", "status"),
    [
        (["sh", "-c", "exit 3"], 3),
        (["true"], 0),
        (["sh", "-c", "kill -9 $$"], 137),
        (["sh", "-c", "kill -TERM $$"], 143),
    ],
)
def test_exit_status_is_passed_through(box_user: BoxUser, command: list[str], status: int) -> None:
    res = box_user.coopy("run", "--", *command, cwd=box_user.workspace())
    assert res.returncode == status, res.stderr


def test_command_not_found_is_127_with_a_message(box_user: BoxUser) -> None:
    res = box_user.coopy("run", "--", "no-such-program-xyz", cwd=box_user.workspace())
    assert res.returncode == 127
    assert 'coopy: cannot run "no-such-program-xyz" in the box: not found' in res.stderr
    assert "hint:" in res.stderr


def test_command_not_executable_is_126(box_user: BoxUser) -> None:
    ws = box_user.workspace()
    (ws / "script").write_text("echo hi\n")
    os.chown(ws / "script", box_user.uid, box_user.pw.pw_gid)
    res = box_user.coopy("run", "--", str(ws / "script"), cwd=ws)
    assert res.returncode == 126
    assert "Permission denied" in res.stderr


def test_stdin_pipe_reaches_the_command(box_user: BoxUser) -> None:
    res = box_user.coopy("run", "--", "cat", input="hi from the host\n", cwd=box_user.workspace())
    assert res.returncode == 0, res.stderr
    assert res.stdout == "hi from the host\n"


def test_identity_and_id_map(box_user: BoxUser) -> None:
    info = box_user.probe()
    assert (info["uid"], info["gid"]) == (0, 0)
    if box_user.name == "root":
        # Box root is one of root's subordinate ids, never host root.
        start, outside, count = (int(x) for x in info["uid_map"][0].split())
        assert (start, count) == (0, 65536) and outside != 0
    else:
        lines = [tuple(int(x) for x in line.split()) for line in info["uid_map"]]
        assert lines[0] == (0, box_user.uid, 1)
        assert sum(c for _, _, c in lines) == 65536  # the full subordinate range


def test_hostname_and_working_directory(box_user: BoxUser) -> None:
    ws = box_user.workspace()
    info = box_user.probe(cwd=ws)
    assert info["hostname"] == ws.name.lower()
    assert info["etc_hostname"] == ws.name.lower()
    assert info["cwd"] == str(ws)
    info = box_user.probe("--hostname", "agent-7")
    assert info["hostname"] == "agent-7"


def test_host_processes_are_not_visible(box_user: BoxUser) -> None:
    info = box_user.probe()
    assert info["pid1_comm"] == "coopy-init"
    assert info["ppid"] == 1
    assert len(info["pids"]) <= 3  # init, the probe (and nothing of the host)
    assert os.getpid() not in info["pids"] or os.getpid() <= 3


def test_host_home_and_secrets_are_not_visible(box_user: BoxUser) -> None:
    marker = box_user.home / f".coopy-marker-{uuid.uuid4().hex[:6]}"
    marker.write_text("secret")
    try:
        info = box_user.probe(extra=[str(marker), "/etc/shadow", "/etc/gshadow",
                                     "/etc/os-release", "/root/.bashrc", "/home"])
    finally:
        marker.unlink()
    paths = info["paths"]
    assert not paths[str(marker)]["exists"]
    assert not paths["/etc/shadow"]["exists"]
    assert not paths["/etc/gshadow"]["exists"]
    assert paths["/etc/os-release"]["readable"]
    # passwd: system accounts and the box's users only
    names = {line.split(":")[0] for line in info["etc_passwd"].splitlines()}
    assert "root" in names
    human = {n for n in names if n not in ("root", "nobody", box_user.pw.pw_name)}
    for line in info["etc_passwd"].splitlines():
        name, _, uid, *_ = line.split(":")
        if name in human:
            assert int(uid) < 1000, f"host user {name} leaked into the box's passwd"


def test_environment_is_built_not_inherited(box_user: BoxUser) -> None:
    info = box_user.probe(env={"COOPY_TEST_SECRET": "s3cret", "LC_TIME": "C.UTF-8",
                               "AWS_SECRET_ACCESS_KEY": "x"})
    env = info["env"]
    assert "COOPY_TEST_SECRET" not in env
    assert "AWS_SECRET_ACCESS_KEY" not in env
    assert env["LC_TIME"] == "C.UTF-8"
    assert env["container"] == "coopy"
    assert env["IS_SANDBOX"] == "1"
    assert env["HOME"] == "/root"
    assert env["PATH"].startswith("/usr/local/sbin")


def test_env_flags(box_user: BoxUser) -> None:
    info = box_user.probe("-e", "FOO=bar", "-e", "FROM_HOST", env={"FROM_HOST": "yes"})
    assert info["env"]["FOO"] == "bar"
    assert info["env"]["FROM_HOST"] == "yes"


def test_no_inherited_fds(box_user: BoxUser) -> None:
    ws = box_user.workspace()
    extra = os.open("/etc/hostname", os.O_RDONLY)  # inheritable, as a careless caller's
    os.set_inheritable(extra, True)
    try:
        res = box_user.coopy("run", "--", "ls", "/proc/self/fd", cwd=ws)
    finally:
        os.close(extra)
    assert res.returncode == 0, res.stderr
    fds = sorted(int(x) for x in res.stdout.split())
    assert fds == [0, 1, 2, 3]  # 3 is ls's own directory fd


def test_workspace_is_read_write_and_files_belong_to_the_caller(box_user: BoxUser) -> None:
    ws = box_user.workspace()
    (ws / "from-host").write_text("host\n")
    res = box_user.coopy(
        "run", "--", "sh", "-c", "cat from-host && echo box > from-box && mkdir d",
        cwd=ws,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout == "host\n"
    assert (ws / "from-box").read_text() == "box\n"
    for path in (ws / "from-box", ws / "d"):
        st = path.stat()
        assert (st.st_uid, st.st_gid) == (box_user.uid, box_user.pw.pw_gid)


def test_named_user_files_still_belong_to_the_caller(box_user: BoxUser) -> None:
    ws = box_user.workspace()
    res = box_user.coopy("run", "--user", "agent", "--", "sh", "-c",
                         "id -un; id -u; echo x > by-agent; echo $HOME", cwd=ws)
    assert res.returncode == 0, res.stderr
    name, uid, home = res.stdout.split()
    assert name == "agent" and int(uid) != 0 and home == "/home/agent"
    st = (ws / "by-agent").stat()
    assert st.st_uid == box_user.uid


def test_volumes_rw_and_ro(box_user: BoxUser) -> None:
    ws = box_user.workspace()
    rw, ro = box_user.workspace(), box_user.workspace()
    (ro / "data").write_text("dataset\n")
    res = box_user.coopy(
        "run", "-v", f"{rw}:/mnt/rw", "-v", f"{ro}:/mnt/ro:ro", "--", "sh", "-c",
        "echo out > /mnt/rw/out && cat /mnt/ro/data && ! touch /mnt/ro/new 2>/dev/null",
        cwd=ws,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout == "dataset\n"
    assert (rw / "out").read_text() == "out\n"
    assert not (ro / "new").exists()


def test_readonly_volume_cannot_be_remounted_rw(box_user: BoxUser) -> None:
    ws, ro = box_user.workspace(), box_user.workspace()
    res = box_user.coopy(
        "run", "-v", f"{ro}:/data:ro", "--", "sh", "-c",
        "mount -o remount,rw /data 2>&1; touch /data/x 2>&1 || echo still-ro", cwd=ws,
    )
    assert "still-ro" in res.stdout
    assert not (ro / "x").exists()


def test_tilde_in_volume_is_the_callers_home(box_user: BoxUser) -> None:
    sub = box_user.home / f"coopy-vol-{uuid.uuid4().hex[:6]}"
    sub.mkdir()
    os.chown(sub, box_user.uid, box_user.pw.pw_gid)
    (sub / "f").write_text("home file\n")
    try:
        res = box_user.coopy("run", "-v", f"~/{sub.name}:/h:ro", "--", "cat", "/h/f",
                             cwd=box_user.workspace())
    finally:
        (sub / "f").unlink()
        sub.rmdir()
    assert res.returncode == 0, res.stderr
    assert res.stdout == "home file\n"


def test_root_filesystem_layout(box_user: BoxUser) -> None:
    info = box_user.probe()
    by_target = {m["target"]: m for m in info["mounts"]}
    assert by_target["/"]["fstype"] == "overlay"
    assert "userxattr" in by_target["/"]["super"]
    assert "ro" in by_target["/usr"]["options"]
    assert "ro" in by_target["/etc"]["options"]
    assert "ro" in by_target["/proc/sys"]["options"]
    assert by_target["/dev/pts"]["fstype"] == "devpts"
    assert by_target["/dev/shm"]["fstype"] == "tmpfs"
    assert by_target["/tmp"]["fstype"] == "tmpfs"
    assert "ro" in by_target["/sys"]["options"]
    # no mount of the host root or of the old root remains
    assert not any(m["target"].startswith("/oldroot") for m in info["mounts"])


def test_system_dirs_are_read_only_but_home_and_tmp_are_writable(box_user: BoxUser) -> None:
    res = box_user.coopy(
        "run", "--", "sh", "-c",
        "touch /usr/x 2>/dev/null && echo usr-writable; "
        "touch /etc/x 2>/dev/null && echo etc-writable; "
        "touch /root/x /tmp/x /var/tmp/x && echo ok",
        cwd=box_user.workspace(),
    )
    assert res.stdout.strip() == "ok", res.stdout + res.stderr


def test_python_and_git_work_inside(box_user: BoxUser) -> None:
    ws = box_user.workspace()
    res = box_user.coopy(
        "run", "--", "sh", "-c",
        "python3 -c 'import ssl, sqlite3; print(41+1)' && git init -q repo && "
        "git -C repo -c user.email=a@b -c user.name=a commit -q --allow-empty -m x && "
        "git -C repo log --oneline | wc -l",
        cwd=ws,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["42", "1"]


def test_network_none_has_loopback_only(box_user: BoxUser) -> None:
    res = box_user.coopy(
        "run", "--net", "none", "--", "python3", "-c",
        "import os, socket\n"
        "print(sorted(os.listdir('/sys/class/net')))\n"
        "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(1)\n"
        "c = socket.create_connection(s.getsockname()); print('loopback-ok')\n",
        cwd=box_user.workspace(),
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.split("\n")[:2] == ["['lo']", "loopback-ok"]


def test_network_host_sees_host_interfaces(box_user: BoxUser) -> None:
    res = box_user.coopy("run", "--net", "host", "--", "ls", "/sys/class/net",
                         cwd=box_user.workspace())
    assert res.returncode == 0, res.stderr
    assert sorted(res.stdout.split()) == sorted(os.listdir("/sys/class/net"))


def test_shm_size_is_configurable(box_user: BoxUser) -> None:
    res = box_user.coopy("run", "--shm-size", "128m", "--", "df", "-k", "/dev/shm",
                         cwd=box_user.workspace())
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[1].split()[1] == str(128 * 1024)


def test_dry_run_prints_the_plan_and_creates_nothing(box_user: BoxUser) -> None:
    before = box_user.state_runs()
    res = box_user.coopy("run", "--dry-run", "-v", "/etc:/hostetc:ro", "--", "true",
                         cwd=box_user.workspace())
    assert res.returncode == 0, res.stderr
    assert "bind /etc → /hostetc (ro" in res.stdout
    assert res.stdout.splitlines()[-1].startswith("pivot_root")
    assert box_user.state_runs() == before


def test_project_config_sets_image_env_and_mounts(box_user: BoxUser) -> None:
    ws = box_user.workspace()
    data = box_user.workspace()
    (data / "x").write_text("from config\n")
    (ws / "coop.toml").write_text(
        f'[sandbox]\nimage = "host"\nmounts = ["{data}:/data:ro"]\n\n[env]\nGREETING = "hello"\n'
    )
    sub = ws / "sub"
    sub.mkdir()
    os.chown(sub, box_user.uid, box_user.pw.pw_gid)
    # a mount from outside the workspace needs the user's approval of the file
    assert box_user.coopy("trust", cwd=sub).returncode == 0
    res = box_user.coopy("run", "--", "sh", "-c", "cat /data/x; echo $GREETING; pwd", cwd=sub)
    box_user.coopy("trust", "--revoke", cwd=sub)
    assert res.returncode == 0, res.stderr
    # the workspace is the directory holding coop.toml, and the cwd inside is it
    assert res.stdout.splitlines() == ["from config", "hello", str(ws)]


def test_workspace_symlink_cannot_redirect_a_mount_to_the_host(box_user: BoxUser) -> None:
    ws, src = box_user.workspace(), box_user.workspace()
    host_dir = box_user.workspace()  # what the symlink names on the host
    os.symlink(str(host_dir), ws / "escape")
    res = box_user.coopy("run", "-v", f"{src}:{ws}/escape/planted", "--", "true", cwd=ws)
    # Resolved inside the box's root, the mount lands in the box, never in host_dir.
    assert res.returncode in (0, 125), res.stderr
    assert os.listdir(host_dir) == []


def test_box_directory_is_removed_after_the_run(box_user: BoxUser) -> None:
    before = box_user.state_runs()
    res = box_user.coopy("run", "--", "sh", "-c", "touch /root/upper-file",
                         cwd=box_user.workspace())
    assert res.returncode == 0, res.stderr
    assert box_user.state_runs() == before


def test_files_of_other_box_users_are_cleaned_up(box_user: BoxUser) -> None:
    # Files owned by box uid 1000 are a subordinate id on the host: the caller cannot
    # delete them there; coopy must still leave nothing behind.
    res = box_user.coopy(
        "run", "--", "sh", "-c",
        "mkdir -p /var/lib/x/y && touch /var/lib/x/y/z && chown -R 1000:1000 /var/lib/x "
        "&& chmod 700 /var/lib/x",
        cwd=box_user.workspace(),
    )
    assert res.returncode == 0, res.stderr


def test_dev_nodes_work(box_user: BoxUser) -> None:
    res = box_user.coopy(
        "run", "--", "sh", "-c",
        "head -c 4 /dev/zero | od -An -tx1; head -c 8 /dev/urandom | wc -c; "
        "echo gone > /dev/null && echo null-ok",
        cwd=box_user.workspace(),
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["00", "00", "00", "00", "8", "null-ok"]


def test_proc_masks(box_user: BoxUser) -> None:
    res = box_user.coopy(
        "run", "--", "sh", "-c",
        "cat /proc/keys 2>/dev/null | wc -c; ls /sys/firmware | wc -l; "
        "echo 1 > /proc/sys/kernel/ns_last_pid 2>/dev/null || echo sys-ro",
        cwd=box_user.workspace(),
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["0", "0", "sys-ro"]


def test_state_dir_is_private(box_user: BoxUser) -> None:
    box_user.coopy("run", "--", "true", cwd=box_user.workspace())
    st = (box_user.home / ".local/state/coopy").stat()
    assert stat.S_IMODE(st.st_mode) == 0o700
    assert st.st_uid == box_user.uid
