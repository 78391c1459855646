"""bitcoin_support: secure memory and tracked libevent handles for Python and C hosts."""

from __future__ import annotations

from ._errors import ClosedError as ClosedError
from ._errors import DummyHandleError as DummyHandleError
from ._interop import embed_library_path as embed_library_path
from ._interop import get_include as get_include
from ._log import TRACE as TRACE
from ._native import ffi as ffi
from ._native import lib as lib
from ._secure import Block as Block
from ._secure import PoolStats as PoolStats
from ._secure import SecureAllocator as SecureAllocator
from ._secure import ZeroAfterFreeAllocator as ZeroAfterFreeAllocator
from ._secure import locked_pool_stats as locked_pool_stats
from ._secure import memory_cleanse as memory_cleanse
from ._secure_string import SecureString as SecureString
from ._serialize import SerializeData as SerializeData
from ._util import align_up as align_up
from ._util import get_unique_path as get_unique_path

__all__ = [
    "TRACE",
    "Block",
    "ClosedError",
    "DummyHandleError",
    "PoolStats",
    "SecureAllocator",
    "SecureString",
    "SerializeData",
    "ZeroAfterFreeAllocator",
    "align_up",
    "embed_library_path",
    "ffi",
    "get_include",
    "get_unique_path",
    "lib",
    "locked_pool_stats",
    "memory_cleanse",
]
