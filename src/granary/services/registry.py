"""Register servicers on a grpc.aio server with our own (de)serializers.

A request that is not a valid protobuf must get INVALID_ARGUMENT naming the
problem, not gRPC's generic UNKNOWN: requests are parsed here into either the
message or a `Malformed` marker that `@rpc` turns into INVALID_ARGUMENT.
"""

from __future__ import annotations

import grpc
from google.protobuf import message_factory
from google.protobuf.message import DecodeError


class Malformed:
    __slots__ = ("error", "type_name")

    def __init__(self, type_name: str, error: str):
        self.type_name = type_name
        self.error = error

    def describe(self) -> str:
        return f"request is not a valid {self.type_name}: {self.error}"


def _parser(message_class):
    name = message_class.DESCRIPTOR.full_name

    def parse(data: bytes):
        msg = message_class()
        try:
            msg.ParseFromString(data)
        except DecodeError as e:
            return Malformed(name, str(e))
        return msg

    return parse


def _serialize(msg) -> bytes:
    return msg.SerializeToString()


def add_servicer(server: grpc.aio.Server, servicer, service_descriptor) -> None:
    handlers = {}
    for method in service_descriptor.methods:
        fn = getattr(servicer, method.name)
        parse = _parser(message_factory.GetMessageClass(method.input_type))
        if method.client_streaming and method.server_streaming:
            make = grpc.stream_stream_rpc_method_handler
        elif method.client_streaming:
            make = grpc.stream_unary_rpc_method_handler
        elif method.server_streaming:
            make = grpc.unary_stream_rpc_method_handler
        else:
            make = grpc.unary_unary_rpc_method_handler
        handlers[method.name] = make(fn, request_deserializer=parse, response_serializer=_serialize)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service_descriptor.full_name, handlers),))
