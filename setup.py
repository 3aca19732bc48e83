"""Builds coopy's native helpers during `pip install` (the rest is in pyproject.toml).

The helpers (native/coopy-init.c, and the front end `coopy` from native/front/*.c) are
compiled by the Makefile's `native` target into coopy/libexec/, then copied into the
wheel; the wheel is marked platform-specific.
coop.toml.example and the recipes of rootfs/ are copied in too (coopy/recipes/).
Nothing is looked up in the source tree at run time.
"""

import glob
import os
import shutil
import subprocess

from setuptools import Distribution, setup
from setuptools.command.build_py import build_py
from distutils.command.build_scripts import build_scripts  # setuptools provides it

HERE = os.path.dirname(os.path.abspath(__file__))
HELPERS = ["coopy-init", "coopy-keeper", "coopy"]


MULTI = {"coopy": "front", "coopy-keeper": "keeper"}  # helpers of several files: their dir


def sources(name):
    """A helper's C files: native/NAME.c, or native/DIR/*.c for those in MULTI."""
    if name in MULTI:
        return sorted(glob.glob(os.path.join(HERE, "native", MULTI[name], "*.c")))
    return [os.path.join(HERE, "native", f"{name}.c")]


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
                     *sources(name), "-static"],
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


class NativeFrontEnd(build_scripts):
    """Installs the native front end (native/front/) as the `coopy` command.

    distutils would read a script's first line as text to rewrite a shebang; a
    compiled program has none, so it is copied as it is.
    """

    def run(self):
        self.run_command("build_py")  # builds the helpers
        os.makedirs(self.build_dir, exist_ok=True)
        dst = os.path.join(self.build_dir, "coopy")
        shutil.copy2(os.path.join(HERE, "coopy", "libexec", "coopy"), dst)
        os.chmod(dst, 0o755)

    def get_outputs(self):
        return [os.path.join(self.build_dir, "coopy")]


class NativeDistribution(Distribution):
    def has_ext_modules(self):
        return True  # the wheel carries compiled helpers: tag it for this platform


setup(
    cmdclass={"build_py": BuildWithNative, "build_scripts": NativeFrontEnd},
    distclass=NativeDistribution,
    scripts=["native/front/main.c"],  # marks the wheel as having a script: see NativeFrontEnd
)
