"""Images end to end: a real registry on loopback, images pushed by the test, pulled and
run by coopy as root and rootless.

The registry is Debian's docker-registry (distribution 2.8), started once per session on
127.0.0.1 and stopped at the end; images are OCI layouts written here and pushed with
skopeo.  A stub in front of it (tests/imagekit.py) asks for bearer tokens or basic
credentials, redirects blobs to a "CDN" that refuses Authorization headers, or alters
blobs in flight.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import WORK_BASE, BoxUser
from tests.imagekit import (
    AuthStub,
    Entry,
    OciLayout,
    Registry,
    base_entries,
    probe_binary,
    push,
    tar_bytes,
    top_entries,
)

pytestmark = pytest.mark.registry


class Images:
    """The session's registry and what was pushed to it."""

    def __init__(self, registry: Registry, layout: OciLayout, info: dict[str, Any]) -> None:
        self.registry = registry
        self.layout = layout
        self.info = info

    def ref(self, name: str, host: str | None = None) -> str:
        return f"{host or self.registry.host}/{name}"


@pytest.fixture(scope="session")
def images() -> Iterator[Images]:
    if not shutil.which("docker-registry") or not shutil.which("skopeo"):
        pytest.skip("needs docker-registry and skopeo (apt install docker-registry skopeo)")
    base = WORK_BASE / "images-session"
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    registry = Registry(base / "registry")
    registry.start()
    try:
        layout = OciLayout(base / "oci")
        probe = probe_binary(base)
        bottom, top = tar_bytes(base_entries(probe)), tar_bytes(top_entries())
        img = layout.image([(bottom, "gzip"), (top, "zstd")])
        layout.tag(img, "img")
        plain = layout.image([(bottom, None)])
        layout.tag(plain, "plain")
        marker = tar_bytes([Entry("etc/arch", data="arm64\n")])
        arm = layout.image([(bottom, "gzip"), (marker, "gzip")], arch="arm64")
        layout.tag(layout.index([img, arm]), "multi")
        hostile = layout.image([(bottom, "gzip"), (tar_bytes([Entry("../../evil", data="x")]),
                                                   "gzip")])
        layout.tag(hostile, "hostile")
        # a config that lies about the top layer's diff_id (blob digests all correct)
        layout.tag(layout.image([(bottom, "gzip"), (top, None)], lie=1), "liar")
        for tag in ("img", "plain", "multi", "hostile", "liar"):
            push(base / "oci", tag, f"{registry.host}/test/{tag}:v1")
        info = {"bottom_gz": hashlib.sha256(_gz_of(layout, img, 0)).hexdigest(),
                "img": img}
        yield Images(registry, layout, info)
    finally:
        registry.stop()
        shutil.rmtree(base, ignore_errors=True)


def _gz_of(layout: OciLayout, desc: dict[str, Any], index: int) -> bytes:
    manifest = json.loads((layout.path / "blobs" / "sha256" / desc["digest"][7:]).read_bytes())
    return (layout.path / "blobs" / "sha256" / manifest["layers"][index]["digest"][7:]) \
        .read_bytes()


@pytest.fixture
def home(box_user: BoxUser) -> dict[str, str]:
    """A COOPY_HOME of this test's own (store and state), owned by the user."""
    path = box_user.workspace()
    return {"COOPY_HOME": str(path / "coopy")}


