"""Build hook: generate the gRPC stubs from ../../proto into the build tree.

Everything else is in pyproject.toml. The stubs are generated, never
committed: build_py runs scatterbrain_client._stubs.generate_stubs into
build_lib/scatterbrain_client/_gen (editable installs: into the source
package's _gen/, which git ignores).
"""

import importlib.util
import pathlib

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = pathlib.Path(__file__).resolve().parent


def _load_stubs_module():
    # Load _stubs.py by path: importing the package would need the stubs.
    spec = importlib.util.spec_from_file_location(
        "_sb_stubs", HERE / "scatterbrain_client" / "_stubs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BuildPyWithStubs(build_py):
    def run(self):
        super().run()
        stubs = _load_stubs_module()
        proto_root = HERE.parent.parent / "proto"
        if self.editable_mode:
            out = HERE / "scatterbrain_client" / "_gen"
        else:
            out = pathlib.Path(self.build_lib) / "scatterbrain_client" / "_gen"
        stubs.generate_stubs(out, proto_root)


setup(cmdclass={"build_py": BuildPyWithStubs})
