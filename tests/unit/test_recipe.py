"""rootfs recipes: parsing and the mmdebstrap command line (building needs a mirror:
checked by hand, see docs/design.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from coopy.errors import ConfigError
from coopy.image.recipe import Recipe, find_recipe, mmdebstrap_argv, parse_recipe

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_recipe_parses() -> None:
    path = ROOT / "rootfs" / "debian-python.toml"
    recipe = parse_recipe(path.read_text(), str(path))
    assert recipe == Recipe("bookworm", "minbase", ("python3", "git", "ca-certificates"))


def test_installed_package_ships_the_recipes() -> None:
    """The installed coopy (tests/run.sh: `pip install .`, not editable) finds coopy's own
    recipes inside itself, never in this checkout."""
    code = ("import pathlib, coopy.image.recipe as r; "
            "print(r.find_recipe('debian-python', pathlib.Path('/nonexistent')))")
    res = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True,
                         text=True, check=True)
    found = Path(res.stdout.strip())
    if str(found).startswith(str(ROOT)):
        pytest.skip("coopy is installed editable (from this checkout)")
    assert found.parent.name == "recipes" and found.parent.parent.name == "coopy"
    assert found.read_text() == (ROOT / "rootfs" / "debian-python.toml").read_text()


def test_project_recipe_wins(tmp_path: Path) -> None:
    (tmp_path / "rootfs").mkdir()
    (tmp_path / "rootfs" / "debian-python.toml").write_text('suite = "trixie"\n')
    assert find_recipe("debian-python", tmp_path) == tmp_path / "rootfs" / "debian-python.toml"


@pytest.mark.parametrize(("text", "message"), [
    ('suite = "bookworm"\nextra = 1\n', "unknown keys"),
    ("suite = 12\n", "suite"),
    ('suite = "bookworm"\nvariant = "tiny"\n', "variant"),
    ('suite = "bookworm"\ninclude = ["--hook=x"]\n', "include"),
    ('suite = "bookworm"\ninclude = ["a,b"]\n', "include"),
    ('suite = "bookworm"\nmirror = "file:///etc"\n', "mirror"),
])
def test_bad_recipes(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_recipe(text, "r.toml")


def test_mmdebstrap_argv() -> None:
    recipe = Recipe("bookworm", "minbase", ("python3", "git"), "http://deb.debian.org/debian")
    assert mmdebstrap_argv(recipe, Path("/t/out.tar"), root=False) == [
        "mmdebstrap", "--quiet", "--variant=minbase", "--mode=unshare", "--format=tar",
        "--include=python3,git", "bookworm", "/t/out.tar", "http://deb.debian.org/debian"]
    assert "--mode=root" in mmdebstrap_argv(recipe, Path("/t/o.tar"), root=True)


def test_unknown_recipe(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no recipe"):
        find_recipe("nope", tmp_path)
    with pytest.raises(ConfigError, match="plain name"):
        find_recipe("../x", tmp_path)
