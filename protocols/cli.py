"""The ``secure-infer`` entry point: the library's commands plus the ones that run parties.

:mod:`secure_infer.cli` holds the commands that only use the library (zoo,
baseline, bench, attack, ...); the commands that start servers, clients and
party processes (``demo``, ``serve``, ``query``, ``party``) live with the
protocol code and are added here, so ``secure_infer`` never imports
``protocols``.
"""

from __future__ import annotations

from protocols import demo
from protocols.he import cli as he_cli
from protocols.mpc import cli as mpc_cli
from secure_infer import cli

app = cli.app
app.command("demo")(demo.demo)
he_cli.register(app)
mpc_cli.register(app)


def main() -> None:
    """Console-script entry point (``secure-infer``)."""
    cli.main()


if __name__ == "__main__":
    main()
