"""Regenerate the Python code for every `.proto` under `proto/`, or check it is up to date.

    python -m proto.generate            # rewrite the committed *_pb2*.py and .pyi files
    python -m proto.generate --check    # exit 1 naming every stale or missing file

Protos import each other as `proto/...` from the repository root, so the generated code imports
`from proto.x import y_pb2` and works without touching `sys.path`.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import sys
import tempfile
from pathlib import Path

__all__ = ["GENERATED_SUFFIXES", "ProtocError", "generate", "main", "proto_sources", "stale_files"]

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = REPO_ROOT / "proto"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")


class ProtocError(RuntimeError):
    pass


def proto_sources() -> list[Path]:
    return sorted(PROTO_DIR.rglob("*.proto"))


def _declares_service(source: Path) -> bool:
    return any(line.strip().startswith("service ") for line in source.read_text().splitlines())


def _plugin(name: str) -> str:
    """A protoc plugin from this virtualenv first, then from PATH."""
    here = Path(sys.executable).parent / name
    if here.exists():
        return str(here)
    found = shutil.which(name)
    if found is None:
        raise ProtocError(f"{name} not found; install the dev dependencies (make setup)")
    return found


def generate(out_dir: Path) -> list[Path]:
    """Run protoc on every source into `out_dir`, laid out like the repository; returns the files written."""
    import grpc_tools
    from grpc_tools import protoc  # a dev dependency: only needed to regenerate

    include = Path(grpc_tools.__file__).parent / "_proto"
    sources = [str(p.relative_to(REPO_ROOT)) for p in proto_sources()]
    args = [
        "grpc_tools.protoc",
        f"-I{REPO_ROOT}",
        f"-I{include}",
        f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
        f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        *sources,
    ]
    cwd = os.getcwd()
    try:
        os.chdir(REPO_ROOT)  # protoc resolves the relative source names against the cwd
        code = protoc.main(args)
    finally:
        os.chdir(cwd)
    if code != 0:
        raise ProtocError(f"protoc failed with exit code {code}")
    for source in proto_sources():
        if not _declares_service(source):  # grpc stubs for a messages-only file are empty noise
            stem = out_dir / source.relative_to(REPO_ROOT).with_suffix("")
            for suffix in ("_pb2_grpc.py", "_pb2_grpc.pyi"):
                Path(f"{stem}{suffix}").unlink(missing_ok=True)
    return sorted(p for p in (out_dir / "proto").rglob("*") if p.name.endswith(GENERATED_SUFFIXES))


def stale_files() -> list[str]:
    """Generated files that differ from what the committed `.proto` sources produce (or are missing/extra)."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = {p.relative_to(tmp) for p in generate(Path(tmp))}
        committed = {
            p.relative_to(REPO_ROOT) for p in PROTO_DIR.rglob("*") if p.name.endswith(GENERATED_SUFFIXES)
        }
        problems = [f"missing: {p}" for p in sorted(fresh - committed)]
        problems += [f"not generated from any .proto: {p}" for p in sorted(committed - fresh)]
        problems += [
            f"stale: {p}"
            for p in sorted(fresh & committed)
            if not filecmp.cmp(Path(tmp) / p, REPO_ROOT / p, shallow=False)
        ]
        return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m proto.generate", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail when the committed code is stale")
    opts = parser.parse_args(argv)
    if opts.check:
        problems = stale_files()
        for line in problems:
            print(line, file=sys.stderr)
        if problems:
            print("run `make proto` and commit the result", file=sys.stderr)
            return 1
        print("generated code is up to date")
        return 0
    for path in generate(REPO_ROOT):
        print(path.relative_to(REPO_ROOT))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
