"""``recipe:NAME``: a root filesystem built by mmdebstrap from a small TOML recipe.

A recipe names a Debian (or Ubuntu) suite, a variant and packages::

    suite = "bookworm"
    variant = "minbase"
    include = ["python3", "git"]
    mirror = "http://deb.debian.org/debian"      # optional

``NAME`` is looked up as ``<workspace>/rootfs/NAME.toml``, then among coopy's own
(``rootfs/`` of coopy's source, installed as ``coopy/recipes/`` by setup.py).
mmdebstrap writes one tarball (``--mode=root`` as root, ``--mode=unshare`` otherwise,
which needs subordinate ids), which becomes the image's
one layer through the same hardened extractor as any pulled layer.  The image is made
again only when the recipe's text changes.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import NamedTuple

from coopy.errors import ConfigError, ImageError
from coopy.facts import HostFacts
from coopy.idmap import IdMap
from coopy.image.store import ImageRecord, Store

BUILTIN = Path(__file__).parents[1] / "recipes"  # the installed copy of rootfs/*.toml


class Recipe(NamedTuple):
    """A parsed recipe."""

    suite: str
    variant: str = "minbase"
    include: tuple[str, ...] = ()
    mirror: str | None = None


def find_recipe(name: str, workspace: Path) -> Path:
    """The recipe file for ``name``; ConfigError listing where it was looked for."""
    if "/" in name or not name:
        raise ConfigError(f"recipe name {name!r} is not a plain name",
                          hint="recipe:NAME reads rootfs/NAME.toml")
    places = [workspace / "rootfs" / f"{name}.toml", BUILTIN / f"{name}.toml"]
    for place in places:
        if place.is_file():
            return place
    raise ConfigError(f"no recipe {name!r}", hint="looked in " + ", ".join(map(str, places)))


def builtin_recipe(name: str) -> Path | None:
    """coopy's own recipe ``name``, or None."""
    path = BUILTIN / f"{name}.toml"
    return path if "/" not in name and name and path.is_file() else None


def parse_recipe(text: str, where: str) -> Recipe:
    """A Recipe from TOML ``text``; ConfigError naming ``where`` on a bad key or value."""
    import tomllib

    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    unknown = set(doc) - set(Recipe._fields)
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)}",
                          hint="a recipe has suite, variant, include, mirror")
    suite, variant = doc.get("suite"), doc.get("variant", "minbase")
    include, mirror = doc.get("include", []), doc.get("mirror")
    if not isinstance(suite, str) or not suite.isidentifier():
        raise ConfigError(f"{where}: suite: expected a suite name such as \"bookworm\"")
    if variant not in ("extract", "custom", "essential", "apt", "required", "minbase",
                       "buildd", "important", "debootstrap", "standard"):
        raise ConfigError(f"{where}: variant: {variant!r} is not an mmdebstrap variant")
    if not isinstance(include, list) or not all(
            isinstance(p, str) and p and not p.startswith("-") and "," not in p
            for p in include):
        raise ConfigError(f"{where}: include: expected a list of package names")
    if mirror is not None and (not isinstance(mirror, str)
                               or not mirror.startswith(("http://", "https://"))):
        raise ConfigError(f"{where}: mirror: expected an http(s) URL")
    return Recipe(suite, variant, tuple(include), mirror)


def mmdebstrap_argv(recipe: Recipe, out: Path, root: bool) -> list[str]:
    """The mmdebstrap command that writes ``recipe``'s root filesystem to ``out`` (a tar)."""
    argv = ["mmdebstrap", "--quiet", f"--variant={recipe.variant}",
            f"--mode={'root' if root else 'unshare'}", "--format=tar"]
    if recipe.include:
        argv.append("--include=" + ",".join(recipe.include))
    argv += [recipe.suite, str(out)]
    if recipe.mirror:
        argv.append(recipe.mirror)
    return argv


def build_recipe(name: str, workspace: Path, *, facts: HostFacts,
                 idmap: IdMap | None) -> ImageRecord:
    """The image of ``recipe:NAME``, built (or rebuilt after the recipe changed)."""
    from coopy.image.local import install_tar_layer

    path = find_recipe(name, workspace)
    text = path.read_text()
    recipe = parse_recipe(text, str(path))
    stamp = "recipe:" + hashlib.sha256(text.encode()).hexdigest()
    store = Store()
    full = f"recipe:{name}"
    known = store.get(full)
    if known is not None and known.source == stamp and all(
            store.layer_path(layer.digest, idmap).is_dir() for layer in known.layers):
        return known
    if shutil.which("mmdebstrap") is None:
        raise ImageError("recipes are built with mmdebstrap, which is not installed",
                         hint="sudo apt install mmdebstrap")
    store.ensure()
    with tempfile.TemporaryDirectory(prefix="coopy-recipe-", dir=store.root) as tmp:
        out = Path(tmp) / "rootfs.tar"
        sys.stderr.write(f"coopy: building {full} with mmdebstrap ({recipe.suite}, "
                      f"{recipe.variant}, {len(recipe.include)} extra packages)\n")
        res = subprocess.run(mmdebstrap_argv(recipe, out, facts.uid == 0),
                             stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if res.returncode != 0:
            raise ImageError(f"mmdebstrap failed ({res.returncode}) for {path}: "
                             f"{res.stderr.strip()[-2000:]}",
                             hint="rootless builds need subordinate ids (--mode=unshare)")
        record = install_tar_layer(full, out, facts=facts, idmap=idmap, source=stamp)
    return record
