from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FailureDetail(_message.Message):
    __slots__ = ("message", "spawn")
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    SPAWN_FIELD_NUMBER: _ClassVar[int]
    message: str
    spawn: Spawn
    def __init__(self, message: _Optional[str] = ..., spawn: _Optional[_Union[Spawn, _Mapping]] = ...) -> None: ...

class Spawn(_message.Message):
    __slots__ = ("code", "catastrophic", "spawn_exit_code")
    class Code(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        SPAWN_UNKNOWN: _ClassVar[Spawn.Code]
        NON_ZERO_EXIT: _ClassVar[Spawn.Code]
        TIMEOUT: _ClassVar[Spawn.Code]
        OUT_OF_MEMORY: _ClassVar[Spawn.Code]
        EXECUTION_FAILED: _ClassVar[Spawn.Code]
        EXECUTION_DENIED: _ClassVar[Spawn.Code]
        REMOTE_CACHE_FAILED: _ClassVar[Spawn.Code]
        COMMAND_LINE_EXPANSION_FAILURE: _ClassVar[Spawn.Code]
        EXEC_IO_EXCEPTION: _ClassVar[Spawn.Code]
        INVALID_TIMEOUT: _ClassVar[Spawn.Code]
        INVALID_REMOTE_EXECUTION_PROPERTIES: _ClassVar[Spawn.Code]
        NO_USABLE_STRATEGY_FOUND: _ClassVar[Spawn.Code]
        UNSPECIFIED_EXECUTION_FAILURE: _ClassVar[Spawn.Code]
    SPAWN_UNKNOWN: Spawn.Code
    NON_ZERO_EXIT: Spawn.Code
    TIMEOUT: Spawn.Code
    OUT_OF_MEMORY: Spawn.Code
    EXECUTION_FAILED: Spawn.Code
    EXECUTION_DENIED: Spawn.Code
    REMOTE_CACHE_FAILED: Spawn.Code
    COMMAND_LINE_EXPANSION_FAILURE: Spawn.Code
    EXEC_IO_EXCEPTION: Spawn.Code
    INVALID_TIMEOUT: Spawn.Code
    INVALID_REMOTE_EXECUTION_PROPERTIES: Spawn.Code
    NO_USABLE_STRATEGY_FOUND: Spawn.Code
    UNSPECIFIED_EXECUTION_FAILURE: Spawn.Code
    CODE_FIELD_NUMBER: _ClassVar[int]
    CATASTROPHIC_FIELD_NUMBER: _ClassVar[int]
    SPAWN_EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    code: Spawn.Code
    catastrophic: bool
    spawn_exit_code: int
    def __init__(self, code: _Optional[_Union[Spawn.Code, str]] = ..., catastrophic: _Optional[bool] = ..., spawn_exit_code: _Optional[int] = ...) -> None: ...
