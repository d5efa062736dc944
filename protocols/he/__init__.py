"""HE inference between two parties: the server (model owner) and the client (data owner)."""

from protocols.he.client import HEClient, QueryStats
from protocols.he.server import HEServer

__all__ = ["HEClient", "HEServer", "QueryStats"]
