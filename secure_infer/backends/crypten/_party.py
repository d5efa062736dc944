"""``python -m secure_infer.backends.crypten._party RANK``: one CrypTen party process."""

from __future__ import annotations

import sys

from secure_infer.backends.crypten._pool import child_main

if __name__ == "__main__":
    child_main(int(sys.argv[1]))
