"""A TCP forwarder: the kube-apiserver (bound to 127.0.0.1) reachable from pods on the bridge.

The local cluster has no kube-proxy, so the `kubernetes` Service's ClusterIP leads nowhere.
Operators installed in-cluster (the podckpt webhook and controller) reach the API server at
``https://kubernetes.default.svc`` (port 443: kopf's service-account login uses exactly that
URL; the name is in the serving certificate) mapped to the node IP by ``hostAliases``, through
this forwarder on ``<node IP>:443``. The node IP is per cluster (bridge), so concurrent
clusters do not collide. Started and stopped with the node tier.

    python -m podckpt.devtools.cluster.forward LISTEN_HOST LISTEN_PORT TARGET_HOST TARGET_PORT
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy one direction of a proxied connection until it ends (also service_proxy.py's)."""
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def serve(listen: tuple[str, int], target: tuple[str, int]) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*target)
        except OSError:
            writer.close()
            return
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    server = await asyncio.start_server(handle, *listen, reuse_address=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    asyncio.run(serve((argv[0], int(argv[1])), (argv[2], int(argv[3]))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
