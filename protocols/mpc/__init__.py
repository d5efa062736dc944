"""MPC parties as separate processes or hosts, over torch.distributed's own rendezvous or mutually authenticated TLS links."""

from protocols.mpc.launch import LaunchResult, launch_local, local_parties, party_command
from protocols.mpc.party import PartyConfig, PartyOutcome, run_party
from secure_infer.backends.crypten import ROLES, parse_phase_line, phase_line, role_of

__all__ = ["ROLES", "LaunchResult", "PartyConfig", "PartyOutcome", "launch_local", "local_parties",
           "parse_phase_line", "party_command", "phase_line", "role_of", "run_party"]
