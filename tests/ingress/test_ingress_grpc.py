"""gRPC through the ingress: grpcio's client and server on either side, HTTP/2 both ways.

The route is a Forward with ``upstream_h2`` (what ``backend-protocol: GRPC``
or an ``appProtocol: grpc`` Service port gives), so the proxy speaks HTTP/2
to the grpcio server, multiplexing calls on one connection. Methods are
generic (bytes in, bytes out), so no generated code is needed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from h2_peer import H2Peer, h2_backend
from ingress_fakes import FakeRoutes, forward
from netplane.ingress.accesslog import AccessLog
from netplane.ingress.routes import ProxyOptions, Respond
from netplane.ingress.server import IngressServer

MB4 = 4 * 1024 * 1024
BIG = [("grpc.max_receive_message_length", 8 * MB4), ("grpc.max_send_message_length", 8 * MB4)]


class Service:
    """svc.Echo: a unary echo, streams both ways, a slow call, and what it saw cancelled."""

    def __init__(self) -> None:
        self.cancelled = asyncio.Event()
        self.metadata: dict[str, str] = {}

    async def unary(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        self.metadata = dict(context.invocation_metadata())
        return b"echo:" + request

    async def server_stream(
        self, request: bytes, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        for i in range(int(request)):
            yield b"%d" % i

    async def client_stream(self, requests: AsyncIterator[bytes], context: Any) -> bytes:
        total = 0
        async for r in requests:
            total += int(r)
        return b"%d" % total

    async def bidi(self, requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
        async for r in requests:
            yield r.upper()

    async def slow(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return b"late"

    async def fail(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
        return b""

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            "svc.Echo",
            {
                "Unary": grpc.unary_unary_rpc_method_handler(self.unary),
                "ServerStream": grpc.unary_stream_rpc_method_handler(self.server_stream),
                "ClientStream": grpc.stream_unary_rpc_method_handler(self.client_stream),
                "Bidi": grpc.stream_stream_rpc_method_handler(self.bidi),
                "Slow": grpc.unary_unary_rpc_method_handler(self.slow),
                "Fail": grpc.unary_unary_rpc_method_handler(self.fail),
            },
        )


@pytest.fixture
async def grpc_world(tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    service = Service()
    server = grpc.aio.server(options=BIG)
    server.add_generic_rpc_handlers((service.handler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    log = tmp_path / "access.log"
    proxy = IngressServer(_GrpcRoutes(port), access_log=AccessLog(str(log)))
    _, pport = await proxy.listen("127.0.0.1", 0)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{pport}", options=BIG)
    yield {"channel": channel, "service": service, "proxy": proxy, "port": pport, "log": log}
    await channel.close()
    await proxy.close(1)
    await server.stop(0)


class _GrpcRoutes(FakeRoutes):
    """Every path to the grpcio server over HTTP/2, keeping the request's path."""

    def __init__(self, port: int) -> None:
        super().__init__({}, ProxyOptions(body_limit=None))
        self.port = port

    def route(self, host: str, path: str, **kw: Any) -> Any:
        return forward([("127.0.0.1", self.port)], path, self.options, upstream_h2=True)


