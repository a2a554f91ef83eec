"""Shared set-up for the Python proof scripts: dependency check and stub generation.

The stubs are generated at test time from wire/proto (nothing generated is committed).
The protos live under `grpc/...`, which would shadow grpcio's own `grpc` package in
Python, so they are copied flat into a temp dir with their imports rewritten.
"""

import importlib
import os
import re
import shutil
import atexit
import subprocess
import sys
import tempfile

INSTALL_HINT = "pip install -r wire/tests/interop/requirements.txt"
REQUIRED_MODULES = ["grpc", "grpc_tools", "grpc_health.v1", "grpc_reflection.v1alpha",
                    "google.protobuf", "h2", "hyperframe", "hpack"]


def require_modules():
    """Exit 3 naming the install command when a client library is missing."""
    missing = []
    for name in REQUIRED_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        print(f"MISSING python modules {missing}: run `{INSTALL_HINT}`", file=sys.stderr)
        sys.exit(3)


# (source path under wire/proto, flat file name)
PROTOS = [
    ("grpc/testing/empty.proto", "empty.proto"),
    ("grpc/testing/messages.proto", "messages.proto"),
    ("grpc/testing/test.proto", "test.proto"),
    ("grpc/reflection/v1/reflection.proto", "reflection_v1.proto"),
]


def generate_stubs(proto_root):
    """Generates flat Python stubs into a temp dir, puts it on sys.path, returns the dir."""
    out = tempfile.mkdtemp(prefix="shardlog-interop-py-")
    atexit.register(shutil.rmtree, out, ignore_errors=True)
    renames = {src: flat for src, flat in PROTOS}
    for src, flat in PROTOS:
        with open(os.path.join(proto_root, src), encoding="utf-8") as f:
            text = f.read()
        text = re.sub(r'import "([^"]+)";',
                      lambda m: f'import "{renames.get(m.group(1), m.group(1))}";', text)
        with open(os.path.join(out, flat), "w", encoding="utf-8") as f:
            f.write(text)
    cmd = [sys.executable, "-m", "grpc_tools.protoc", f"-I{out}", f"--python_out={out}",
           f"--grpc_python_out={out}"] + [flat for _, flat in PROTOS]
    subprocess.run(cmd, check=True, cwd=out)
    sys.path.insert(0, out)
    return out


def default_proto_root():
    """wire/proto, relative to this file (wire/tests/interop/common.py)."""
    here = os.path.dirname(os.path.abspath(__file__))
    return os.path.normpath(os.path.join(here, "..", "..", "proto"))