def run_probe(user: BoxUser, env: dict[str, str], ref: str, *args: str) -> str:
    res = user.coopy("run", "--image", ref, "--", "/bin/imgprobe", *args,
                     cwd=user.workspace(), env=env)
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_pull_then_run(box_user: BoxUser, images: Images, home: dict[str, str]) -> None:
    ref = images.ref("test/img:v1")
    res = box_user.coopy("pull", ref, env=home)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith(f"{ref} sha256:")
    listed = json.loads(box_user.coopy("images", "--json", env=home).stdout)
    assert [(i["name"], i["layers"], i["platform"]) for i in listed] == \
        [(ref, 2, "linux/amd64")]
    # the zstd top layer over the gzip bottom one
    assert "VERSION_ID=\"2\"" in run_probe(box_user, home, ref, "cat", "/etc/os-release")
    # a whiteout hides srv/gone, an opaque directory hides var/lib/old/{a,b}
    assert sorted(run_probe(box_user, home, ref, "ls", "/srv").split()) == ["owned", "suid"]
    assert run_probe(box_user, home, ref, "ls", "/var/lib/old").split() == ["c"]
    # owners and set-user-id bits as the image says, inside the box
    assert run_probe(box_user, home, ref, "stat", "/srv/owned") == "file 644 1000 1000\n"
    assert run_probe(box_user, home, ref, "stat", "/srv/suid") == "file 4755 0 0\n"
    assert run_probe(box_user, home, ref, "stat", "/usr/lib/hardlink") == "file 644 0 0\n"
    assert run_probe(box_user, home, ref, "id") == "0 0\n"
    # the image's Env, and the box's own /etc bits over the image's
    assert run_probe(box_user, home, ref, "env", "PATH") == "/bin:/usr/bin\n"
    passwd = run_probe(box_user, home, ref, "cat", "/etc/passwd")
    assert "daemon:x:1:1:" in passwd and "root:x:0:0:" in passwd
    hostname = run_probe(box_user, home, ref, "cat", "/etc/hostname").strip()
    assert hostname.startswith(box_user.name)
    # deleting a file of a lower layer works (overlay whiteout in the box's upper)
    ws = box_user.workspace()
    res = box_user.coopy("run", "--image", ref, "--", "/bin/imgprobe", "rm", "/srv/owned",
                         cwd=ws, env=home)
    assert res.returncode == 0, res.stderr


def test_layers_are_shared_and_unpacked_once(box_user: BoxUser, images: Images,
                                             home: dict[str, str]) -> None:
    for name in ("test/img:v1", "test/plain:v1"):
        res = box_user.coopy("pull", images.ref(name), env=home)
        assert res.returncode == 0, res.stderr
    layers = Path(home["COOPY_HOME"]) / "data" / "layers"
    (mapdir,) = list(layers.iterdir())
    # img: gzip bottom + zstd top; plain: the same bottom uncompressed (another blob)
    assert len([p for p in mapdir.iterdir() if p.is_dir()]) == 3
    res = box_user.coopy("pull", images.ref("test/img:v1"), env=home)
    assert "2 layers, 0 to fetch" in res.stderr


def test_run_pulls_a_missing_image(box_user: BoxUser, images: Images,
                                   home: dict[str, str]) -> None:
    res = box_user.coopy("run", "--image", images.ref("test/img:v1"), "--", "/bin/imgprobe",
                         "id", cwd=box_user.workspace(), env=home)
    assert res.returncode == 0, res.stderr
    assert "is not here: pulling it" in res.stderr


def test_platform_choice(box_user: BoxUser, images: Images, home: dict[str, str]) -> None:
    ref = images.ref("test/multi:v1")
    res = box_user.coopy("pull", "--platform", "linux/arm64", ref, env=home)
    assert res.returncode == 0, res.stderr
    assert run_probe(box_user, home, ref, "cat", "/etc/arch") == "arm64\n"
    res = box_user.coopy("pull", ref, env=home)  # this host's: amd64
    assert res.returncode == 0, res.stderr
    listed = json.loads(box_user.coopy("images", "--json", env=home).stdout)
    assert listed[0]["platform"] == "linux/amd64"
    res = box_user.coopy("pull", "--platform", "linux/s390x", ref, env=home)
    assert res.returncode == 125
    assert "has no image for linux/s390x" in res.stderr and "linux/arm64" in res.stderr


def test_bearer_token_flow_and_cdn_redirect(box_user: BoxUser, images: Images,
                                            home: dict[str, str]) -> None:
    stub = AuthStub(images.registry.host, "bearer")
    res = pull_through(box_user, stub, home)
    assert res.returncode == 0, res.stderr
    assert any(path.startswith("/token?") and "scope=repository%3Atest%2Fimg%3Apull" in path
               for path, _ in stub.log)
    cdn = [(p, a) for p, a in stub.log if p.startswith("/cdn/")]
    assert cdn and all(a is None for _, a in cdn)  # the token never went to the CDN
    assert any(a and a.startswith("Bearer ") for p, a in stub.log if "/manifests/" in p)


