from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from typing import ClassVar as _ClassVar

DESCRIPTOR: _descriptor.FileDescriptor

class OptionEffectTag(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    UNKNOWN: _ClassVar[OptionEffectTag]
    NO_OP: _ClassVar[OptionEffectTag]
    LOSES_INCREMENTAL_STATE: _ClassVar[OptionEffectTag]
    CHANGES_INPUTS: _ClassVar[OptionEffectTag]
    AFFECTS_OUTPUTS: _ClassVar[OptionEffectTag]
    BUILD_FILE_SEMANTICS: _ClassVar[OptionEffectTag]
    BAZEL_INTERNAL_CONFIGURATION: _ClassVar[OptionEffectTag]
    LOADING_AND_ANALYSIS: _ClassVar[OptionEffectTag]
    EXECUTION: _ClassVar[OptionEffectTag]
    HOST_MACHINE_RESOURCE_OPTIMIZATIONS: _ClassVar[OptionEffectTag]
    EAGERNESS_TO_EXIT: _ClassVar[OptionEffectTag]
    BAZEL_MONITORING: _ClassVar[OptionEffectTag]
    TERMINAL_OUTPUT: _ClassVar[OptionEffectTag]
    ACTION_COMMAND_LINES: _ClassVar[OptionEffectTag]
    TEST_RUNNER: _ClassVar[OptionEffectTag]

class OptionMetadataTag(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EXPERIMENTAL: _ClassVar[OptionMetadataTag]
    INCOMPATIBLE_CHANGE: _ClassVar[OptionMetadataTag]
    DEPRECATED: _ClassVar[OptionMetadataTag]
    HIDDEN: _ClassVar[OptionMetadataTag]
    INTERNAL: _ClassVar[OptionMetadataTag]
    TRIGGERED_BY_ALL_INCOMPATIBLE_CHANGES: _ClassVar[OptionMetadataTag]
UNKNOWN: OptionEffectTag
NO_OP: OptionEffectTag
LOSES_INCREMENTAL_STATE: OptionEffectTag
CHANGES_INPUTS: OptionEffectTag
AFFECTS_OUTPUTS: OptionEffectTag
BUILD_FILE_SEMANTICS: OptionEffectTag
BAZEL_INTERNAL_CONFIGURATION: OptionEffectTag
LOADING_AND_ANALYSIS: OptionEffectTag
EXECUTION: OptionEffectTag
HOST_MACHINE_RESOURCE_OPTIMIZATIONS: OptionEffectTag
EAGERNESS_TO_EXIT: OptionEffectTag
BAZEL_MONITORING: OptionEffectTag
TERMINAL_OUTPUT: OptionEffectTag
ACTION_COMMAND_LINES: OptionEffectTag
TEST_RUNNER: OptionEffectTag
EXPERIMENTAL: OptionMetadataTag
INCOMPATIBLE_CHANGE: OptionMetadataTag
DEPRECATED: OptionMetadataTag
HIDDEN: OptionMetadataTag
INTERNAL: OptionMetadataTag
TRIGGERED_BY_ALL_INCOMPATIBLE_CHANGES: OptionMetadataTag
