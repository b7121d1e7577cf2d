"""The floor: an empty grpc.aio handler on the same server set-up as `pdp serve`.

Same grpc.aio server, same options (``pdp.server.app.start``: SO_REUSEPORT off for one
worker, the same receive limit), same generated DecisionService registration and the health
service; ``CheckPush`` / ``CheckPushBatch`` deserialize the request (the generated code does
that before the handler runs) and answer an empty response. Whatever `pdp serve` costs above
this is pdp's own cost.

Usage: python bench/floor_server.py --listen 127.0.0.1:PORT
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from pdp.settings import Settings
from pdp.v1 import decision_pb2 as dpb
from pdp.v1 import decision_pb2_grpc as dgrpc


class EmptyDecisionService(dgrpc.DecisionServiceServicer):
    async def CheckPush(self, request: dpb.CheckPushRequest,
                        context: grpc.aio.ServicerContext[Any, Any]) -> dpb.CheckPushResponse:
        return dpb.CheckPushResponse()

    async def CheckPushBatch(self, request: dpb.CheckPushBatchRequest,
                             context: grpc.aio.ServicerContext[Any, Any]
                             ) -> dpb.CheckPushBatchResponse:
        return dpb.CheckPushBatchResponse()


def server_options(settings: Settings) -> list[tuple[str, Any]]:
    """Exactly the options pdp.server.app.start() passes to grpc.aio.server()."""
    return [("grpc.so_reuseport", 1 if settings.workers > 1 else 0),
            ("grpc.max_receive_message_length", settings.max_config_bytes * 3 + 1024 * 1024)]


async def serve(listen: str) -> None:
    server = grpc.aio.server(options=server_options(Settings()))
    dgrpc.add_DecisionServiceServicer_to_server(EmptyDecisionService(), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    server.add_insecure_port(listen)
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
    await server.stop(1.0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen", required=True)
    asyncio.run(serve(ap.parse_args().listen))


if __name__ == "__main__":
    main()
