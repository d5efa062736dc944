"""The parties of secure-infer: wire format, transport, HE client/server, MPC launch.

``protocols`` uses the programs ``secure_infer`` compiles; ``secure_infer``
never imports ``protocols``.
"""
