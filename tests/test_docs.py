"""The docs run as written: every code block of README.md and docs/guides/*.md.

``test_document_runs`` executes each document with :mod:`docs_runner`
(```python blocks in one namespace per document, ```bash blocks through bash,
in a temporary folder that looks like a checkout). Blocks marked
``<!-- docs-test: skip (REASON) -->`` are not run: each one is reported as a
skipped ``test_block_not_run`` item with its reason, and ``SKIPPED`` below is
the complete list, so a new skip shows up in review. The guides bind the
fixed ports they document (8750 for HE, 29500 for MPC) while they run.

Run just these: ``bash scripts/in-env.sh python -m pytest tests/test_docs.py``;
one document by hand: ``bash scripts/in-env.sh python tests/docs_runner.py docs/guides/serve.md``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from docs_runner import DocsError, parse, run_document

ROOT = Path(__file__).resolve().parent.parent
INDEX = ROOT / "docs" / "guides" / "README.md"  # the guides' index and how to write one: no code to run
GUIDES = sorted(p for p in (ROOT / "docs" / "guides").glob("*.md") if p != INDEX)
DOCUMENTS = [ROOT / "README.md", *GUIDES]

# (document, first words of the skipped block): every block the test does not run
SKIPPED = {
    ("README.md", "bash scripts/in-env.sh secure-infer demo"),
    ("README.md", "SECURE_INFER_TORCH_INDEX=https://download.pytorch.org/whl/cpu bash scripts/in-env.sh"),
    ("README.md", "secure-infer party --rank 0 --world-size 2 --master 10.0.0.1:29500"),
    ("docs/guides/benchmark.md", "secure-infer bench --quick --out bench-report"),
    ("docs/guides/attack.md", "secure-infer attack --backends none --out attack-report"),
    ("docs/guides/federated.md", "secure-infer fl --quick --out fl-report"),
    ("docs/guides/pate.md", "secure-infer pate --out pate-report"),
    ("docs/guides/scale-out.md", "secure-infer score cryptonets --repeat 20 --cluster HEAD:6379 --out score-out"),
    ("docs/guides/serve.md", "secure-infer certs pki --host 10.0.0.5 --client alice"),
}


def _name(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _skipped_blocks() -> list:
    try:
        return [b for doc in DOCUMENTS for b in parse(doc, relative_to=ROOT) if b.skip is not None]
    except DocsError:  # a malformed document: test_every_document_parses... says where
        return []


def test_every_document_parses_and_the_guides_are_linked() -> None:
    assert GUIDES, "docs/guides/ has no guides"
    for doc in DOCUMENTS:
        blocks = parse(doc, relative_to=ROOT)
        assert any(b.kind in ("python", "bash") and b.skip is None for b in blocks), f"{_name(doc)} runs nothing"
    parse(INDEX, relative_to=ROOT)
    readme, index = (ROOT / "README.md").read_text(), INDEX.read_text()
    for guide in GUIDES:
        assert f"({_name(guide)})" in readme, f"README.md does not link {_name(guide)}"
        assert f"({guide.name})" in index, f"{_name(INDEX)} does not link {guide.name}"


def test_skipped_blocks_are_the_known_few() -> None:
    found = {(str(b.doc), " ".join(b.code.split())) for b in _skipped_blocks()}
    unexpected = [f"{doc}: {code[:80]}" for doc, code in found
                  if not any(doc == d and code.startswith(start) for d, start in SKIPPED)]
    missing = [f"{d}: {s}" for d, s in SKIPPED if not any(doc == d and code.startswith(s) for doc, code in found)]
    assert not unexpected, f"blocks newly marked skip (run them, or add them to SKIPPED): {unexpected}"
    assert not missing, f"SKIPPED lists blocks that are no longer skipped: {missing}"


@pytest.mark.parametrize("block", _skipped_blocks(), ids=lambda b: b.where)
def test_block_not_run(block) -> None:
    pytest.skip(f"docs block {block.where} not run: {block.skip}")


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.timeout(420)
@pytest.mark.parametrize("doc", DOCUMENTS, ids=_name)
def test_document_runs(doc: Path) -> None:
    report = run_document(doc, repo=ROOT)
    print(report.summary())
    assert report.count("passed") > 0


# -- the runner itself, on small documents (fast) -----------------------------------------------

def _write(tmp_path: Path, text: str) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir(exist_ok=True)
    doc = repo / "doc.md"
    doc.write_text(textwrap.dedent(text))
    return doc


def test_runner_shares_one_namespace_and_folder_between_python_and_bash(tmp_path: Path) -> None:
    doc = _write(tmp_path, """\
        ```python
        value = 6 * 7
        open("from-python.txt", "w").write(str(value))
        ```

        ```bash
        test "$(cat from-python.txt)" = 42 && echo 43 > from-bash.txt
        ```

        ```text
        this is output, never run
        ```

        <!-- docs-test: skip (would fail) -->
        ```bash
        exit 1
        ```

        ```python
        assert value == 42 and open("from-bash.txt").read().strip() == "43"
        ```
        """)
    report = run_document(doc, repo=doc.parent)
    assert (report.count("passed"), report.count("skipped"), report.count("output")) == (3, 1, 1)


def test_runner_names_the_failing_line(tmp_path: Path) -> None:
    doc = _write(tmp_path, """\
        Some prose.

        ```python
        x = 1
        y = x.no_such_attribute
        ```
        """)
    with pytest.raises(DocsError) as info:
        run_document(doc, repo=doc.parent, workdir=tmp_path / "work")
    message = str(info.value)
    assert "doc.md:3: python block raised" in message and "AttributeError" in message
    assert 'File "doc.md", line 5' in message  # the Markdown file's own line


def test_runner_fails_a_failing_command(tmp_path: Path) -> None:
    doc = _write(tmp_path, """\
        ```bash
        false | cat
        echo not reached
        ```
        """)
    with pytest.raises(DocsError, match=r"doc.md:1: bash block exited with status 1") as info:
        run_document(doc, repo=doc.parent)
    kept = Path(str(info.value).rsplit("working folder kept for a look: ", 1)[1].strip().rstrip(")"))
    assert (kept / "docs-test.log").is_file()  # what the blocks printed, for the one who reads the failure
    shutil.rmtree(kept)


def test_runner_stops_a_background_process_that_the_document_forgot(tmp_path: Path) -> None:
    doc = _write(tmp_path, """\
        ```bash
        sleep 300 > sleep.log 2>&1 &
        echo $! > sleep.pid
        ```
        """)
    started = time.monotonic()
    with pytest.raises(DocsError, match="still running when the document ended") as info:
        run_document(doc, repo=doc.parent, workdir=tmp_path / "work")
    assert "sleep 300" in str(info.value) and time.monotonic() - started < 60
    pid = int((tmp_path / "work" / "sleep.pid").read_text())
    stat = Path(f"/proc/{pid}/stat")
    assert not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"  # gone (or a zombie)


def test_runner_accepts_a_background_process_the_document_stops(tmp_path: Path) -> None:
    doc = _write(tmp_path, """\
        ```bash
        sleep 300 > sleep.log 2>&1 &
        echo $! > sleep.pid
        ```

        ```bash
        kill "$(cat sleep.pid)"
        ```
        """)
    assert run_document(doc, repo=doc.parent).count("passed") == 2


def test_runner_times_out_a_hung_block(tmp_path: Path) -> None:
    doc = _write(tmp_path, """\
        ```python
        import time
        time.sleep(300)
        ```
        """)
    started = time.monotonic()
    with pytest.raises(DocsError, match="timed out after 2 s"):
        run_document(doc, repo=doc.parent, block_timeout=2, workdir=tmp_path / "work")
    assert time.monotonic() - started < 60


@pytest.mark.parametrize("text, error", [
    ("```\nls\n```\n", "info string ''"),
    ("```sh\nls\n```\n", "info string 'sh'"),
    ("<!-- docs-test: skip -->\n```bash\nls\n```\n", "unreadable docs-test marker"),
    ("<!-- docs-test: skip (why) -->\n\nprose\n```bash\nls\n```\n", "right before the block"),
    ("<!-- docs-test: skip (why) -->\n```text\nout\n```\n", "never runs"),
    ("```python\nx = 1\n", "never closed"),
])
def test_runner_refuses_malformed_documents(tmp_path: Path, text: str, error: str) -> None:
    doc = _write(tmp_path, text)
    with pytest.raises(DocsError, match=error):
        parse(doc)


def test_runner_script_runs_a_document_by_hand(tmp_path: Path) -> None:
    doc = _write(tmp_path, "```bash\necho hello\n```\n")
    done = subprocess.run([sys.executable, str(Path(__file__).with_name("docs_runner.py")), str(doc)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "1 blocks ran" in done.stdout, done.stdout + done.stderr
