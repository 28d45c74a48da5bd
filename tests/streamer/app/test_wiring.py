"""The one wiring of live and replay (streamer.app.wiring.Run): its checkpoint error policy, on a real archive."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from streamer.app.replay import replay
from streamer.app.wiring import Deliver
from tests.streamer.app.test_replay import _same_snapshot


class _Heard(Deliver):
    """An outlet that remembers what each checkpoint did (its info, or None for a failed write)."""

    def __init__(self) -> None:
        super().__init__()
        self.checkpoints: list[dict[str, Any] | None] = []

    def checkpointed(self, info: dict[str, Any] | None) -> None:
        self.checkpoints.append(info)


def test_a_checkpoint_that_cannot_be_written_is_counted_and_the_run_goes_on(tmp_path: Path, sample_dir: Path) -> None:
    """The directory turns into a file between items 30 and 80 (every write fails: OSError), then back: the
    replay neither stops nor loses an item, the failed writes are reported to the outlet and counted, and the
    checkpoint written at the end is a finished one a resume starts after."""
    archive = sample_dir / "frames.bin.zst"
    ckpt = tmp_path / "ckpt"
    outlet = _Heard()

    def break_and_mend(source: Any, _pipe: Any) -> None:
        if source.position == 30:
            shutil.rmtree(ckpt)
            ckpt.write_bytes(b"")  # a file where the directory was: the next writes fail
        elif source.position == 80:
            ckpt.unlink()
            ckpt.mkdir()

    result = replay(
        archive, checkpoint_dir=ckpt, checkpoint_every_items=10, outlet=outlet, on_progress=break_and_mend,
        progress_every=1,
    )  # fmt: skip
    assert not result.interrupted and result.position == 150
    failed = [i for i, info in enumerate(outlet.checkpoints) if info is None]
    assert len(failed) == 5, outlet.checkpoints  # the writes at items 30, 40, 50, 60 and 70
    assert outlet.checkpoints[-1] is not None and outlet.checkpoints[-1]["finished"]
    _same_snapshot(result.state, replay(archive).state)
    again = replay(archive, checkpoint_dir=ckpt)
    assert again.resumed_from == 150
    _same_snapshot(again.state, result.state)
