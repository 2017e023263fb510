"""The platform's protobuf contract as loaded at run time: its files, services and digest."""

import hashlib
import importlib
from collections.abc import Iterable
from functools import cache
from importlib import resources
from pathlib import Path

import genai
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import FileDescriptor, ServiceDescriptor

DESCRIPTOR_SET = "descriptor_set.binpb"
"""The contract as a FileDescriptorSet with source info, beside the generated modules
(written by `scripts/gen`)."""


@cache
def contract_files() -> tuple[FileDescriptor, ...]:
    """Every `genai/**/*.proto` file of the generated Python code, sorted by file name."""
    files: dict[str, FileDescriptor] = {}
    for root in map(Path, genai.__path__):
        for module_path in sorted(root.rglob("*_pb2.py")):
            relative = module_path.relative_to(root.parent).with_suffix("")
            module = importlib.import_module(".".join(relative.parts))
            descriptor: FileDescriptor = module.DESCRIPTOR
            files[descriptor.name] = descriptor
    return tuple(files[name] for name in sorted(files))


def contract_services() -> tuple[ServiceDescriptor, ...]:
    """Every service of the contract, sorted by full name."""
    services = [s for f in contract_files() for s in f.services_by_name.values()]
    return tuple(sorted(services, key=lambda s: s.full_name))


@cache
def contract_digest() -> str:
    """Hex SHA-256 over the serialized descriptors of every contract file, in name order.

    Two builds whose stubs came from the same protos have the same digest.
    """
    digest = hashlib.sha256()
    for descriptor in contract_files():
        digest.update(descriptor.name.encode())
        digest.update(b"\0")
        digest.update(descriptor.serialized_pb)
    return digest.hexdigest()


@cache
def documented_set() -> descriptor_pb2.FileDescriptorSet:
    """The contract's files with their source info (comments), dependencies first."""
    return descriptor_pb2.FileDescriptorSet.FromString(
        resources.files(genai).joinpath(DESCRIPTOR_SET).read_bytes()
    )


def documented_pool(extra_files: Iterable[FileDescriptor] = ()) -> descriptor_pool.DescriptorPool:
    """A descriptor pool of the contract *with its comments*, for server reflection.

    Generated `_pb2` modules carry no source info, so reflection over the default pool would
    show `grpcurl describe` users no documentation. This pool holds the descriptor set that
    `scripts/gen` writes (comments included) plus `extra_files` (e.g. the health and
    reflection protos, `health_pb2.DESCRIPTOR`) with their dependencies.
    """
    pool = descriptor_pool.DescriptorPool()
    added: set[str] = set()
    for proto in documented_set().file:  # buf writes dependencies before their dependents
        pool.Add(proto)
        added.add(proto.name)
    for file in extra_files:
        _add_with_dependencies(pool, file, added)
    return pool


def _add_with_dependencies(
    pool: descriptor_pool.DescriptorPool, file: FileDescriptor, added: set[str]
) -> None:
    if file.name in added:
        return
    for dependency in file.dependencies:
        _add_with_dependencies(pool, dependency, added)
    proto = descriptor_pb2.FileDescriptorProto()
    file.CopyToProto(proto)
    pool.Add(proto)
    added.add(file.name)
