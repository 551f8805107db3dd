"""Default bounds of an input tree (granary.worker.inputs.InputLimits).

Apart from granary.worker.inputs so that the command line can show them without
loading protobuf and gRPC into every `granary` process.
"""

from __future__ import annotations

DEFAULT_MAX_PATHS = 1_000_000  # files, symlinks and directories, counted as the tree expands
DEFAULT_MAX_DEPTH = 256  # directories from the root to the deepest one