async def test_unary_calls_pass_with_a_4mb_message_and_share_one_connection(grpc_world):
    ch = grpc_world["channel"]
    unary = ch.unary_unary("/svc.Echo/Unary")
    assert await unary(b"hi", metadata=(("x-who", "test"),)) == b"echo:hi"
    assert grpc_world["service"].metadata["x-who"] == "test"
    assert grpc_world["service"].metadata["x-forwarded-for"] == "127.0.0.1"
    big = bytes(range(256)) * (MB4 // 256)
    assert await unary(big, timeout=20) == b"echo:" + big
    calls = await asyncio.gather(*(unary(b"%d" % i) for i in range(50)))
    assert calls == [b"echo:%d" % i for i in range(50)]
    assert grpc_world["proxy"].h2pool.opened == 1  # every call multiplexed on one connection


async def test_streaming_calls_pass_both_ways(grpc_world):
    ch = grpc_world["channel"]
    got = [r async for r in ch.unary_stream("/svc.Echo/ServerStream")(b"20")]
    assert got == [b"%d" % i for i in range(20)]

    async def numbers() -> AsyncIterator[bytes]:
        for i in range(1, 11):
            yield b"%d" % i

    assert await ch.stream_unary("/svc.Echo/ClientStream")(numbers()) == b"55"
    call = ch.stream_stream("/svc.Echo/Bidi")()
    for word in (b"a", b"bc", b"def"):
        await call.write(word)
        assert await call.read() == word.upper()
    await call.done_writing()
    assert await call.read() == grpc.aio.EOF


async def test_the_endpoints_status_and_message_reach_the_client_as_trailers(grpc_world):
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await grpc_world["channel"].unary_unary("/svc.Echo/Fail")(b"x")
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert info.value.details() == "no such thing"
    # the access log and /metrics carry the protocol and the call's status
    assert await grpc_world["channel"].unary_unary("/svc.Echo/Unary")(b"ok") == b"echo:ok"
    proxy = grpc_world["proxy"]
    proxy.access_log.flush()
    lines = grpc_world["log"].read_text().splitlines()
    fail = next(ln for ln in lines if "/svc.Echo/Fail" in ln)
    assert '"POST /svc.Echo/Fail HTTP/2.0" 200' in fail and fail.endswith(" grpc=5")
    assert next(ln for ln in lines if "/svc.Echo/Unary" in ln).endswith(" grpc=0")
    codes = {code: n for (_, _, code), n in proxy.stats.grpc.items()}
    assert codes == {5: 1, 0: 1}


async def test_a_client_cancel_reaches_the_endpoint(grpc_world):
    call = grpc_world["channel"].unary_unary("/svc.Echo/Slow")(b"x")
    await asyncio.sleep(0.3)
    call.cancel()
    async with asyncio.timeout(5):
        await grpc_world["service"].cancelled.wait()


async def test_a_deadline_expires_at_the_proxy_with_deadline_exceeded(grpc_world):
    # A raw HTTP/2 client, so that the deadline is enforced by the proxy and not the client.
    peer = await H2Peer().connect(grpc_world["port"])
    try:
        headers = [("content-type", "application/grpc"), ("te", "trailers"),
                   ("grpc-timeout", "500m")]  # fmt: skip
        resp = await peer.get(
            "/svc.Echo/Slow", method="POST", headers=headers, body=b"\0\0\0\0\1x", timeout=5
        )
        status = resp.header(b"grpc-status") or dict(resp.trailers).get(b"grpc-status")
        assert status == b"4"  # DEADLINE_EXCEEDED
        async with asyncio.timeout(5):
            await grpc_world["service"].cancelled.wait()  # and the endpoint's call was cancelled
    finally:
        await peer.close()


async def test_an_endpoint_reset_reaches_the_client_as_a_reset_or_as_unavailable():
    def answer(conn: Any, sid: int, headers: Any, writer: Any) -> None:
        path = dict(headers)[b":path"]
        if path == b"/svc.Reset/Before":
            conn.reset_stream(sid, 2)  # INTERNAL_ERROR before any response
            return
        conn.send_headers(sid, [(":status", "200"), ("content-type", "application/grpc")])
        conn.send_data(sid, b"\0\0\0\0\2hi")
        conn.reset_stream(sid, 2)  # ... and in the middle of one

    server, port = await h2_backend(answer)
    proxy = IngressServer(_GrpcRoutes(port))
    _, pport = await proxy.listen("127.0.0.1", 0)
    peer = await H2Peer().connect(pport)
    try:
        grpc_headers = [("content-type", "application/grpc"), ("te", "trailers")]
        before = await peer.get("/svc.Reset/Before", method="POST", headers=grpc_headers,
                                body=b"\0\0\0\0\0")  # fmt: skip
        assert before.status == 200 and before.header(b"grpc-status") == b"14"  # UNAVAILABLE
        during = await peer.get("/svc.Reset/During", method="POST", headers=grpc_headers,
                                body=b"\0\0\0\0\0")  # fmt: skip
        assert during.status == 200 and bytes(during.body) == b"\0\0\0\0\2hi"
        assert during.reset is not None  # the client sees the stream reset, not a clean end
    finally:
        await peer.close()
        await proxy.close(1)
        server.close()


async def test_a_second_connection_opens_when_the_endpoints_stream_limit_is_reached():
    pending: list[tuple[Any, int, Any]] = []

    def hold(conn: Any, sid: int, headers: Any, writer: Any) -> None:
        pending.append((conn, sid, writer))  # answered later, all at once

    server, port = await h2_backend(hold, max_streams=2)
    proxy = IngressServer(_GrpcRoutes(port))
    _, pport = await proxy.listen("127.0.0.1", 0)
    peer = await H2Peer().connect(pport)
    try:
        sids = [peer.request(f"/svc.Echo/Held{i}", method="POST", body=b"\0\0\0\0\0",
                             headers=[("content-type", "application/grpc")]) for i in range(5)]  # fmt: skip
        async with asyncio.timeout(5):
            while len(pending) < 5:
                await asyncio.sleep(0.02)
        assert server.counter["connections"] == 3  # 2 + 2 + 1 streams
        for conn, sid, writer in pending:
            conn.send_headers(sid, [(":status", "200"), ("grpc-status", "0")], end_stream=True)
            writer.write(conn.data_to_send())
        for sid in sids:
            assert (await peer.response(sid)).header(b"grpc-status") == b"0"
    finally:
        await peer.close()
        await proxy.close(1)
        server.close()


class _ErrorRoutes:
    """svc.Echo to the grpcio server (small body limit, short read timeout); other services fail."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.options = ProxyOptions(body_limit=10, read_timeout=0.5)

    def route(self, host: str, path: str, **kw: Any) -> Any:
        if path.startswith("/svc.Echo/"):
            return forward([("127.0.0.1", self.port)], path, self.options, upstream_h2=True)
        if path.startswith("/svc.None/"):
            return forward([], path, self.options, upstream_h2=True)
        if path.startswith("/svc.Dead/"):
            return forward([("127.0.0.1", 9)], path, self.options, upstream_h2=True)
        return Respond(404, b"no route\n")


async def test_grpcio_sees_the_proxys_own_errors_as_grpc_statuses():
    service = Service()
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((service.handler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    proxy = IngressServer(_ErrorRoutes(port))
    _, pport = await proxy.listen("127.0.0.1", 0)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{pport}")

    async def code(method: str, message: bytes = b"x") -> grpc.StatusCode:
        try:
            await channel.unary_unary(method)(message, timeout=10)
        except grpc.aio.AioRpcError as e:
            return e.code()
        return grpc.StatusCode.OK

    try:
        assert await code("/svc.Echo/Unary") == grpc.StatusCode.OK
        assert await code("/nope.Svc/Call") == grpc.StatusCode.UNIMPLEMENTED
        assert await code("/svc.None/Call") == grpc.StatusCode.UNAVAILABLE
        assert await code("/svc.Dead/Call") == grpc.StatusCode.UNAVAILABLE
        assert await code("/svc.Echo/Slow") == grpc.StatusCode.DEADLINE_EXCEEDED
        assert await code("/svc.Echo/Unary", b"x" * 64) == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        await channel.close()
        await proxy.close(1)
        await server.stop(0)
