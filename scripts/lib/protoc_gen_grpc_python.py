#!/usr/bin/env python3
"""protoc plugin that produces the Python gRPC stubs (``*_pb2_grpc.py``).

buf can proxy only protoc's own built-in generators (``python``, ``pyi``, ...) through
``protoc_path``; the ``grpc_python`` generator lives in grpcio-tools' embedded protoc and has no
``protoc-gen-grpc_python`` executable. This plugin bridges the two:

1. read the ``CodeGeneratorRequest`` that buf (or protoc) writes to stdin;
2. serialise the request's descriptors (the files to generate plus all their dependencies,
   already in dependency order) into a ``FileDescriptorSet`` in a temporary directory;
3. run grpcio-tools' embedded protoc with ``--descriptor_set_in`` and ``--grpc_python_out``
   (passing the plugin parameter through), into a temporary output directory;
4. return every generated file in a ``CodeGeneratorResponse`` on stdout.

The output is byte-identical to ``python -m grpc_tools.protoc --grpc_python_out=...``, and the
generator version always matches the installed grpcio-tools (and so the grpcio pin).

Use it from buf.gen.yaml as ``local: [.venv/bin/python, scripts/lib/protoc_gen_grpc_python.py]``.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from google.protobuf import descriptor_pb2
from google.protobuf.compiler import plugin_pb2


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Keep fd 1 clean for the response: anything the embedded protoc prints goes to stderr."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def generate(request: plugin_pb2.CodeGeneratorRequest) -> plugin_pb2.CodeGeneratorResponse:
    """Run grpc_python over the request's files and collect its output."""
    from grpc_tools import protoc  # imported late: a missing grpcio-tools becomes a clean error

    response = plugin_pb2.CodeGeneratorResponse()
    response.supported_features = plugin_pb2.CodeGeneratorResponse.FEATURE_PROTO3_OPTIONAL
    if not request.file_to_generate:
        return response

    with tempfile.TemporaryDirectory(prefix="protoc-gen-grpc-python-") as tmp:
        descriptor_set = Path(tmp, "request.binpb")
        out_dir = Path(tmp, "out")
        out_dir.mkdir()
        file_set = descriptor_pb2.FileDescriptorSet()
        file_set.file.extend(request.proto_file)
        descriptor_set.write_bytes(file_set.SerializeToString())

        out_arg = f"{request.parameter}:{out_dir}" if request.parameter else str(out_dir)
        argv = [
            "grpc_tools.protoc",
            f"--descriptor_set_in={descriptor_set}",
            f"--grpc_python_out={out_arg}",
            *request.file_to_generate,
        ]
        with _stdout_to_stderr():
            rc = protoc.main(argv)
        if rc != 0:
            response.error = f"grpc_tools.protoc --grpc_python_out failed with exit code {rc}"
            return response

        for path in sorted(p for p in out_dir.rglob("*") if p.is_file()):
            response.file.add(
                name=path.relative_to(out_dir).as_posix(),
                content=path.read_text(encoding="utf-8"),
            )
    return response


def main() -> int:
    request = plugin_pb2.CodeGeneratorRequest.FromString(sys.stdin.buffer.read())
    try:
        response = generate(request)
    except Exception as exc:  # report through the protocol, not a traceback buf may hide
        response = plugin_pb2.CodeGeneratorResponse(
            error=f"protoc_gen_grpc_python: {type(exc).__name__}: {exc}",
            supported_features=plugin_pb2.CodeGeneratorResponse.FEATURE_PROTO3_OPTIONAL,
        )
    sys.stdout.buffer.write(response.SerializeToString())
    sys.stdout.buffer.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
