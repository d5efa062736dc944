"""Federated learning with the privacy side measured.

Training runs on Flower (its ServerApp/ClientApp, strategies and simulation
engine); what this package adds is what a curious server learns from the
clients' updates, and what secure aggregation (Flower's SecAgg+, or CrypTen
aggregator parties) and client-level differential privacy buy against it.
Needs the ``fl`` extra: ``pip install 'secure-infer[fl]'``.
"""
