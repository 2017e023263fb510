"""Parameterized grpc types for annotations and base classes.

grpc-stubs declares these classes generic, but at run time they are not subscriptable, so the
subscripted forms exist only for the type checker.
"""

from typing import TYPE_CHECKING, Any, TypeAlias

import grpc
import grpc.aio

if TYPE_CHECKING:
    ServerInterceptor: TypeAlias = grpc.aio.ServerInterceptor[Any, Any]
    MethodHandler: TypeAlias = grpc.RpcMethodHandler[Any, Any]
    GenericRpcHandler: TypeAlias = grpc.GenericRpcHandler[Any, Any]
    StreamUnaryMultiCallable: TypeAlias = grpc.aio.StreamUnaryMultiCallable[Any, Any]
    StreamStreamMultiCallable: TypeAlias = grpc.aio.StreamStreamMultiCallable[Any, Any]
    UnaryUnaryClientInterceptor: TypeAlias = grpc.aio.UnaryUnaryClientInterceptor[Any, Any]
    StreamUnaryClientInterceptor: TypeAlias = grpc.aio.StreamUnaryClientInterceptor[Any, Any]
    UnaryStreamClientInterceptor: TypeAlias = grpc.aio.UnaryStreamClientInterceptor[Any, Any]
    StreamStreamClientInterceptor: TypeAlias = grpc.aio.StreamStreamClientInterceptor[Any, Any]
else:
    ServerInterceptor = grpc.aio.ServerInterceptor
    MethodHandler = grpc.RpcMethodHandler
    GenericRpcHandler = grpc.GenericRpcHandler
    StreamUnaryMultiCallable = grpc.aio.StreamUnaryMultiCallable
    StreamStreamMultiCallable = grpc.aio.StreamStreamMultiCallable
    UnaryUnaryClientInterceptor = grpc.aio.UnaryUnaryClientInterceptor
    StreamUnaryClientInterceptor = grpc.aio.StreamUnaryClientInterceptor
    UnaryStreamClientInterceptor = grpc.aio.UnaryStreamClientInterceptor
    StreamStreamClientInterceptor = grpc.aio.StreamStreamClientInterceptor

ServicerContext: TypeAlias = grpc.aio.ServicerContext[Any, Any]
UnaryUnaryMultiCallable: TypeAlias = grpc.aio.UnaryUnaryMultiCallable[Any, Any]
UnaryStreamMultiCallable: TypeAlias = grpc.aio.UnaryStreamMultiCallable[Any, Any]
