"""gRPC core settings for the processes of the `dualdistill` command, which grpc reads once, when it is
imported: `choose_grpc_experiments` runs before any command imports grpc.

GRPC_EXPERIMENTS=-event_engine_listener,-event_engine_client: connections are read and written by grpc's
own polling (the thread that already waits for completions: grpc.aio's poller in the server, the calling
thread of a blocking client call), not by EventEngine threads that hand every read and write over to it.
That hop is one more thread wake-up per read or write. On 2 CPU cores, for a unary GetLogits with a 7 KB
answer, the server's part saved 0.09 ms per call, the client's 0.08 ms and both 0.17 ms (0.85 -> 0.69 ms;
`bench/grpc_experiments.py`, 1500 rounds paired call by call; docs/benchmarks.md). The legacy polling is the I/O path grpc used
before its EventEngine; limits, deadlines, keepalive and TLS behave the same (tests/server,
tests/reliability, tests/client run through it). An operator's own GRPC_EXPERIMENTS is left as it is.
A training script that uses `TeacherClient` in its own process can set the same variable (the client part,
-event_engine_client, is the one that matters there) before it imports grpc or dualdistill's gRPC client.
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping

GRPC_EXPERIMENTS = "-event_engine_listener,-event_engine_client"


def choose_grpc_experiments(environ: MutableMapping[str, str] = os.environ) -> bool:
    """Set GRPC_EXPERIMENTS unless it is set already, or grpc is imported (too late: grpc read it then).
    True when it was set here."""
    if "GRPC_EXPERIMENTS" in environ or "grpc" in sys.modules:
        return False
    environ["GRPC_EXPERIMENTS"] = GRPC_EXPERIMENTS
    return True
