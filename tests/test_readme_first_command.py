"""The README's first command shows what the README says it shows.

The set-up block's first command ends in ``skyattr replay``; this runs that replay exactly (no flags: the bundled
archive, the default interval) and checks the output block the README quotes against the last lines of its
stdout, and the figures the prose around it states (runs, accounts, agents) against the output and the archive.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNTIME = re.compile(r"  \d+\.\d\ds$")  # a run line ends with its run time, which varies


def _readme() -> str:
    return (ROOT / "README.md").read_text(encoding="utf-8")


def _quoted_output(readme: str) -> list[str]:
    """The fenced block after "The last lines of `skyattr replay`"."""
    after = readme.split("The last lines of `skyattr replay`", 1)[1]
    block = after.split("```\n", 2)[1]
    return block.rstrip("\n").splitlines()


def test_the_first_command_is_the_bundled_replay() -> None:
    setup = _readme().split("## Set up and run", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [line for line in setup.splitlines() if line and not line.startswith("#")]
    assert commands[0].endswith("&& .venv/bin/skyattr replay"), commands[0]


def test_the_readme_quotes_the_last_lines_of_the_first_command(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "streamer", "replay"], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    quoted = _quoted_output(_readme())
    got = proc.stdout.rstrip("\n").splitlines()[-len(quoted) :]
    assert [RUNTIME.sub("", line) for line in got] == [RUNTIME.sub("", line) for line in quoted]
    # the prose: 24 h at the default 300 s interval is 288 runs; 1,280 of the archive's 2,000 accounts are agents
    readme = _readme()
    assert "it makes 288 runs" in readme and "24 h" in readme
    runs = [line for line in proc.stdout.splitlines() if line.startswith("run ") and "@" in line]
    assert len(runs) == 288 and runs[-1].startswith("run  288 @")
    assert any(line.startswith("run 288 · ") and "1,280 agents" in line for line in got), "the table names them"
    assert "of its 2,000 accounts, 1,280 act" in readme
    summary = proc.stderr.strip().splitlines()[-1]
    assert "288 runs in all" in summary, summary


def test_the_bundled_archive_holds_the_accounts_the_readme_counts() -> None:
    from streamer.sources.archive import ReadReport, read_archive
    from streamer.testing.synth import default_archive, source_name

    report = ReadReport()
    next(iter(read_archive(default_archive(), report)))
    assert report.files[0].header["source"] == source_name(2000, 24, 0), "synthesised from 2,000 accounts, 24 h"
    proc = subprocess.run(
        [sys.executable, "-m", "streamer", "events", str(default_archive())], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    actors = {json.loads(line)["did"] for line in proc.stdout.splitlines()}
    assert len(actors) == 1280
