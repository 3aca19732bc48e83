"""Builds coopy's native helpers during `pip install` (the rest is in pyproject.toml).

The helpers (native/*.c) are compiled by the Makefile's `native` target into
coopy/libexec/, then copied into the wheel; the wheel is marked platform-specific.
coop.toml.example and the recipes of rootfs/ are copied in too (coopy/recipes/).
Nothing is looked up in the source tree at run time.
"""

import os
import shutil
import subprocess

from setuptools import Distribution, setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
HELPERS = ["coopy-init"]


class BuildWithNative(build_py):
    def run(self):
        if shutil.which("make"):
            subprocess.run(["make", "-C", HERE, "native"], check=True)
        else:  # the same flags as the Makefile, for hosts without make
            os.makedirs(os.path.join(HERE, "coopy", "libexec"), exist_ok=True)
            for name in HELPERS:
                subprocess.run(
                    [os.environ.get("CC", "cc"), "-O2", "-std=gnu11", "-Wall", "-Wextra",
                     "-Werror", "-D_FORTIFY_SOURCE=2", "-fstack-protector-strong",
                     "-o", os.path.join(HERE, "coopy", "libexec", name),
                     os.path.join(HERE, "native", f"{name}.c"), "-static"],
                    check=True,
                )
        super().run()
        # `coopy init` writes the commented example; it ships inside the package.
        shutil.copy2(os.path.join(HERE, "coop.toml.example"),
                     os.path.join(self.build_lib, "coopy", "coop.toml.example"))
        # coopy's own rootfs recipes (recipe:NAME): rootfs/*.toml → coopy/recipes/.
        recipes = os.path.join(self.build_lib, "coopy", "recipes")
        os.makedirs(recipes, exist_ok=True)
        for name in sorted(os.listdir(os.path.join(HERE, "rootfs"))):
            if name.endswith(".toml"):
                shutil.copy2(os.path.join(HERE, "rootfs", name), os.path.join(recipes, name))
        out = os.path.join(self.build_lib, "coopy", "libexec")
        os.makedirs(out, exist_ok=True)
        for name in HELPERS:
            dst = os.path.join(out, name)
            shutil.copy2(os.path.join(HERE, "coopy", "libexec", name), dst)
            os.chmod(dst, 0o755)


class NativeDistribution(Distribution):
    def has_ext_modules(self):
        return True  # the wheel carries compiled helpers: tag it for this platform


setup(cmdclass={"build_py": BuildWithNative}, distclass=NativeDistribution)
