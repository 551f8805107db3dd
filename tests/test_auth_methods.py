"""The interceptor's method table: Bots needs `worker`, Operations an authenticated caller,
Capabilities nobody, and a method missing from the table is refused."""

from __future__ import annotations

import base64

import bcrypt
import grpc
import pytest
from authutil import AuthServer
from google.longrunning import operations_pb2, operations_pb2_grpc
from google.protobuf import empty_pb2

from granary._proto.google.devtools.remoteworkers.v1test2 import bots_pb2, bots_pb2_grpc
from granary.auth.identity import current_identity
from granary.auth.settings import AuthSettings, build_auth
from granary.services.registry import add_servicer


class EchoBots(bots_pb2_grpc.BotsServicer):
    """Answers with the session it was sent, named after the caller the interceptor found."""

    async def CreateBotSession(self, request, context):
        return bots_pb2.BotSession(name=f"{request.parent}/botSessions/1", bot_id=current_identity().name)

    async def UpdateBotSession(self, request, context):
        return bots_pb2.BotSession(name=request.name, bot_id=current_identity().name)


class EchoOperations(operations_pb2_grpc.OperationsServicer):
    async def GetOperation(self, request, context):
        return operations_pb2.Operation(name=request.name, metadata=None)

    async def CancelOperation(self, request, context):
        return empty_pb2.Empty()


def _unmapped(server: grpc.aio.Server) -> None:
    async def call(request, context):
        return b"should never run"

    handler = grpc.unary_unary_rpc_method_handler(call)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("granary.test.Unmapped", {"Call": handler}),))


def _register(server: grpc.aio.Server) -> None:
    add_servicer(server, EchoBots(), bots_pb2.DESCRIPTOR.services_by_name["Bots"])
    add_servicer(server, EchoOperations(), operations_pb2.DESCRIPTOR.services_by_name["Operations"])
    _unmapped(server)


def basic(user: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", "Basic " + base64.b64encode(f"{user}:pw-{user}".encode()).decode()),)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("methods")
    lines = [f"{u}:{bcrypt.hashpw(f'pw-{u}'.encode(), bcrypt.gensalt(rounds=4)).decode()}" for u in ("bot", "dev")]
    (tmp / "htpasswd").write_text("\n".join(lines) + "\n")
    settings = AuthSettings.model_validate({
        "htpasswd": "htpasswd",
        "rules": [
            {"instance": "farm/", "identities": ["bot"], "permissions": ["worker"]},
            {"instance": "", "identities": ["dev"], "permissions": ["cache-read", "cache-write", "execute"]},
        ],
    })
    with AuthServer(build_auth(settings, tmp), extra=_register) as srv:
        yield srv


def test_only_worker_identities_open_bot_sessions(server):
    with grpc.insecure_channel(server.address) as channel:
        bots = bots_pb2_grpc.BotsStub(channel)
        made = bots.CreateBotSession(
            bots_pb2.CreateBotSessionRequest(parent="farm/linux", bot_session=bots_pb2.BotSession(bot_id="b")),
            metadata=basic("bot"), timeout=30,
        )
        assert made.bot_id == "bot"
        updated = bots.UpdateBotSession(
            bots_pb2.UpdateBotSessionRequest(name=made.name, bot_session=made), metadata=basic("bot"), timeout=30
        )
        assert updated.name == "farm/linux/botSessions/1"
        for md, code in [(basic("dev"), grpc.StatusCode.PERMISSION_DENIED), ((), grpc.StatusCode.UNAUTHENTICATED)]:
            with pytest.raises(grpc.RpcError) as exc:
                bots.CreateBotSession(bots_pb2.CreateBotSessionRequest(parent="farm/linux"), metadata=md, timeout=30)
            assert exc.value.code() == code
            with pytest.raises(grpc.RpcError) as exc:
                bots.UpdateBotSession(
                    bots_pb2.UpdateBotSessionRequest(name="farm/linux/botSessions/1"), metadata=md, timeout=30
                )
            assert exc.value.code() == code
        # a worker of farm/ is not a worker elsewhere
        with pytest.raises(grpc.RpcError) as exc:
            bots.UpdateBotSession(bots_pb2.UpdateBotSessionRequest(name="botSessions/9"), metadata=basic("bot"),
                                  timeout=30)
        assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "worker" in exc.value.details() and "instance ''" in exc.value.details()
        with pytest.raises(grpc.RpcError) as exc:
            bots.UpdateBotSession(bots_pb2.UpdateBotSessionRequest(name="garbage"), metadata=basic("bot"), timeout=30)
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "garbage" in exc.value.details()


def test_operations_need_an_authenticated_caller(server):
    with grpc.insecure_channel(server.address) as channel:
        ops = operations_pb2_grpc.OperationsStub(channel)
        got = ops.GetOperation(operations_pb2.GetOperationRequest(name="operations/1"), metadata=basic("dev"),
                               timeout=30)
        assert got.name == "operations/1"
        with pytest.raises(grpc.RpcError) as exc:
            ops.CancelOperation(operations_pb2.CancelOperationRequest(name="operations/1"), timeout=30)
        assert exc.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_methods_missing_from_the_table_are_refused(server):
    with grpc.insecure_channel(server.address) as channel:
        call = channel.unary_unary("/granary.test.Unmapped/Call")
        with pytest.raises(grpc.RpcError) as exc:
            call(b"", metadata=basic("dev"), timeout=30)
        assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "/granary.test.Unmapped/Call" in exc.value.details()
        # a method nobody registered stays UNIMPLEMENTED
        with pytest.raises(grpc.RpcError) as exc:
            channel.unary_unary("/granary.test.Nothing/Here")(b"", metadata=basic("dev"), timeout=30)
        assert exc.value.code() == grpc.StatusCode.UNIMPLEMENTED
