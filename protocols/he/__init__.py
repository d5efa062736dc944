"""HE inference between two parties: the server (model owner) and the client (data owner).

:class:`HEServer` serves over gRPC (``proto/inference.proto``), with TLS off
loopback, client tokens or certificates, and per-client budgets
(:class:`ServerState`); :class:`HEClient` keeps the secret key.
:class:`FrameServer` is the legacy frame protocol over the same handler.
"""

import os

# gRPC's C core logs handshake failures at INFO on stderr; refusals reach callers as ProtocolError instead
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

from protocols.he.channels import ClientTLS
from protocols.he.client import HEClient, QueryStats
from protocols.he.handler import AuditLog, Caller, InferenceHandler
from protocols.he.legacy import FrameServer
from protocols.he.server import HEServer, ServerTLS
from protocols.he.state import ServerState

__all__ = ["AuditLog", "Caller", "ClientTLS", "FrameServer", "HEClient", "HEServer", "InferenceHandler",
           "QueryStats", "ServerState", "ServerTLS"]
