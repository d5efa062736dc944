"""MPC parties as separate processes or hosts, over torch.distributed's own rendezvous."""

from protocols.mpc.launch import LaunchResult, launch_local, local_parties, party_command
from protocols.mpc.party import (
    PartyConfig,
    PartyOutcome,
    infer_role,
    parse_phase_line,
    phase_line,
    run_party,
)

__all__ = ["LaunchResult", "PartyConfig", "PartyOutcome", "infer_role", "launch_local", "local_parties",
           "parse_phase_line", "party_command", "phase_line", "run_party"]
