from granary._proto.build_event_stream import option_filters_pb2 as _option_filters_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CommandLine(_message.Message):
    __slots__ = ("command_line_label", "sections")
    COMMAND_LINE_LABEL_FIELD_NUMBER: _ClassVar[int]
    SECTIONS_FIELD_NUMBER: _ClassVar[int]
    command_line_label: str
    sections: _containers.RepeatedCompositeFieldContainer[CommandLineSection]
    def __init__(self, command_line_label: _Optional[str] = ..., sections: _Optional[_Iterable[_Union[CommandLineSection, _Mapping]]] = ...) -> None: ...

class CommandLineSection(_message.Message):
    __slots__ = ("section_label", "chunk_list", "option_list")
    SECTION_LABEL_FIELD_NUMBER: _ClassVar[int]
    CHUNK_LIST_FIELD_NUMBER: _ClassVar[int]
    OPTION_LIST_FIELD_NUMBER: _ClassVar[int]
    section_label: str
    chunk_list: ChunkList
    option_list: OptionList
    def __init__(self, section_label: _Optional[str] = ..., chunk_list: _Optional[_Union[ChunkList, _Mapping]] = ..., option_list: _Optional[_Union[OptionList, _Mapping]] = ...) -> None: ...

class ChunkList(_message.Message):
    __slots__ = ("chunk",)
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    chunk: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, chunk: _Optional[_Iterable[str]] = ...) -> None: ...

class OptionList(_message.Message):
    __slots__ = ("option",)
    OPTION_FIELD_NUMBER: _ClassVar[int]
    option: _containers.RepeatedCompositeFieldContainer[Option]
    def __init__(self, option: _Optional[_Iterable[_Union[Option, _Mapping]]] = ...) -> None: ...

class Option(_message.Message):
    __slots__ = ("combined_form", "option_name", "option_value", "effect_tags", "metadata_tags")
    COMBINED_FORM_FIELD_NUMBER: _ClassVar[int]
    OPTION_NAME_FIELD_NUMBER: _ClassVar[int]
    OPTION_VALUE_FIELD_NUMBER: _ClassVar[int]
    EFFECT_TAGS_FIELD_NUMBER: _ClassVar[int]
    METADATA_TAGS_FIELD_NUMBER: _ClassVar[int]
    combined_form: str
    option_name: str
    option_value: str
    effect_tags: _containers.RepeatedScalarFieldContainer[_option_filters_pb2.OptionEffectTag]
    metadata_tags: _containers.RepeatedScalarFieldContainer[_option_filters_pb2.OptionMetadataTag]
    def __init__(self, combined_form: _Optional[str] = ..., option_name: _Optional[str] = ..., option_value: _Optional[str] = ..., effect_tags: _Optional[_Iterable[_Union[_option_filters_pb2.OptionEffectTag, str]]] = ..., metadata_tags: _Optional[_Iterable[_Union[_option_filters_pb2.OptionMetadataTag, str]]] = ...) -> None: ...
