"""A byte stream that first replays bytes already read from it.

When a connection leaves JSON for raw bytes, the JSON reader may already hold some of the
raw bytes that followed the upgrading message. Whoever takes the stream over must see
them first, in order; this wrapper gives them back before reading on.
"""

from __future__ import annotations

import trio


class PrefixedStream(trio.abc.HalfCloseableStream):
    """*stream*, with *prefix* delivered before anything read from it.

    Args:
        stream: the underlying stream; closing this wrapper closes it.
        prefix: bytes that were received from *stream* but not consumed.
    """

    def __init__(self, stream: trio.abc.Stream, prefix: bytes = b"") -> None:
        self.transport_stream = stream
        self._prefix = prefix

    @property
    def pending(self) -> int:
        """Bytes already read from the stream and not yet delivered."""
        return len(self._prefix)

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self._prefix:
            await trio.lowlevel.checkpoint()
            n = len(self._prefix) if max_bytes is None else max_bytes
            data, self._prefix = self._prefix[:n], self._prefix[n:]
            return data
        return await self.transport_stream.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.transport_stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport_stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        if not isinstance(self.transport_stream, trio.abc.HalfCloseableStream):
            raise NotImplementedError("the underlying stream cannot half-close")
        await self.transport_stream.send_eof()

    async def aclose(self) -> None:
        await self.transport_stream.aclose()
