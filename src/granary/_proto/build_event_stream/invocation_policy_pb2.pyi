from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class InvocationPolicy(_message.Message):
    __slots__ = ("flag_policies",)
    FLAG_POLICIES_FIELD_NUMBER: _ClassVar[int]
    flag_policies: _containers.RepeatedCompositeFieldContainer[FlagPolicy]
    def __init__(self, flag_policies: _Optional[_Iterable[_Union[FlagPolicy, _Mapping]]] = ...) -> None: ...

class FlagPolicy(_message.Message):
    __slots__ = ("flag_name", "commands", "set_value", "use_default", "disallow_values", "allow_values")
    FLAG_NAME_FIELD_NUMBER: _ClassVar[int]
    COMMANDS_FIELD_NUMBER: _ClassVar[int]
    SET_VALUE_FIELD_NUMBER: _ClassVar[int]
    USE_DEFAULT_FIELD_NUMBER: _ClassVar[int]
    DISALLOW_VALUES_FIELD_NUMBER: _ClassVar[int]
    ALLOW_VALUES_FIELD_NUMBER: _ClassVar[int]
    flag_name: str
    commands: _containers.RepeatedScalarFieldContainer[str]
    set_value: SetValue
    use_default: UseDefault
    disallow_values: DisallowValues
    allow_values: AllowValues
    def __init__(self, flag_name: _Optional[str] = ..., commands: _Optional[_Iterable[str]] = ..., set_value: _Optional[_Union[SetValue, _Mapping]] = ..., use_default: _Optional[_Union[UseDefault, _Mapping]] = ..., disallow_values: _Optional[_Union[DisallowValues, _Mapping]] = ..., allow_values: _Optional[_Union[AllowValues, _Mapping]] = ...) -> None: ...

class SetValue(_message.Message):
    __slots__ = ("flag_value", "overridable", "append")
    FLAG_VALUE_FIELD_NUMBER: _ClassVar[int]
    OVERRIDABLE_FIELD_NUMBER: _ClassVar[int]
    APPEND_FIELD_NUMBER: _ClassVar[int]
    flag_value: _containers.RepeatedScalarFieldContainer[str]
    overridable: bool
    append: bool
    def __init__(self, flag_value: _Optional[_Iterable[str]] = ..., overridable: _Optional[bool] = ..., append: _Optional[bool] = ...) -> None: ...

class UseDefault(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DisallowValues(_message.Message):
    __slots__ = ("disallowed_values", "new_value", "use_default")
    DISALLOWED_VALUES_FIELD_NUMBER: _ClassVar[int]
    NEW_VALUE_FIELD_NUMBER: _ClassVar[int]
    USE_DEFAULT_FIELD_NUMBER: _ClassVar[int]
    disallowed_values: _containers.RepeatedScalarFieldContainer[str]
    new_value: str
    use_default: UseDefault
    def __init__(self, disallowed_values: _Optional[_Iterable[str]] = ..., new_value: _Optional[str] = ..., use_default: _Optional[_Union[UseDefault, _Mapping]] = ...) -> None: ...

class AllowValues(_message.Message):
    __slots__ = ("allowed_values", "new_value", "use_default")
    ALLOWED_VALUES_FIELD_NUMBER: _ClassVar[int]
    NEW_VALUE_FIELD_NUMBER: _ClassVar[int]
    USE_DEFAULT_FIELD_NUMBER: _ClassVar[int]
    allowed_values: _containers.RepeatedScalarFieldContainer[str]
    new_value: str
    use_default: UseDefault
    def __init__(self, allowed_values: _Optional[_Iterable[str]] = ..., new_value: _Optional[str] = ..., use_default: _Optional[_Union[UseDefault, _Mapping]] = ...) -> None: ...