def test_basic_auth_from_docker_config(box_user: BoxUser, images: Images,
                                       home: dict[str, str]) -> None:
    stub = AuthStub(images.registry.host, "basic", credentials=("alice", "s3cret"))
    try:
        ref = f"{stub.host}/test/img:v1"
        res = box_user.coopy("pull", ref, env=home)
        assert res.returncode == 125
        assert "wants a user name and password" in res.stderr
        config_dir = box_user.workspace()
        (config_dir / "config.json").write_text(json.dumps({"auths": {stub.host: {
            "auth": base64.b64encode(b"alice:s3cret").decode()}}}))
        res = box_user.coopy("pull", ref, env={**home, "DOCKER_CONFIG": str(config_dir)})
        assert res.returncode == 0, res.stderr
    finally:
        stub.close()


def pull_through(user: BoxUser, stub: AuthStub, env: dict[str, str]) -> Any:
    """`coopy pull` of test/img:v1 through ``stub``, which is closed after."""
    try:
        return user.coopy("pull", f"{stub.host}/test/img:v1", env=env)
    finally:
        stub.close()


def test_bearer_with_credentials_refused(box_user: BoxUser, images: Images,
                                         home: dict[str, str]) -> None:
    stub = AuthStub(images.registry.host, "bearer", credentials=("bob", "pw"))
    res = pull_through(box_user, stub, home)
    assert res.returncode == 125
    assert "the token service refused anonymous pulls" in res.stderr


def test_altered_blob_is_refused(box_user: BoxUser, images: Images,
                                 home: dict[str, str]) -> None:
    res = pull_through(box_user, AuthStub(images.registry.host, "open", corrupt=True), home)
    assert res.returncode == 125
    assert "arrived with digest" in res.stderr
    data = Path(home["COOPY_HOME"]) / "data"
    assert not list((data / "images").iterdir())
    assert not [p for p in (data / "blobs" / "sha256").iterdir()
                if len(p.name) == 64 and p.name in res.stderr]


def test_transient_errors_are_retried(box_user: BoxUser, images: Images,
                                      home: dict[str, str]) -> None:
    stub = AuthStub(images.registry.host, "open", fail_first=3)
    res = pull_through(box_user, stub, home)
    assert res.returncode == 0, res.stderr
    blob_gets = [p for p, _ in stub.log if "/blobs/" in p]
    assert len(blob_gets) >= 3 + 3  # config and two layers, three of them twice


def test_hostile_layer_is_refused_and_leaves_nothing(box_user: BoxUser, images: Images,
                                                    home: dict[str, str]) -> None:
    res = box_user.coopy("pull", images.ref("test/hostile:v1"), env=home)
    assert res.returncode == 125
    assert "climbs out with '..'" in res.stderr
    layers = Path(home["COOPY_HOME"]) / "data" / "layers"
    leftovers = [p.name for d in layers.iterdir() for p in d.iterdir()
                 if p.name.startswith(".tmp-")]
    assert leftovers == []
    assert not (WORK_BASE / "evil").exists()


def test_layer_not_matching_its_diff_id_is_refused(box_user: BoxUser, images: Images,
                                                   home: dict[str, str]) -> None:
    res = box_user.coopy("pull", images.ref("test/liar:v1"), env=home)
    assert res.returncode == 125, res.stderr
    assert "rootfs.diff_ids says sha256:" in res.stderr and "refused" in res.stderr
    data = Path(home["COOPY_HOME"]) / "data"
    (mapdir,) = list((data / "layers").iterdir())
    # no layer, no half-unpacked directory, no layer blob (fetched again next time),
    # no image record
    assert [p.name for p in mapdir.iterdir()] == ["map.json"]
    blobs = [p.stat().st_size for p in (data / "blobs" / "sha256").iterdir()]
    assert len(blobs) == 2 and max(blobs) < 4096  # the manifest and the config only
    assert box_user.coopy("images", "--json", env=home).stdout.strip() == "[]"


