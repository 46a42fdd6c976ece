"""asyncio WebSocket server: sessions, decoding, inference scheduling."""

from shelf_stream.server.app import Server, run_server
from shelf_stream.server.config import ServerConfig

__all__ = ["Server", "ServerConfig", "run_server"]
