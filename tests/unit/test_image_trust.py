"""Images a project file names by host path (oci:, dir:) or its own recipe need trust."""

from __future__ import annotations

from pathlib import Path

import pytest

from coopy.config import load_config
from coopy.trust import project_grants, without_grants


@pytest.mark.parametrize(("image", "gated"), [
    ("oci:./img.tar", True),
    ("dir:/srv/rootfs", True),
    ("dir:~/rootfs", True),
    ("recipe:mine", True),  # not one of coopy's: the project's rootfs/mine.toml
    ("debian:12", False),
    ("host", False),
    ("localhost:5000/x:1", False),
])
def test_local_images_need_trust(tmp_path: Path, image: str, gated: bool) -> None:
    project = tmp_path / "coop.toml"
    project.write_text(f'[sandbox]\nimage = "{image}"\n')
    config = load_config(tmp_path, project, user_file=None)
    grants = project_grants(config, project, tmp_path)
    assert [g.key for g in grants] == (["sandbox.image"] if gated else [])
    if gated:
        assert grants[0].line == 2 and "image " in grants[0].what
        assert without_grants(config, grants).sandbox.image == "host"


def test_paths_are_the_files_directory(tmp_path: Path) -> None:
    project = tmp_path / "coop.toml"
    project.write_text('[sandbox]\nimage = "oci:./x.tar:v1"\n')
    assert load_config(tmp_path, project, user_file=None).sandbox.image == \
        f"oci:{tmp_path}/x.tar:v1"
    config = load_config(tmp_path, None, user_file=None, cli={"sandbox.image": "dir:rf"})
    assert config.sandbox.image == f"dir:{Path.cwd()}/rf"
    # from the command line: the user's own choice, nothing to approve
    assert project_grants(config, project, tmp_path) == []
