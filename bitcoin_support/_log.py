"""The package's loggers and the TRACE level (5) they use for handle lifetimes."""

from __future__ import annotations

import logging

TRACE = 5
logging.addLevelName(TRACE, "TRACE")

events_log = logging.getLogger("bitcoin_support.events")
secure_alloc_log = logging.getLogger("bitcoin_support.secure_alloc")
http_log = logging.getLogger("bitcoin_support.http")
