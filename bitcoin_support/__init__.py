"""bitcoin_support: secure memory and tracked libevent handles for Python and C hosts."""

from __future__ import annotations

from ._client import EvHttpConnection as EvHttpConnection
from ._client import obtain_evhttp_connection_base as obtain_evhttp_connection_base
from ._client import obtain_evhttp_request as obtain_evhttp_request
from ._errors import BitcoinSupportError as BitcoinSupportError
from ._errors import ClosedError as ClosedError
from ._errors import DummyHandleError as DummyHandleError
from ._event import EV_CLOSED as EV_CLOSED
from ._event import EV_ET as EV_ET
from ._event import EV_PERSIST as EV_PERSIST
from ._event import EV_READ as EV_READ
from ._event import EV_SIGNAL as EV_SIGNAL
from ._event import EV_TIMEOUT as EV_TIMEOUT
from ._event import EV_WRITE as EV_WRITE
from ._event import EvutilSocket as EvutilSocket
from ._event import LibEvent as LibEvent
from ._event import obtain_event as obtain_event
from ._event_base import EVLOOP_NO_EXIT_ON_EMPTY as EVLOOP_NO_EXIT_ON_EMPTY
from ._event_base import EVLOOP_NONBLOCK as EVLOOP_NONBLOCK
from ._event_base import EVLOOP_ONCE as EVLOOP_ONCE
from ._event_base import EventBase as EventBase
from ._event_base import obtain_event_base as obtain_event_base
from ._handles import live_counts as live_counts
from ._interop import embed_library_path as embed_library_path
from ._interop import get_include as get_include
from ._log import TRACE as TRACE
from ._native import ffi as ffi
from ._native import lib as lib
from ._request import EvHttpRequest as EvHttpRequest
from ._secure import Block as Block
from ._secure import PoolStats as PoolStats
from ._secure import SecureAllocator as SecureAllocator
from ._secure import ZeroAfterFreeAllocator as ZeroAfterFreeAllocator
from ._secure import locked_pool_stats as locked_pool_stats
from ._secure import memory_cleanse as memory_cleanse
from ._secure_string import SecureString as SecureString
from ._serialize import SerializeData as SerializeData
from ._server import EvHttp as EvHttp
from ._server import obtain_evhttp as obtain_evhttp
from ._util import align_up as align_up
from ._util import get_unique_path as get_unique_path
from ._version import __version__ as __version__

__all__ = [
    "EVLOOP_NONBLOCK",
    "EVLOOP_NO_EXIT_ON_EMPTY",
    "EVLOOP_ONCE",
    "EV_CLOSED",
    "EV_ET",
    "EV_PERSIST",
    "EV_READ",
    "EV_SIGNAL",
    "EV_TIMEOUT",
    "EV_WRITE",
    "TRACE",
    "BitcoinSupportError",
    "Block",
    "ClosedError",
    "DummyHandleError",
    "EvHttp",
    "EvHttpConnection",
    "EvHttpRequest",
    "EventBase",
    "EvutilSocket",
    "LibEvent",
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
    "live_counts",
    "locked_pool_stats",
    "memory_cleanse",
    "obtain_event",
    "obtain_event_base",
    "obtain_evhttp",
    "obtain_evhttp_connection_base",
    "obtain_evhttp_request",
]
