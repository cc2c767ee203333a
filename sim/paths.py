"""Where generated files go: one build folder, never the source tree.

Verilog, Verilator builds, simulation runs and traces land under :func:`build_root`: the folder
named by ``ECHOBOARD_BUILD_DIR`` (the CLI's ``--build-dir`` sets it, so simulators and Ray
workers started from the CLI inherit it), else ``./build`` under the current directory. Not the
package's own folder: an installed wheel's site-packages may be read-only or shared by users,
and a checkout's build/ is then simply the current directory's when run from the repository.
"""
from __future__ import annotations

import os
from pathlib import Path

#: The environment variable that names the build folder.
ENV = "ECHOBOARD_BUILD_DIR"
DEFAULT = "build"


def build_root(*parts: str, relative: bool = False) -> Path:
    """The absolute build folder (or ``parts`` below it), read from the environment at each call;
    ``relative``: as named (``build/...`` by default), for paths printed to a user."""
    root = Path(os.environ.get(ENV) or DEFAULT)
    return (root if relative else root.resolve()).joinpath(*parts)


def set_build_root(path: os.PathLike | str) -> Path:
    """Make ``path`` the build folder of this process and of every process it starts."""
    os.environ[ENV] = str(Path(path).resolve())
    return build_root()