def test_interrupted_download_resumes(box_user: BoxUser, images: Images,
                                      home: dict[str, str]) -> None:
    blobs = Path(home["COOPY_HOME"]) / "data" / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    whole = _gz_of(images.layout, images.info["img"], 0)
    part = blobs / (hashlib.sha256(whole).hexdigest() + ".part")
    part.write_bytes(whole[: len(whole) // 2])
    for p in (Path(home["COOPY_HOME"]), Path(home["COOPY_HOME"]) / "data", blobs.parent, blobs,
              part):
        os.chown(p, box_user.uid, box_user.pw.pw_gid)
    res = box_user.coopy("pull", images.ref("test/img:v1"), env=home)
    assert res.returncode == 0, res.stderr
    assert not part.exists()
    assert run_probe(box_user, home, images.ref("test/img:v1"), "cat", "/usr/lib/hard") == \
        "hard\n"


def test_unknown_image_says_so(box_user: BoxUser, images: Images,
                               home: dict[str, str]) -> None:
    res = box_user.coopy("run", "--image", images.ref("test/nope:v1"), "--", "true",
                         cwd=box_user.workspace(), env=home)
    assert res.returncode == 125
    assert "manifest not found" in res.stderr and "hint:" in res.stderr


def _project(user: BoxUser, ref: str, setup: list[str]) -> Path:
    ws = user.workspace()
    (ws / "coop.toml").write_text(f'[sandbox]\nimage = "{ref}"\nsetup = {json.dumps(setup)}\n')
    return ws


def test_build_caches_each_step(box_user: BoxUser, images: Images,
                                home: dict[str, str]) -> None:
    ref = images.ref("test/img:v1")
    steps = ["imgprobe write /etc/step1 one", "imgprobe write /srv/step2 two"]
    ws = _project(box_user, ref, steps)
    res = box_user.coopy("build", cwd=ws, env=home)
    assert res.returncode == 0, res.stderr
    assert "step 1/2: imgprobe write /etc/step1 one\n" in res.stderr
    res = box_user.coopy("run", "--", "/bin/imgprobe", "cat", "/srv/step2", cwd=ws, env=home)
    assert (res.returncode, res.stdout) == (0, "two"), res.stderr
    res = box_user.coopy("build", cwd=ws, env=home)
    assert res.stderr.count("(cached)") == 2, res.stderr
    # changing step 2 keeps step 1
    ws2 = _project(box_user, ref, [steps[0], "imgprobe write /srv/step2 deux"])
    res = box_user.coopy("build", cwd=ws2, env=home)
    assert "step 1/2: imgprobe write /etc/step1 one (cached)" in res.stderr
    assert "step 2/2: imgprobe write /srv/step2 deux\n" in res.stderr
    res = box_user.coopy("run", "--", "/bin/imgprobe", "cat", "/srv/step2", cwd=ws2, env=home)
    assert res.stdout == "deux"
    res = box_user.coopy("build", "--no-cache", cwd=ws2, env=home)
    assert res.returncode == 0 and "(cached)" not in res.stderr, res.stderr


def test_failed_step_keeps_nothing(box_user: BoxUser, images: Images,
                                   home: dict[str, str]) -> None:
    ref = images.ref("test/img:v1")
    ws = _project(box_user, ref, ["imgprobe write /etc/ok yes", "imgprobe cat /no/such"])
    res = box_user.coopy("build", cwd=ws, env=home)
    assert res.returncode == 125
    assert "setup step 2 failed with status 1" in res.stderr
    data = Path(home["COOPY_HOME"]) / "data" / "layers"
    (mapdir,) = list(data.iterdir())
    names = [p.name for p in mapdir.iterdir() if p.is_dir()]
    assert not [n for n in names if n.startswith(".")]
    assert len(names) == 3  # two image layers and step 1
    assert list((Path(home["COOPY_HOME"]) / "state" / "run").iterdir()) == [] or all(
        p.name.startswith("skel-") for p in (Path(home["COOPY_HOME"]) / "state" / "run")
        .iterdir())
    # `coopy` and `coopy run` build what is missing, and stop at the failing step too
    res = box_user.coopy("run", "--", "/bin/imgprobe", "id", cwd=ws, env=home)
    assert res.returncode == 125 and "setup step 2 failed" in res.stderr


def test_df_and_prune_keep_what_boxes_use(box_user: BoxUser, images: Images,
                                          home: dict[str, str]) -> None:
    img, plain = images.ref("test/img:v1"), images.ref("test/plain:v1")
    for ref in (img, plain):
        assert box_user.coopy("pull", ref, env=home).returncode == 0
    rows = json.loads(box_user.coopy("system", "df", "--json", env=home).stdout)
    assert {r["name"] for r in rows if r["kind"] == "image"} == {img, plain}
    assert len([r for r in rows if r["kind"] == "layer"]) == 3
    # a kept (persistent) box on img: its layers stay through prune --all
    ws = _project(box_user, img, [])
    res = box_user.coopy("-d", "-n", "pruneme", "--", "/bin/imgprobe", "id", cwd=ws, env=home)
    assert res.returncode == 0, res.stderr
    try:
        assert box_user.coopy("images", "rm", plain, env=home).returncode == 0
        res = box_user.coopy("system", "prune", "--all", env=home)
        assert res.returncode == 0, res.stderr
        assert res.stdout.count("removed layer") == 1  # plain's own layer only
        assert f"removed image {img}" not in res.stdout
        res = box_user.coopy("run", "--image", img, "--", "/bin/imgprobe", "cat",
                             "/srv/owned", cwd=ws, env=home)
        assert (res.returncode, res.stdout) == (0, "owned\n"), res.stderr
    finally:
        assert box_user.coopy("rm", "-f", "pruneme", env=home).returncode == 0
    assert box_user.coopy("images", "rm", img, env=home).returncode == 0
    res = box_user.coopy("system", "prune", env=home)
    assert res.stdout.count("removed layer") == 2, res.stdout  # subordinate-owned files too
    layers = Path(home["COOPY_HOME"]) / "data" / "layers"
    assert [p.name for m in layers.iterdir() for p in m.iterdir()] == ["map.json"]


def test_named_volume_ls_rm(box_user: BoxUser, images: Images, home: dict[str, str]) -> None:
    ws = box_user.workspace()
    res = box_user.coopy("run", "--image", images.ref("test/img:v1"), "-v", "cache:/cache",
                         "--", "/bin/imgprobe", "write", "/cache/x", "y", cwd=ws, env=home)
    assert res.returncode == 0, res.stderr
    listed = json.loads(box_user.coopy("volume", "ls", "--json", env=home).stdout)
    assert [v["name"] for v in listed] == ["cache"] and listed[0]["bytes"] > 0
    assert box_user.coopy("volume", "rm", "cache", env=home).returncode == 0
    assert json.loads(box_user.coopy("volume", "ls", "--json", env=home).stdout) == []
    res = box_user.coopy("volume", "rm", "cache", env=home)
    assert res.returncode == 125 and "no volume named 'cache'" in res.stderr


def test_named_volume_is_seeded_from_the_image_once(box_user: BoxUser, images: Images,
                                                     home: dict[str, str]) -> None:
    ref, ws = images.ref("test/img:v1"), box_user.workspace()

    def probe(*args: str, vols: tuple[str, ...] = ("srv:/srv", "old:/var/lib/old")) -> str:
        res = box_user.coopy("run", "--image", ref, *[x for v in vols for x in ("-v", v)],
                             "--", "/bin/imgprobe", *args, cwd=ws, env=home)
        assert res.returncode == 0, res.stderr
        return res.stdout

    assert sorted(probe("ls", "/srv").split()) == ["owned", "suid"]  # "gone": whited out
    assert probe("stat", "/srv") == "dir 755 0 0\n"
    assert probe("stat", "/srv/owned") == "file 644 1000 1000\n"  # owners as in the image
    assert probe("stat", "/srv/suid") == "file 4755 0 0\n"
    assert probe("ls", "/var/lib/old") == "c\n"  # opaque in the top layer
    # the volume is the box's from now on: the image never writes into it again
    probe("rm", "/srv/owned")
    probe("write", "/srv/new", "n")
    assert sorted(probe("ls", "/srv").split()) == ["new", "suid"]
    # /lib is a symlink to usr/lib in the image: followed inside it; hard links kept
    assert sorted(probe("ls", "/usr/lib", vols=("libs:/lib",)).split()) == ["hard", "hardlink"]
    vols = Path(home["COOPY_HOME"]) / "state" / "volumes"
    assert (vols / "libs" / "hard").stat().st_nlink == 2
    # nothing at the target in the image: an empty volume, the box's root's
    assert probe("ls", "/no/such", vols=("empty:/no/such",)) == ""
    assert probe("stat", "/no/such", vols=("empty:/no/such",)) == "dir 755 0 0\n"
    assert sorted(p.name for p in vols.iterdir()) == ["empty", "libs", "old", "srv"]


def test_oci_layout_archive_and_docker_save(box_user: BoxUser, images: Images,
                                            home: dict[str, str]) -> None:
    layout = images.layout.path
    ws = box_user.workspace()
    src = f"oci:{layout}:img"
    assert "VERSION_ID=\"2\"" in run_probe(box_user, home, src, "cat", "/etc/os-release")
    # the same layout as one tarball (what `skopeo copy … oci-archive:` writes)
    archive = ws / "img.tar"
    subprocess.run(["tar", "-C", str(layout), "-cf", str(archive), "."], check=True)
    assert run_probe(box_user, home, f"oci:{archive}:img", "ls", "/var/lib/old") == "c\n"
    # the older `docker save` form: manifest.json naming <id>/layer.tar files
    save = ws / "save"
    (save / "l1").mkdir(parents=True)
    probe = probe_binary(WORK_BASE / "images-session")
    (save / "l1" / "layer.tar").write_bytes(tar_bytes(base_entries(probe)))
    (save / "cfg.json").write_text(json.dumps({"os": "linux", "architecture": "amd64",
                                               "config": {"Env": ["FROM=save"]}}))
    (save / "manifest.json").write_text(json.dumps([{"Config": "cfg.json",
                                                     "RepoTags": ["t:1"],
                                                     "Layers": ["l1/layer.tar"]}]))
    subprocess.run(["tar", "-C", str(save), "-cf", str(ws / "save.tar"), "."], check=True)
    assert run_probe(box_user, home, f"oci:{ws / 'save.tar'}", "env", "FROM") == "save\n"
    listed = {i["name"]: i for i in json.loads(box_user.coopy("images", "--json",
                                                              env=home).stdout)}
    assert listed[src]["source"] == "oci" and listed[src]["layers"] == 2
    res = box_user.coopy("run", "--image", f"oci:{layout}:nope", "--", "true", cwd=ws, env=home)
    assert res.returncode == 125 and "no image tagged nope" in res.stderr


def _box_1000(user: BoxUser) -> int:
    """The host uid that is uid 1000 in the user's boxes."""
    if user.uid == 0:
        return 1000  # a root filesystem made by root: its ids are the box's
    for line in Path("/etc/subuid").read_text().splitlines():
        name, start, _ = line.split(":")
        if name == user.pw.pw_name:
            return int(start) + 999  # box 1… are the subordinate ids
    raise AssertionError(f"{user.pw.pw_name} has no subordinate ids")


def _rootfs_dir(user: BoxUser, root: Path) -> Path:
    """The test image's bottom layer as a directory of ``user``'s."""
    for entry in base_entries(probe_binary(WORK_BASE / "images-session")):
        path = root / entry.name
        if entry.kind == "dir":
            path.mkdir(parents=True, exist_ok=True)
        elif entry.kind == "file":
            data = entry.data
            path.write_bytes(data if isinstance(data, bytes) else data.encode())
        elif entry.kind == "symlink":
            path.symlink_to(str(entry.data))
            continue
        elif entry.kind == "link":
            os.link(root / str(entry.data), path)
            continue
        os.chmod(path, entry.mode)
    subprocess.run(["chown", "-R", "-h", f"{user.uid}:{user.pw.pw_gid}", str(root)],
                   check=True)
    return root


def test_dir_image(box_user: BoxUser, images: Images, home: dict[str, str]) -> None:
    root = _rootfs_dir(box_user, box_user.workspace() / "rootfs")
    other = _box_1000(box_user)
    os.chown(root / "srv" / "owned", other, other)
    os.chmod(root / "srv" / "suid", 0o4755)  # chown cleared it
    src = f"dir:{root}"
    assert run_probe(box_user, home, src, "stat", "/srv/owned") == "file 644 1000 1000\n"
    assert run_probe(box_user, home, src, "stat", "/srv/suid") == "file 4755 0 0\n"
    assert run_probe(box_user, home, src, "stat", "/srv/gone") == "file 644 0 0\n"
    # a change to the directory is seen by the next box; the import is kept until then
    (root / "etc" / "new").write_text("new\n")
    os.chown(root / "etc" / "new", box_user.uid, box_user.pw.pw_gid)
    assert run_probe(box_user, home, src, "cat", "/etc/new") == "new\n"
    listed = [i["name"] for i in json.loads(box_user.coopy("images", "--json",
                                                           env=home).stdout)]
    assert listed == [src]
    assert box_user.coopy("images", "rm", src, env=home).returncode == 0


# imgprobe as sh runs "imgprobe cat …" (and ignores the rest); the host's sh runs cat
CAT_RELEASE = "imgprobe cat /etc/os-release 2>/dev/null || cat /etc/os-release"


def test_project_local_images_need_trust(box_user: BoxUser, images: Images,
                                         home: dict[str, str]) -> None:
    ws = box_user.workspace()
    host_release = Path("/etc/os-release").read_text()
    for image in (f"oci:{images.layout.path}:img", "dir:./rootfs"):
        if image.startswith("dir:"):
            _rootfs_dir(box_user, ws / "rootfs")
            (ws / "rootfs" / "etc" / "os-release").write_text("ID=coopytest\n")
        (ws / "coop.toml").write_text(f'[sandbox]\nimage = "{image}"\n')
        res = box_user.coopy("run", "--", "sh", "-c", CAT_RELEASE, cwd=ws, env=home)
        assert (res.returncode, res.stdout) == (0, host_release), res.stderr
        assert "asks for more than its workspace" in res.stderr
        assert f"line 2: image {image.replace('./', str(ws) + '/')}" in res.stderr
        assert box_user.coopy("trust", cwd=ws, env=home).returncode == 0
        res = box_user.coopy("run", "--", "sh", "-c", CAT_RELEASE, cwd=ws, env=home)
        assert res.returncode == 0 and "ID=coopytest" in res.stdout, res.stderr
        assert "asks for more" not in res.stderr


@pytest.mark.slow
def test_many_layers_are_flattened(box_user: BoxUser, images: Images,
                                   home: dict[str, str]) -> None:
    """503 layers: more than overlayfs stacks (500) and than a box of root is passed
    (150): the bottom ones are merged into one layer, whiteouts and opaque dirs applied."""
    ws = box_user.workspace()
    layout = OciLayout(ws / "many")
    tars = [tar_bytes(base_entries(probe_binary(WORK_BASE / "images-session")))]
    for i in range(1, 503):
        entries = [Entry("l/", "dir", mode=0o755), Entry(f"l/{i}", data=f"{i}\n")]
        if i == 1:
            entries += [Entry("d/", "dir", mode=0o755), Entry("d/x", data="x")]
        if i == 2:  # in the merged part: deletes l/1, hides d/x
            entries += [Entry("l/.wh.1"), Entry("d/", "dir", mode=0o755),
                        Entry("d/.wh..wh..opq"), Entry("d/y", data="y")]
        if i == 500:  # above the merged part: still deletes what is in it
            entries += [Entry("l/.wh.3")]
        tars.append(tar_bytes(entries))
    layout.tag(layout.image([(t, None) for t in tars]), "many")
    subprocess.run(["chown", "-R", f"{box_user.uid}:{box_user.pw.pw_gid}", str(ws)],
                   check=True)
    src = f"oci:{ws / 'many'}:many"
    res = box_user.coopy("run", "--image", src, "--", "/bin/imgprobe", "ls", "/l", cwd=ws,
                         env=home, timeout=300)
    assert res.returncode == 0, res.stderr
    assert sorted(map(int, res.stdout.split())) == [i for i in range(2, 503) if i != 3]
    assert "has 503 layers, more than a box " in res.stderr
    assert run_probe(box_user, home, src, "ls", "/d") == "y\n"
    assert run_probe(box_user, home, src, "stat", "/srv/owned") == "file 644 1000 1000\n"
    # made once: the next box uses it; prune keeps it while the image is kept
    res = box_user.coopy("run", "--image", src, "--", "/bin/imgprobe", "cat", "/l/502",
                         cwd=ws, env=home)
    assert (res.returncode, res.stdout) == (0, "502\n") and "merging" not in res.stderr
    assert box_user.coopy("system", "prune", env=home).returncode == 0
    res = box_user.coopy("run", "--image", src, "--", "/bin/imgprobe", "id", cwd=ws, env=home)
    assert res.returncode == 0 and "merging" not in res.stderr, res.stderr
    listed = [i["name"] for i in json.loads(box_user.coopy("images", "--json", env=home).stdout)]
    assert len(listed) == 2 and listed[1].startswith(src + "+flat-")


def test_killed_build_leaves_no_half_layer(box_user: BoxUser, images: Images,
                                           home: dict[str, str]) -> None:
    ref = images.ref("test/img:v1")
    ws = _project(box_user, ref, ["imgprobe write /etc/a 1", "imgprobe sleep 60"])
    proc = subprocess.Popen(box_user.argv(["build"]), cwd=ws, env=box_user.env(home),
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    run_dir = Path(home["COOPY_HOME"]) / "state" / "run"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # step 2's box is up: its upper exists
            if run_dir.is_dir() and any((d / "upper").is_dir() and (d / "image-layers")
                                        .exists() for d in run_dir.iterdir()
                                        if not d.name.startswith("skel-")):
                layers = Path(home["COOPY_HOME"]) / "data" / "layers"
                if sum(1 for m in layers.iterdir() for p in m.iterdir() if p.is_dir()) == 3:
                    break
            time.sleep(0.05)
        else:
            pytest.fail("the build never reached step 2")
    finally:
        proc.kill()
        proc.wait(timeout=30)
        assert proc.stderr is not None
        proc.stderr.close()
    layers = Path(home["COOPY_HOME"]) / "data" / "layers"
    (mapdir,) = list(layers.iterdir())
    assert len([p for p in mapdir.iterdir() if p.is_dir()]) == 3  # image + step 1 only
    ws2 = _project(box_user, ref, ["imgprobe write /etc/a 1", "imgprobe write /etc/b 2"])
    res = box_user.coopy("build", cwd=ws2, env=home)
    assert res.returncode == 0, res.stderr
    assert "step 1/2: imgprobe write /etc/a 1 (cached)" in res.stderr
    # the killed box's directory was swept by the next start
    assert [d.name for d in run_dir.iterdir() if not d.name.startswith("skel-")] == []


def test_note_when_config_is_newer_than_the_image(box_user: BoxUser, images: Images,
                                                  home: dict[str, str]) -> None:
    ref = images.ref("test/img:v1")
    assert box_user.coopy("pull", ref, env=home).returncode == 0
    time.sleep(0.05)
    ws = _project(box_user, ref, [])
    res = box_user.coopy("run", "--", "/bin/imgprobe", "id", cwd=ws, env=home)
    assert res.returncode == 0, res.stderr
    assert f"{ref} was pulled before coop.toml last changed" in res.stderr
