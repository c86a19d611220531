"""Generate the Python gRPC stubs from ``protos/`` into ``core/v1/``.

``python tools/generate_protos.py`` rewrites the committed stubs;
``python tools/generate_protos.py --check`` exits 1 and names the stale files when
regenerating would change anything.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
PROTO_PACKAGE = Path("endcap") / "v1"
OUTPUT_DIR = ROOT / "core" / "v1"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")


def generate(into: Path) -> list[Path]:
    """Run protoc (grpcio-tools) with the mypy-protobuf plugins; return the files written."""
    from grpc_tools import protoc  # dev dependency, imported only here

    plugin = Path(sys.executable).parent / "protoc-gen-mypy"
    grpc_plugin = Path(sys.executable).parent / "protoc-gen-mypy_grpc"
    proto_include = Path(protoc.__file__).parent / "_proto"
    sources = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / PROTO_PACKAGE).glob("*.proto"))
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{proto_include}",
        f"--plugin=protoc-gen-mypy={plugin}",
        f"--plugin=protoc-gen-mypy_grpc={grpc_plugin}",
        f"--python_out={into}",
        f"--grpc_python_out={into}",
        f"--mypy_out={into}",
        f"--mypy_grpc_out={into}",
        *sources,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed; see the messages above")
    return sorted((into / PROTO_PACKAGE).glob("*_pb2*"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail when committed stubs are stale")
    options = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        fresh = {p.name: p.read_bytes() for p in generate(Path(tmp))}
    committed = {p.name: p.read_bytes() for p in OUTPUT_DIR.glob("*") if p.name.endswith(GENERATED_SUFFIXES)}
    if options.check:
        stale = sorted(n for n in fresh.keys() | committed.keys() if fresh.get(n) != committed.get(n))
        if stale:
            print(f"stale generated stubs in {OUTPUT_DIR}: {', '.join(stale)}; run 'make protos'")
            return 1
        print("generated stubs are up to date")
        return 0
    OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    for name in committed.keys() - fresh.keys():
        (OUTPUT_DIR / name).unlink()
    for name, content in fresh.items():
        (OUTPUT_DIR / name).write_bytes(content)
    init = OUTPUT_DIR / "__init__.py"
    if not init.exists():
        init.write_text('"""Generated gRPC stubs for endcap.v1 (see protos/; regenerate with make protos)."""\n')
    print(f"wrote {len(fresh)} files to {OUTPUT_DIR}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
