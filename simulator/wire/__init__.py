"""Sans-I/O codecs: bytes in, typed messages out, and back. Nothing here imports asyncio or socket."""
