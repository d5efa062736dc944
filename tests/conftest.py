"""Shared, seeded fixtures: data sets and small trained models, built once per session."""

from __future__ import annotations

import pytest
import torch

from secure_infer import datasets, zoo


@pytest.fixture(scope="session")
def digits() -> datasets.Dataset:
    return datasets.load_digits(seed=0)


class _TrainedOnDemand(dict[str, zoo.ZooModel]):
    """Zoo models trained the first time a test asks for one: a test of the MLP never waits for the ViT."""

    def __init__(self, data: datasets.Dataset) -> None:
        super().__init__()
        self._data = data

    def __missing__(self, name: str) -> zoo.ZooModel:
        torch.manual_seed(0)
        self[name] = model = zoo.pretrained(name, self._data, seed=0)
        return model


@pytest.fixture(scope="session")
def trained_zoo(digits: datasets.Dataset) -> dict[str, zoo.ZooModel]:
    return _TrainedOnDemand(digits)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test that takes ``zoo_name`` runs once per zoo model; the ViT's run is marked slow, because
    whichever test asks for the trained ViT first pays for its training."""
    if "zoo_name" in metafunc.fixturenames:
        metafunc.parametrize("zoo_name", [pytest.param(n, marks=[pytest.mark.slow] if n == "vit" else [])
                                          for n in zoo.available()])


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    _leave_out_slow_tests_from_a_plain_run(config, items)
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA; this machine has no CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


def _leave_out_slow_tests_from_a_plain_run(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A plain ``pytest`` is the unit suite: tests marked slow are deselected (and counted as such).

    ``pytest -m slow`` runs just them; naming a folder, file or test (``pytest tests``), or choosing with
    ``-k``, runs what is named, slow or not.
    """
    if (config.option.markexpr or config.option.keyword
            or config.args_source != pytest.Config.ArgsSource.TESTPATHS):
        return
    # the mark itself, as `-m slow` selects it: item.keywords also holds node names (a folder called slow)
    slow = [item for item in items if item.get_closest_marker("slow") is not None]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if item.get_closest_marker("slow") is None]


# The unit suite (a plain ``pytest``) leaves out tests marked slow; CI runs them in a second pass (``pytest -m slow``).
# A test that takes longer than this without the mark makes the unit suite slow, and is named at the end.
# Set-up and teardown count: a fixture's cost lands on the first test that asks for it, and the suite pays it.
SLOW_SECONDS = 5.0
_unmarked_seconds: dict[str, float] = {}
_marked_slow: set[str] = set()


def pytest_itemcollected(item: pytest.Item) -> None:
    if item.get_closest_marker("slow") is not None:
        _marked_slow.add(item.nodeid)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.nodeid not in _marked_slow:
        _unmarked_seconds[report.nodeid] = _unmarked_seconds.get(report.nodeid, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    over = sorted(((s, n) for n, s in _unmarked_seconds.items() if s > SLOW_SECONDS), reverse=True)
    if over:
        terminalreporter.section(f"tests over {SLOW_SECONDS:g} s without the slow mark (mark them, or make them faster)")
        for seconds, nodeid in over:
            terminalreporter.write_line(f"{seconds:7.1f} s  {nodeid}")


# SEAL/TenSEAL/secure-infer types that are, or hold, a secret key (an Encryptor may be a symmetric one)
SECRET_TYPES = ("SecretKey", "KeyGenerator", "Decryptor", "Encryptor", "ClientKeys", "LayoutClient")


def _secret_key_material(root: object, *, limit: int = 1_000_000) -> tuple[list[str], int]:
    """Walk everything reachable from ``root``; describe each secret key (holder) found, and count objects.

    Follows instance attributes (``vars``/slots), containers, bound methods' ``self``, closures, TenSEAL
    objects' contexts, and ``gc.get_referents`` of anything else; it does not enter classes, modules or
    functions' globals (that would be the whole process, the test's own client included). Every TenSEAL
    context reached must be public; no object may be of a type in :data:`SECRET_TYPES`.
    """
    import gc
    import types

    import numpy as np

    leaves = (type, types.ModuleType, types.CodeType, types.FrameType, str, bytes, bytearray, memoryview,
              int, float, complex, bool, type(None), torch.Tensor, np.ndarray)
    found: list[str] = []
    seen: set[int] = set()
    keep_alive: list[object] = []  # objects made during the walk (a TenSEAL object's context) keep their ids
    stack: list[tuple[object, str]] = [(root, "server")]
    while stack:
        obj, path = stack.pop()
        if isinstance(obj, leaves) or id(obj) in seen:
            continue
        seen.add(id(obj))
        assert len(seen) < limit, f"the walk passed {limit} objects without finishing"
        kind = type(obj)
        if any(name in kind.__name__ for name in SECRET_TYPES):
            found.append(f"{path}: {kind.__module__}.{kind.__qualname__}")
        tenseal_type = kind.__module__.split(".")[0] in ("tenseal", "_tenseal_cpp")
        if tenseal_type and callable(getattr(obj, "is_private", None)) and obj.is_private():
            found.append(f"{path}: a private {kind.__qualname__} (it holds the secret key)")
        children: list[tuple[object, str]] = []
        if isinstance(obj, dict):
            children = [(k, f"{path}.keys()") for k in obj] + [(v, f"{path}[{k!r}]") for k, v in obj.items()]
        elif isinstance(obj, (list, tuple, set, frozenset)):
            children = [(v, f"{path}[{i}]") for i, v in enumerate(obj)]
        elif isinstance(obj, types.MethodType):
            children = [(obj.__self__, f"{path}.__self__")]
        elif isinstance(obj, types.FunctionType):
            cells = [c.cell_contents for c in obj.__closure__ or () if c.cell_contents is not None]
            children = [(v, f"{path}<closure>") for v in (*cells, *(obj.__defaults__ or ()))]
        else:
            if hasattr(obj, "__dict__"):
                children += [(v, f"{path}.{k}") for k, v in vars(obj).items()]
            for slot in getattr(kind, "__slots__", ()):
                if isinstance(slot, str) and hasattr(obj, slot):
                    children.append((getattr(obj, slot), f"{path}.{slot}"))
            children += [(v, f"{path}<ref>") for v in gc.get_referents(obj) if not isinstance(v, types.FunctionType)]
            if tenseal_type and callable(getattr(obj, "context", None)):  # a TenSEAL vector's context
                context = obj.context()
                keep_alive.append(context)
                children.append((context, f"{path}.context()"))
        stack.extend(children)
    return found, len(seen)


@pytest.fixture(scope="session")
def secret_key_material():
    """The object-graph walk that finds secret keys: tests hand it a server and assert it finds none."""
    return _secret_key_material
