"""A brief run of the decoder fuzzer (benchmarks/fuzz_decoders.py): every target runs, none crashes or hangs.

The real campaign is ``python benchmarks/fuzz_decoders.py --seconds 600``; this
one gives each of the six targets about a second (whole test: the program's
compilation, the seeds, six forked libFuzzer workers; well under 40 s on 2 idle cores).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]

ROOT = Path(__file__).resolve().parents[2]


def _fuzzer():
    try:
        import atheris  # noqa: F401
    except ImportError as exc:  # atheris is a dependency, but has no wheel for every platform
        pytest.skip(f"atheris is not importable ({exc}): the coverage-guided fuzzer cannot run here")
    spec = importlib.util.spec_from_file_location("fuzz_decoders", ROOT / "benchmarks" / "fuzz_decoders.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


def test_every_decoder_target_runs_without_crashes_or_hangs(tmp_path) -> None:
    fuzz = _fuzzer()
    summary = fuzz.run_campaign(6, tmp_path, echo=False)
    assert set(summary["targets"]) == set(fuzz.TARGETS)
    assert summary["seed_errors"] == []
    for name, result in summary["targets"].items():
        findings = [f"{f['kind']}: {f['reason']} ({', '.join(f['inputs'])})" for f in result["findings"]]
        assert result["crashes"] == 0 and result["hangs"] == 0, f"{name}: {findings}"
        assert result["executions"] > 0, name
    # the handler targets started from seeds that load: the key and context loaders accepted some input
    for name in ("relin_keys", "galois_keys", "tenseal_context", "ciphertext"):
        assert summary["targets"][name]["accepted"] > 0, name
    assert (tmp_path / "summary.json").is_file()
