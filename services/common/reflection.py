"""Server reflection (`grpc.reflection.v1alpha`) that serves the contract with its comments.

grpcio-reflection answers from descriptors that have lost their source info, so
`grpcurl describe` would show no documentation. This servicer answers with the
FileDescriptorProtos of the descriptor set that `scripts/gen` writes, comments included, and
uses a descriptor pool built from the same set only to find which file defines a symbol.
"""

from collections.abc import AsyncIterable, AsyncIterator, Iterable, Sequence
from typing import Any

import grpc
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import FileDescriptor
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from services.common.contract import documented_pool, documented_set

SERVICE_NAME = "grpc.reflection.v1alpha.ServerReflection"


# grpcio-reflection ships no type information, hence the ignore.
class DocumentedReflection(reflection_pb2_grpc.ServerReflectionServicer):  # type: ignore[misc]
    """Answers reflection requests for `service_names` from the documented contract.

    `extra_files` (e.g. `health_pb2.DESCRIPTOR`) are served too, without comments.
    """

    def __init__(
        self, service_names: Sequence[str], extra_files: Iterable[FileDescriptor] = ()
    ) -> None:
        extra = tuple(extra_files)
        self._services = tuple(sorted(service_names))
        self._pool = documented_pool(extra)
        self._files: dict[str, descriptor_pb2.FileDescriptorProto] = {
            file.name: file for file in documented_set().file
        }
        for file in extra:
            self._add_copy(file)

    def _add_copy(self, file: FileDescriptor) -> None:
        if file.name in self._files:
            return
        for dependency in file.dependencies:
            self._add_copy(dependency)
        proto = descriptor_pb2.FileDescriptorProto()
        file.CopyToProto(proto)
        self._files[file.name] = proto

    async def ServerReflectionInfo(
        self,
        request_iterator: AsyncIterable[reflection_pb2.ServerReflectionRequest],
        context: Any,
    ) -> AsyncIterator[reflection_pb2.ServerReflectionResponse]:
        """Answers each request of the stream in order."""
        async for request in request_iterator:
            response = self._answer(request)
            response.valid_host = request.host
            response.original_request.CopyFrom(request)
            yield response

    def _answer(
        self, request: reflection_pb2.ServerReflectionRequest
    ) -> reflection_pb2.ServerReflectionResponse:
        kind = request.WhichOneof("message_request")
        try:
            if kind == "list_services":
                return reflection_pb2.ServerReflectionResponse(
                    list_services_response=reflection_pb2.ListServiceResponse(
                        service=[reflection_pb2.ServiceResponse(name=n) for n in self._services]
                    )
                )
            if kind == "file_by_filename":
                return self._files_response(request.file_by_filename)
            if kind == "file_containing_symbol":
                file = self._pool.FindFileContainingSymbol(request.file_containing_symbol)
                return self._files_response(file.name)
            if kind == "file_containing_extension":
                wanted = request.file_containing_extension
                message = self._pool.FindMessageTypeByName(wanted.containing_type)
                extension = self._pool.FindExtensionByNumber(message, wanted.extension_number)
                return self._files_response(extension.file.name)
            if kind == "all_extension_numbers_of_type":
                message = self._pool.FindMessageTypeByName(request.all_extension_numbers_of_type)
                numbers = sorted(e.number for e in self._pool.FindAllExtensions(message))
                return reflection_pb2.ServerReflectionResponse(
                    all_extension_numbers_response=reflection_pb2.ExtensionNumberResponse(
                        base_type_name=message.full_name, extension_number=numbers
                    )
                )
        except KeyError:
            return _error(grpc.StatusCode.NOT_FOUND, "not found")
        return _error(grpc.StatusCode.INVALID_ARGUMENT, f"unsupported request: {kind}")

    def _files_response(self, name: str) -> reflection_pb2.ServerReflectionResponse:
        """The file and everything it imports, transitively, file first."""
        ordered: list[str] = []
        self._collect(name, ordered)
        return reflection_pb2.ServerReflectionResponse(
            file_descriptor_response=reflection_pb2.FileDescriptorResponse(
                file_descriptor_proto=[self._files[n].SerializeToString() for n in ordered]
            )
        )

    def _collect(self, name: str, ordered: list[str]) -> None:
        if name in ordered:
            return
        file = self._files[name]  # KeyError -> NOT_FOUND
        ordered.append(name)
        for dependency in file.dependency:
            self._collect(dependency, ordered)


def _error(code: grpc.StatusCode, message: str) -> reflection_pb2.ServerReflectionResponse:
    number = code.value[0]
    return reflection_pb2.ServerReflectionResponse(
        error_response=reflection_pb2.ErrorResponse(error_code=number, error_message=message)
    )


def enable_documented_reflection(server: grpc.aio.Server, service_names: Sequence[str]) -> None:
    """Adds `DocumentedReflection` for `service_names` (a `start_server` reflection hook).

    Besides the contract it serves the health and reflection protos, and the `google.rpc`
    error details, so that grpcurl can decode the `ErrorInfo`/`BadRequest` of a failed call.
    """
    servicer = DocumentedReflection(
        service_names,
        extra_files=[
            health_pb2.DESCRIPTOR,
            reflection_pb2.DESCRIPTOR,
            error_details_pb2.DESCRIPTOR,
            status_pb2.DESCRIPTOR,
        ],
    )
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
