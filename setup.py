"""The one thing pyproject.toml cannot say: ``modelserve-mlserver.pth`` goes to the top of site-packages.

Python runs a .pth file's ``import`` line at every interpreter start, so that in ``mlserver start`` and in each
worker process MLServer spawns, ``modelserve.mlserver_early`` arms the MLServer 1.7.1 patches that must be in place before
MLServer builds its app and its worker pool, long before any model (and so any modelserve code) is imported.
See ``modelserve.mlserver_compat`` for what they are.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

PTH = "modelserve-mlserver.pth"


class BuildPy(build_py):
    def run(self):
        super().run()
        self.copy_file(str(Path("runtimes") / PTH), str(Path(self.build_lib) / PTH))

    def get_outputs(self, include_bytecode=1):
        return [*super().get_outputs(include_bytecode), str(Path(self.build_lib) / PTH)]


setup(cmdclass={"build_py": BuildPy})
