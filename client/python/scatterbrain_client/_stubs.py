"""Python stubs of scatterbrain/v1/attention.proto, generated, never committed.

`pip install client/python` generates them at build time (setup.py runs
generate_stubs into the build tree). Run from a source checkout instead
(PYTHONPATH=client/python), the package generates them on first import into
scatterbrain_client/_gen/ (ignored by git), which needs grpcio-tools.

The generated modules live inside this package (not as a top-level
`scatterbrain` package), so the one import line protoc writes between them
is rewritten to a relative import.
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import tempfile

PROTO_FILE = "scatterbrain/v1/attention.proto"
GEN_DIR = pathlib.Path(__file__).resolve().parent / "_gen"


def find_proto_root() -> pathlib.Path:
    """The directory holding scatterbrain/v1/attention.proto.

    SB_PROTO_DIR if set, else the repository's proto/ above this package
    (client/python/scatterbrain_client -> ../../../proto).
    """
    candidates = []
    if os.environ.get("SB_PROTO_DIR"):
        candidates.append(pathlib.Path(os.environ["SB_PROTO_DIR"]))
    here = pathlib.Path(__file__).resolve().parent
    candidates.append(here.parent.parent.parent / "proto")
    for c in candidates:
        if (c / PROTO_FILE).is_file():
            return c
    raise FileNotFoundError(
        f"cannot find {PROTO_FILE} (looked in {', '.join(map(str, candidates))}); "
        "set SB_PROTO_DIR or install the package with pip")


def generate_stubs(out_dir: os.PathLike | str = GEN_DIR,
                   proto_root: os.PathLike | str | None = None) -> pathlib.Path:
    """Runs grpc_tools.protoc on attention.proto into `out_dir`.

    Writes attention_pb2.py, attention_pb2_grpc.py and __init__.py. The files
    are produced in a temporary directory and moved into place, so a
    concurrent import never sees half-written modules.
    """
    from grpc_tools import protoc  # build-time dependency only

    out_dir = pathlib.Path(out_dir)
    root = pathlib.Path(proto_root) if proto_root else find_proto_root()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir.parent) as tmp:
        tmp_path = pathlib.Path(tmp)
        args = [
            "grpc_tools.protoc",
            f"-I{root}",
            f"--python_out={tmp_path}",
            f"--grpc_python_out={tmp_path}",
            str(root / PROTO_FILE),
        ]
        if protoc.main(args) != 0:
            raise RuntimeError(f"grpc_tools.protoc failed on {root / PROTO_FILE}")
        staged = tmp_path / "staged"
        staged.mkdir()
        gen = tmp_path / "scatterbrain" / "v1"
        shutil.copy(gen / "attention_pb2.py", staged / "attention_pb2.py")
        grpc_src = (gen / "attention_pb2_grpc.py").read_text()
        grpc_src, n = re.subn(r"^from scatterbrain\.v1 import attention_pb2 as",
                              "from . import attention_pb2 as", grpc_src,
                              flags=re.M)
        if n != 1:
            raise RuntimeError("unexpected import layout in attention_pb2_grpc.py")
        (staged / "attention_pb2_grpc.py").write_text(grpc_src)
        (staged / "__init__.py").write_text(
            "# Generated from proto/scatterbrain/v1/attention.proto; do not edit.\n")
        if out_dir.exists():
            shutil.rmtree(out_dir, ignore_errors=True)
        try:
            os.replace(staged, out_dir)
        except OSError:
            # Another process put its (identical) copy there first.
            if not (out_dir / "attention_pb2_grpc.py").is_file():
                raise
    return out_dir


def _stale() -> bool:
    """True when the in-tree stubs are missing or older than the proto (a
    checkout whose proto changed since they were generated)."""
    gen = GEN_DIR / "attention_pb2.py"
    if not gen.is_file() or not (GEN_DIR / "attention_pb2_grpc.py").is_file():
        return True
    try:
        proto = find_proto_root() / PROTO_FILE
    except FileNotFoundError:
        return False  # an installed package: its stubs came with it
    return proto.stat().st_mtime > gen.stat().st_mtime


def load():
    """Returns (attention_pb2, attention_pb2_grpc), generating them if missing
    or older than the proto."""
    if _stale():
        generate_stubs(GEN_DIR)
    from ._gen import attention_pb2, attention_pb2_grpc
    return attention_pb2, attention_pb2_grpc
