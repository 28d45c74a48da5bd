"""Readiness probe for the local Kafka broker started by ops/kafka/start.sh.

Usage: python ops/kafka/probe.py HOST:PORT

Exit 0 when the broker answers an ApiVersions request (stdlib only) and, if aiokafka is importable,
a full metadata request listing at least one live broker. Exit 1 otherwise, with the reason on stderr.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import sys

API_VERSIONS_KEY = 18


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("broker closed the connection")
        buf.extend(chunk)
    return bytes(buf)


def api_versions(host: str, port: int, timeout: float = 5.0) -> int:
    """Send ApiVersions v0 and return the number of APIs the broker advertises."""
    client_id = b"skyattr-probe"
    correlation_id = 7
    body = struct.pack(">hhih", API_VERSIONS_KEY, 0, correlation_id, len(client_id)) + client_id
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(struct.pack(">i", len(body)) + body)
        (size,) = struct.unpack(">i", _recv_exact(sock, 4))
        payload = _recv_exact(sock, size)
    got_id, error_code, count = struct.unpack(">ihi", payload[:10])
    if got_id != correlation_id:
        raise RuntimeError(f"correlation id mismatch: {got_id} != {correlation_id}")
    if error_code != 0:
        raise RuntimeError(f"ApiVersions error code {error_code}")
    return count


async def metadata_brokers(bootstrap: str) -> int:
    """Full metadata round trip through aiokafka; returns the number of live brokers."""
    from aiokafka import AIOKafkaClient

    client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    try:
        await asyncio.wait_for(client.bootstrap(), timeout=10)
        cluster = await asyncio.wait_for(client.fetch_all_metadata(), timeout=10)
        return len(cluster.brokers())
    finally:
        await client.close()


def main(argv: list[str]) -> int:
    if len(argv) != 2 or ":" not in argv[1]:
        print(__doc__, file=sys.stderr)
        return 2
    bootstrap = argv[1]
    host, _, port = bootstrap.rpartition(":")
    try:
        n_apis = api_versions(host, int(port))
    except (OSError, RuntimeError, struct.error) as exc:
        print(f"ApiVersions failed: {exc}", file=sys.stderr)
        return 1
    try:
        import aiokafka  # noqa: F401
    except ImportError:
        print(f"broker answers ApiVersions ({n_apis} APIs); aiokafka not installed, metadata check skipped")
        return 0
    try:
        n_brokers = asyncio.run(metadata_brokers(bootstrap))
    except Exception as exc:  # any aiokafka error means "not ready yet"
        print(f"metadata request failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if n_brokers < 1:
        print("metadata lists no live broker yet", file=sys.stderr)
        return 1
    print(f"broker answers ApiVersions ({n_apis} APIs) and Metadata ({n_brokers} live broker)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
