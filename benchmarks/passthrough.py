"""The floor of any Python gRPC hop: a bare grpc.aio proxy that relays every RPC's bytes.

The `inference` benchmark puts it between the direct client and Triton, so that the same run
shows what one hop through a Python grpc.aio server costs with no work at all (no parsing, no
interceptors, no validation); InferenceService's overhead beyond that is its own code.

    python -m benchmarks.passthrough --target 127.0.0.1:8001

It listens on a free loopback port, prints one JSON line, `{"port": N, "pid": N}`, once it
serves, and stops when its standard input closes (as `benchmarks.serving.server_process`
expects). Any method is relayed as a bidirectional stream of raw messages, which carries unary
and streaming RPCs alike.
"""

import argparse
import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator, Sequence

import grpc
import grpc.aio

from services.common.grpc_types import GenericRpcHandler, MethodHandler, ServicerContext


def _identity(raw: bytes) -> bytes:
    return raw


class _Relay(GenericRpcHandler):
    def __init__(self, upstream: grpc.aio.Channel) -> None:
        self._upstream = upstream

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> MethodHandler:
        forward = self._upstream.stream_stream(
            handler_call_details.method,
            request_serializer=_identity,
            response_deserializer=_identity,
        )

        async def relay(
            requests: AsyncIterator[bytes], context: ServicerContext
        ) -> AsyncIterator[bytes]:
            call = forward(None, timeout=context.time_remaining())

            async def pump() -> None:
                async for request in requests:
                    await call.write(request)
                await call.done_writing()

            sender = asyncio.create_task(pump())
            try:
                async for response in call:
                    yield response
            finally:
                sender.cancel()
                call.cancel()

        return grpc.stream_stream_rpc_method_handler(
            relay, request_deserializer=_identity, response_serializer=_identity
        )


async def serve(target: str) -> None:
    """Relays to `target` until standard input closes."""
    upstream = grpc.aio.insecure_channel(target)
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((_Relay(upstream),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(json.dumps({"port": port, "pid": os.getpid()}), flush=True)
    try:
        await asyncio.to_thread(sys.stdin.buffer.read)
    finally:
        await server.stop(1.0)
        await upstream.close(None)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.passthrough", description="Relay gRPC calls to --target."
    )
    parser.add_argument("--target", required=True, help="host:port to relay to")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.target))
    return 0


if __name__ == "__main__":
    sys.exit(main())
