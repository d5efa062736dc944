#!/usr/bin/env bash
# Run a command inside the project's virtual environment, creating or
# refreshing it first when pyproject.toml or this script changed.
#   bash scripts/in-env.sh secure-infer demo
#   bash scripts/in-env.sh pytest
# SECURE_INFER_TORCH_INDEX: the package index for the torch install only, e.g.
# https://download.pytorch.org/whl/cpu for the CPU build where pip's own
# configuration would fetch the CUDA one; empty or unset: pip's configuration.
# It counts when the environment is built (delete .venv/ to switch an existing one).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${SECURE_INFER_VENV:-$root/.venv}"
python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null 2>&1 || python=python3

stamp_value="$(cat "$root/pyproject.toml" "$root/scripts/in-env.sh" | sha256sum | cut -d' ' -f1)"
stamp_file="$venv/.secure-infer-stamp"

if [ ! -f "$stamp_file" ] || [ "$(cat "$stamp_file")" != "$stamp_value" ]; then
    echo "secure-infer: preparing the environment in $venv (first run takes a few minutes)" >&2
    [ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
    pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
    # torch first, pinned, so nothing below can pull a CUDA build.
    torch_index=()
    if [ -n "${SECURE_INFER_TORCH_INDEX:-}" ]; then
        torch_index=(--index-url "$SECURE_INFER_TORCH_INDEX")
        echo "secure-infer: torch from $SECURE_INFER_TORCH_INDEX" >&2
    fi
    "${pip[@]}" install ${torch_index[@]+"${torch_index[@]}"} "torch==2.13.0"
    "${pip[@]}" install -e "$root[test,fl,cluster]"
    # crypten's declared requirements are broken; what it imports is in pyproject.
    "${pip[@]}" install --no-deps "crypten==0.4.1"
    echo "$stamp_value" > "$stamp_file"
fi

if [ "$#" -eq 0 ]; then
    echo "usage: bash scripts/in-env.sh COMMAND [ARGS...]" >&2
    exit 2
fi
export PATH="$venv/bin:$PATH"
exec "$@"
