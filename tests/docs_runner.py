"""Run the fenced code blocks of a Markdown document, so the docs cannot rot.

Rules (docs/guides/README.md states them for writers of guides):

* ```python blocks run in order in one namespace per document, in one Python
  process (a worker started for the document);
* ```bash blocks run one by one with ``bash -c`` (``set -eo pipefail`` first),
  with the environment's ``bin`` folder first on ``PATH``;
* ```text blocks are output or synopses and are never run; any other info
  string (or none) is an error, so nothing escapes the test by accident;
* a block preceded by ``<!-- docs-test: skip (REASON) -->`` is not run, and
  the reason is required.

Python and bash blocks share one working directory per document: a fresh
temporary folder that looks like a checkout (symbolic links to the
repository's top-level entries), so a command written "from the repository
root" runs as written while everything the document writes stays in the
temporary folder.

A bash block may start a server or a party in the background (``cmd &``); a
later block must stop it. Each bash block runs in its own process group; when
the document ends, any process still alive in one of those groups is killed
and reported as an error ("left running"). Every block has a timeout; on
timeout the block's process group (or the Python worker) is killed.
"""

from __future__ import annotations

import json
import os
import re
import resource
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

RUN_KINDS = ("python", "bash")
OUTPUT_KINDS = ("text",)
SKIP_MARKER = re.compile(r"^<!--\s*docs-test:\s*skip\s*\((?P<reason>.+)\)\s*-->\s*$")
ANY_MARKER = re.compile(r"^\s*<!--\s*docs-test:")
FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})(?P<info>[^`]*)$")
# entries of the checkout that the temporary working folder does not link
NOT_LINKED = {".git", ".pytest_cache", ".ruff_cache", ".mypy_cache", ".benchmarks", "__pycache__"}


class DocsError(AssertionError):
    """A document that is malformed or whose code failed, with where and why."""


@dataclass(frozen=True)
class Block:
    """One fenced block: ``line`` is the 1-based line of its opening fence."""

    doc: Path
    line: int
    kind: str
    info: str
    code: str
    skip: str | None = None

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.line}"


@dataclass
class BlockResult:
    block: Block
    status: str  # "passed", "skipped" or "output"
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # user + system, the block's processes together (background jobs not counted)


@dataclass
class DocumentReport:
    doc: Path
    results: list[BlockResult] = field(default_factory=list)
    seconds: float = 0.0

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.results)

    def summary(self) -> str:
        ran = [r for r in self.results if r.status == "passed"]
        lines = [f"{self.doc}: {len(ran)} blocks ran in {self.seconds:.1f} s "
                 f"({sum(r.cpu_seconds for r in ran):.1f} s CPU), "
                 f"{self.count('skipped')} skipped, {self.count('output')} output blocks"]
        lines += [f"  ran     {r.block.where} ({r.block.kind}) {r.seconds:.1f} s, {r.cpu_seconds:.1f} s CPU"
                  for r in ran]
        lines += [f"  skipped {r.block.where}: {r.block.skip}" for r in self.results if r.status == "skipped"]
        return "\n".join(lines)


def parse(path: Path, *, relative_to: Path | None = None) -> list[Block]:
    """The fenced blocks of ``path``, with skip markers attached; raises DocsError on malformed ones."""
    text = path.read_text(encoding="utf-8")
    shown = path.relative_to(relative_to) if relative_to and path.is_relative_to(relative_to) else path
    lines = text.splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            if ANY_MARKER.search(lines[i]):
                if not SKIP_MARKER.match(lines[i].strip()):
                    raise DocsError(f"{shown}:{i + 1}: unreadable docs-test marker {lines[i].strip()!r}; "
                                    "write <!-- docs-test: skip (REASON) -->")
                after = i + 1
                while after < len(lines) and not lines[after].strip():
                    after += 1
                if after == len(lines) or not FENCE.match(lines[after]):
                    raise DocsError(f"{shown}:{i + 1}: a skip marker must come right before the block it skips")
            i += 1
            continue
        fence, info = m.group("fence"), m.group("info").strip()
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines) and not (lines[i].strip().startswith(fence[0] * len(fence))
                                      and lines[i].strip().strip(fence[0]) == ""):
            body.append(lines[i])
            i += 1
        if i == len(lines):
            raise DocsError(f"{shown}:{start + 1}: code block never closed")
        i += 1
        kind = info.split()[0] if info else ""
        if kind not in RUN_KINDS + OUTPUT_KINDS:
            raise DocsError(f"{shown}:{start + 1}: code block with info string {info!r}; use python or bash "
                            "(run by tests/test_docs.py) or text (output, never run)")
        skip = None
        before = start - 1
        while before >= 0 and not lines[before].strip():
            before -= 1
        if before >= 0:
            marker = SKIP_MARKER.match(lines[before].strip())
            if marker:
                skip = marker.group("reason").strip()
                if kind not in RUN_KINDS:
                    raise DocsError(f"{shown}:{start + 1}: a skip marker before a {kind} block, which never runs")
        indent = len(m.group("indent"))
        code = "\n".join(ln[indent:] if ln[:indent].isspace() else ln for ln in body)
        blocks.append(Block(shown, start + 1, kind, info, code + "\n", skip))
    return blocks


def checkout_view(repo: Path, into: Path) -> Path:
    """Fill ``into`` with links to the repository's top-level entries (not .git or caches)."""
    for entry in sorted(repo.iterdir()):
        if entry.name not in NOT_LINKED:
            os.symlink(entry, into / entry.name)
    return into


def environment(bin_dir: Path) -> dict[str, str]:
    """The blocks' environment: this Python's ``bin`` first on PATH, one torch thread per process.

    Guides start several processes at once (parties, a server and a client);
    with torch's default of one thread per core each, they oversubscribe a
    2-core machine and run many times slower. A caller's own setting wins.
    """
    env = dict(os.environ)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("OMP_NUM_THREADS", "1")
    env.pop("PYTEST_CURRENT_TEST", None)
    return env


def _live_members(pgid: int) -> list[tuple[int, str]]:
    """Processes of group ``pgid`` that are still running (zombies excluded), with their command lines."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[2]) != pgid or fields[0] == "Z":
                continue
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except (OSError, ValueError, IndexError):
            continue
        found.append((int(entry.name), cmd))
    return found


def _kill_group(pgid: int, grace: float = 5.0) -> None:
    """SIGTERM the group, then SIGKILL whatever outlives ``grace`` seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 2.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _live_members(pgid):
                return
            time.sleep(0.1)


class _PythonWorker:
    """One Python process per document: blocks are sent to it and run in one namespace."""

    def __init__(self, python: str, workdir: Path, env: dict[str, str], log: Path) -> None:
        self._replies, reply_w = os.pipe()
        self._log = open(log, "ab")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [python, str(Path(__file__).resolve()), "--worker", str(reply_w)],
            cwd=workdir, env=env, stdin=subprocess.PIPE, stdout=self._log, stderr=subprocess.STDOUT,
            pass_fds=(reply_w,), start_new_session=True)
        os.close(reply_w)

    def run(self, block: Block, timeout: float) -> tuple[str | None, float]:
        """Run one block: (None on success, else the reason ("raised", "timed out..."); CPU seconds)."""
        assert self.proc.stdin is not None
        # pad so that tracebacks name the Markdown file's own line numbers
        message = {"code": "\n" * block.line + block.code, "filename": str(block.doc)}
        try:
            self.proc.stdin.write((json.dumps(message) + "\n").encode())
            self.proc.stdin.flush()
        except BrokenPipeError:
            return f"the Python worker had exited (status {self.proc.poll()})", 0.0
        ready, _, _ = select.select([self._replies], [], [], timeout)
        if not ready:
            _kill_group(self.proc.pid, grace=1.0)
            return f"timed out after {timeout:.0f} s (the Python worker was killed)", 0.0
        reply = os.read(self._replies, 64).decode().split()
        if not reply:
            return f"the Python worker died (status {self.proc.wait()})", 0.0
        cpu = float(reply[1])
        return (None, cpu) if reply[0] == "ok" else ("raised (traceback below)", cpu)

    def close(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except BrokenPipeError:
                pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        _kill_group(self.proc.pid, grace=2.0)
        self.proc.wait()
        os.close(self._replies)
        self._log.close()


def run_document(path: Path, *, repo: Path, python: str = sys.executable, block_timeout: float = 240.0,
                 workdir: Path | None = None) -> DocumentReport:
    """Run every block of ``path`` in order; raises DocsError naming the first failure.

    ``workdir`` (default: a fresh temporary folder) becomes a checkout view of
    ``repo``; the log of everything the blocks printed is in ``workdir/docs-test.log``.
    """
    blocks = parse(path, relative_to=repo)
    own_tmp = workdir is None
    if workdir is None:
        workdir = Path(tempfile.mkdtemp(prefix="docs-test-"))
    workdir.mkdir(parents=True, exist_ok=True)
    checkout_view(repo, workdir)
    log = workdir / "docs-test.log"
    env = environment(Path(python).parent)
    report = DocumentReport(blocks[0].doc if blocks else path)
    worker: _PythonWorker | None = None
    groups: list[int] = []
    started = time.monotonic()
    failure: str | None = None
    try:
        for block in blocks:
            if block.kind in OUTPUT_KINDS:
                report.results.append(BlockResult(block, "output"))
                continue
            if block.skip is not None:
                report.results.append(BlockResult(block, "skipped"))
                continue
            offset = log.stat().st_size if log.exists() else 0
            with open(log, "ab") as fh:
                fh.write(f"\n===== {block.where} ({block.kind}) =====\n".encode())
            t0 = time.monotonic()
            if block.kind == "python":
                if worker is None:
                    worker = _PythonWorker(python, workdir, env, log)
                problem, cpu = worker.run(block, block_timeout)
            else:
                before = _children_cpu()
                problem = _run_bash(block, workdir, env, log, block_timeout, groups)
                cpu = _children_cpu() - before
            if problem is not None:
                failure = f"{block.where}: {block.kind} block {problem}\n--- output ---\n{_tail(log, offset)}"
                break
            report.results.append(BlockResult(block, "passed", time.monotonic() - t0, cpu))
    finally:
        if worker is not None:
            worker.close()
        left = [(pgid, pid, cmd) for pgid in groups for pid, cmd in _live_members(pgid)]
        for pgid in groups:
            _kill_group(pgid)
        if own_tmp and failure is None and not left:
            shutil.rmtree(workdir, ignore_errors=True)
    report.seconds = time.monotonic() - started
    if failure is None and left:
        failure = (f"{report.doc}: processes started in the background were still running when the document "
                   "ended (a later block must stop them); killed:\n"
                   + "\n".join(f"  pid {pid}: {cmd}" for _, pid, cmd in left))
    if failure is not None:
        where = f"\n(working folder kept for a look: {workdir})" if own_tmp else ""
        raise DocsError(failure + where)
    return report


def _run_bash(block: Block, workdir: Path, env: dict[str, str], log: Path, timeout: float,
              groups: list[int]) -> str | None:
    with open(log, "ab") as fh:
        proc = subprocess.Popen(["bash", "-c", "set -eo pipefail\n" + block.code], cwd=workdir, env=env,
                                stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)
    groups.append(proc.pid)  # its own session: background jobs stay in this group
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc.pid, grace=1.0)
        proc.wait()
        return f"timed out after {timeout:.0f} s (its processes were killed)"
    return None if code == 0 else f"exited with status {code}"


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _own_and_children_cpu() -> float:
    return sum(u.ru_utime + u.ru_stime for u in (resource.getrusage(resource.RUSAGE_SELF),
                                                 resource.getrusage(resource.RUSAGE_CHILDREN)))


def _tail(log: Path, offset: int, limit: int = 6000) -> str:
    with open(log, "rb") as fh:
        fh.seek(offset)
        text = fh.read().decode(errors="replace")
    return text if len(text) <= limit else "...\n" + text[-limit:]


def _worker(reply_fd: int) -> None:
    """The document's Python process: read blocks from stdin, run each, answer ok/error on ``reply_fd``."""
    # run blocks as `python` in this folder would: the working folder first on sys.path, not tests/
    sys.path[0] = ""
    sys.argv = [""]
    namespace: dict[str, object] = {"__name__": "__main__", "__builtins__": __builtins__}
    for line in sys.stdin:
        message = json.loads(line)
        ok, cpu = True, _own_and_children_cpu()
        try:
            exec(compile(message["code"], message["filename"], "exec"), namespace)  # noqa: S102
        except BaseException as exc:  # report every failure, SystemExit included, and go on answering
            # the block's own frames only: the first one is this function's exec
            traceback.print_exception(type(exc), exc, exc.__traceback__.tb_next if exc.__traceback__ else None)
            ok = False
        sys.stdout.flush()
        sys.stderr.flush()
        cpu = _own_and_children_cpu() - cpu
        os.write(reply_fd, f"{'ok' if ok else 'error'} {cpu:.2f}\n".encode())


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        _worker(int(sys.argv[2]))
    elif len(sys.argv) > 1:  # by hand: python tests/docs_runner.py docs/guides/serve.md
        root = Path(__file__).resolve().parent.parent
        for name in sys.argv[1:]:
            print(run_document(Path(name).resolve(), repo=root).summary())
    else:
        sys.exit("usage: python tests/docs_runner.py FILE.md...")
