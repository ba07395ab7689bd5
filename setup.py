"""Build hooks only; all metadata lives in pyproject.toml.

* pip builds in the source tree, and setuptools reuses ``build/lib``: a file deleted or
  renamed in the tree would still end up in the next wheel. Every build_py starts from
  an empty build directory, so a wheel contains exactly the working tree.
* The collection package ``ansible_collections.pylabhub.recovery`` is the repository
  root: its files are shipped as package data (pyproject globs), never as the root's
  own ``*.py`` modules (this file).
"""

from __future__ import annotations

import shutil

from setuptools import setup
from setuptools.command.build_py import build_py


COLLECTION_PACKAGE = "ansible_collections.pylabhub.recovery"


class CleanBuildPy(build_py):
    """build_py: empty build/lib first; no top-level modules for the collection root."""

    def find_package_modules(self, package, package_dir):
        if package == COLLECTION_PACKAGE:
            return []
        return super().find_package_modules(package, package_dir)

    def run(self):
        shutil.rmtree(self.build_lib, ignore_errors=True)
        super().run()


setup(cmdclass={"build_py": CleanBuildPy})
