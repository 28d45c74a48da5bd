"""The distributed mode end to end on the real broker: ``ingest --to-kafka`` + ``worker`` × 2 + ``attributor``
give the results of ``skyattr replay`` on the same archive (the golden file: 24 hourly runs of the bundled
archive), and keep giving them when a worker or the attributor is killed with SIGKILL."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from streamer.testing.synth import default_archive
from tests.broker import kafka_bootstrap
from tests.compare import VOLATILE, assert_close
from tests.faults import line_count, reach, wait_until
from tests.net import free_port, http_get

REPO = Path(__file__).resolve().parents[3]
GOLDEN = REPO / "tests" / "golden" / "default_replay.jsonl"


@pytest.fixture(scope="module")
def bootstrap() -> str:
    return kafka_bootstrap()


class Deployment:
    """One distributed deployment on its own topics and groups (so tests never see each other's records).

    Configured as a Kubernetes deployment is: what all roles share (the topics, each role's section) in one YAML
    file given to every role with --config (the chart's ConfigMap), what differs per pod in the environment
    (a worker's static membership id: ``SKYATTR_WORKER__INSTANCE``) and a few flags; so the golden results also
    show the three layers reach the roles."""

    def __init__(self, bootstrap: str, tmp: Path, partitions: int = 4) -> None:
        run = uuid.uuid4().hex[:8]
        self.bootstrap, self.tmp, self.partitions = bootstrap, tmp, partitions
        self.events, self.cursors = f"test.events.{run}", f"test.cursors.{run}"
        self.shards, self.state = f"test.shards.{run}", f"test.attributor.{run}"
        self.app_id, self.name = f"test-worker-{run}", f"test-attributor-{run}"
        self.tiers, self.alerts = f"test.tiers.{run}", f"test.alerts.{run}"
        self.procs: list[subprocess.Popen[str]] = []
        self.config = tmp / "skyattr.yaml"
        self.config.write_text(
            f"""kafka_topic_tiers: {self.tiers}
kafka_topic_alerts: {self.alerts}
topics: {{events: {self.events}, cursors: {self.cursors}, shards: {self.shards}, state: {self.state}}}
ingest:
  partitions: {partitions}
worker:
  app_id: {self.app_id}
  session_timeout: 8
attributor: {{name: {self.name}, gather_timeout: 120}}
"""
        )

    def _cli(self, *args: str, log: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        cmd = [
            sys.executable,
            "-m",
            "streamer",
            *args,
            "--config",
            str(self.config),
            "--kafka-bootstrap",
            self.bootstrap,
        ]
        out = (self.tmp / f"{log}.log").open("a")
        environ = {**os.environ, **(env or {})}
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, text=True, cwd=REPO, env=environ)
        self.procs.append(proc)
        return proc

    def ingest(
        self, *, wait: bool = True, batch_items: int = 500, speed: float | None = None, extra: tuple[str, ...] = ()
    ) -> subprocess.Popen[str]:
        pace = ("--speed", str(speed)) if speed else ()
        proc = self._cli(
            "ingest", str(default_archive()), "--to-kafka", "--interval", "3600", "--batch-items", str(batch_items),
            *pace, *extra, log="ingest",
        )  # fmt: skip
        if wait:
            assert proc.wait(300) == 0, self.log("ingest")
        return proc

    def worker(self, n: int, metrics_port: int | None = None, instance: str = "") -> subprocess.Popen[str]:
        extra = ("--metrics-port", str(metrics_port)) if metrics_port is not None else ()
        env = {"SKYATTR_WORKER__INSTANCE": instance} if instance else {}
        return self._cli("worker", *extra, log=f"worker{n}", env=env)

    def streaming(self) -> tuple[subprocess.Popen[str], dict[int, subprocess.Popen[str]]]:
        """The bundled archive written at 1,000x its event time (86 s, a run every 3.6 s) and two workers folding
        it as it comes: the setting of the fault tests, which act mid-stream."""
        ingest = self.ingest(wait=False, batch_items=10, speed=1000)
        wait_until(self.events_exist, 60, "the events topic")
        return ingest, {n: self.worker(n) for n in (1, 2)}

    def attributor(self, out: Path, *extra: str) -> subprocess.Popen[str]:
        return self._cli("attributor", "--out", str(out), *extra, log="attributor")

    def finish(self, proc: subprocess.Popen[str], timeout: float, workers: list[subprocess.Popen[str]]) -> None:
        """Wait for ``proc`` (the attributor) to exit 0; fail at once, with their logs, if a worker dies first."""
        deadline = time.monotonic() + timeout
        while proc.poll() is None:
            dead = [n for n, w in enumerate(workers, 1) if w.poll() is not None]
            if dead:
                pytest.fail(f"worker {dead[0]} exited:\n{self.log(f'worker{dead[0]}')}")
            if time.monotonic() > deadline:
                pytest.fail(f"attributor did not finish:\n{self.log('attributor')}\n{self.log('worker1')}")
            time.sleep(0.5)
        assert proc.returncode == 0, self.log("attributor")

    def events_exist(self) -> bool:
        import asyncio

        from streamer.sinks.kafka_topics import partitions_of

        return len(asyncio.run(partitions_of(self.bootstrap, self.events))) == self.partitions

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text()[-4000:]

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


def _stable(line: str) -> dict[str, Any]:
    message = json.loads(line)
    for key in VOLATILE:
        message.pop(key, None)
    return message


def _assert_golden(out: Path) -> None:
    got = [_stable(x) for x in out.read_text().splitlines()]
    want = [_stable(x) for x in GOLDEN.read_text().splitlines()]
    assert [(m["topic"], m["run"]) for m in got] == [(m["topic"], m["run"]) for m in want]
    for g, w in zip(got, want, strict=True):
        assert_close(g, w, f"{g['topic']}#{g['run']}")


def test_two_workers_and_the_attributor_give_the_single_process_results(bootstrap: str, tmp_path: Path) -> None:
    dep = Deployment(bootstrap, tmp_path)
    try:
        dep.ingest()
        ports = [free_port(), free_port()]
        workers = [dep.worker(1, metrics_port=ports[0]), dep.worker(2, metrics_port=ports[1])]
        out = tmp_path / "results.jsonl"
        dep.finish(dep.attributor(out, "--until-final"), 400, workers)
        _assert_golden(out)
        assert "24 runs published, 0 skipped, 0 incomplete" in dep.log("attributor")
        # each worker's endpoint: together they fold every partition, each folded to its end
        scraped = [_metrics(p) for p in ports]
        assert sum(m["skyattr_worker_assigned_partitions"] for m in scraped) == dep.partitions
        lags = {k: v for m in scraped for k, v in m.items() if k.startswith("skyattr_worker_consumer_lag")}
        assert len(lags) == dep.partitions, lags
        assert all(v <= 1 for v in lags.values()), f"caught up (1: the last commit marker): {lags}"
        # every run's shard from every partition; a partition that moved when the second worker joined is read
        # again from its committed offset and may publish a shard twice (the attributor keeps the first)
        assert sum(m["skyattr_worker_shards_total"] for m in scraped) >= 24 * dep.partitions
        assert all(m["skyattr_worker_in_recovery"] == 0 and m["skyattr_worker_refused_total"] == 0 for m in scraped)
        assert sum(m["skyattr_worker_events_total"] for m in scraped) > 10_000
        assert all(http_get(f"http://127.0.0.1:{p}/readyz") == (200, "ready\n") for p in ports)
    finally:
        dep.close()


def test_a_killed_worker_and_a_killed_attributor_lose_and_double_nothing(bootstrap: str, tmp_path: Path) -> None:
    """While the ingest is still writing (it writes the 24 h archive at 1,000x its event time, so for 86 s, a run
    every 3.6 s): the attributor is killed between runs once six results are seen, and restarted; then a worker
    that holds partitions is killed with SIGKILL and a new one started (it recovers the partitions it gets from the
    changelog alone: workers keep nothing on disk). Both kills are seen to land while the ingest still runs. The
    results are still the golden ones, each run once."""
    dep = Deployment(bootstrap, tmp_path)
    try:
        ingest, workers = dep.streaming()
        out = tmp_path / "results.jsonl"
        port = free_port()
        # three runs merged and measured at once: when it is killed, runs after the last one committed are in hand
        attributor = dep.attributor(out, "--metrics-port", str(port), "--pipeline", "3")
        reach(ingest, lambda: line_count(out) >= 6, 240, "six results")
        scraped = _metrics(port)
        assert scraped['skyattr_attributor_runs_total{outcome="ok"}'] >= 5
        assert scraped['skyattr_attributor_runs_total{outcome="incomplete"}'] == 0
        assert scraped["skyattr_attributor_gather_seconds_count"] >= 5
        assert 0.999 < sum(v for k, v in scraped.items() if k.startswith("skyattr_tier_share") and "full" in k) < 1.001
        attributor.kill()
        attributor.wait(30)
        # a worker restarted on an empty disk reads its partitions' whole changelog before its first shard: on a
        # loaded 2-core machine that took more than the default gather timeout (120 s) once, and the run waiting
        # for it was given up as incomplete (correctly, but not what this test is about)
        final = dep.attributor(out, "--until-final", "--gather-timeout", "600")
        busy = max(workers, key=lambda n: dep.log(f"worker{n}").count("published"))
        assert ingest.poll() is None, "the worker is killed mid-stream"
        workers[busy].kill()
        workers.pop(busy).wait(30)
        port3 = free_port()
        workers[3] = dep.worker(3, metrics_port=port3)
        # not ready until the group assigns it partitions and their state is read back from the changelog
        replies = _readiness_until_ready(port3, 240)
        assert replies[0] == (503, "not ready: waiting for the consumer group to assign partitions\n"), replies
        # (ready once; a later rebalance may put it back in recovery for a while: it must come out of it)
        wait_until(lambda: _metrics(port3)["skyattr_worker_in_recovery"] == 0, 240, "the end of recovery")
        assert ingest.wait(300) == 0, dep.log("ingest")
        dep.finish(final, 400, list(workers.values()))
        _assert_golden(out)
        # a rerun of the finished job (a Kubernetes Job retried) ends at once and publishes nothing
        dep.finish(dep.attributor(out, "--until-final"), 120, list(workers.values()))
        assert "already done: nothing to attribute" in dep.log("attributor")
        _assert_golden(out)
        last = max(json.loads(line)["as_of_us"] for line in out.read_text().splitlines())
        whole_log = (tmp_path / "attributor.log").read_text()
        resumed = re.findall(r"resumed after the run at (\d+); (\d+) runs published", whole_log)
        (at, runs), (at_end, none) = [(int(a), int(n)) for a, n in resumed]
        assert at < last and runs + 6 >= 24 and (at_end, none) == (last, 0), resumed
    finally:
        dep.close()


def test_a_worker_paused_past_its_session_commits_nothing_more(bootstrap: str, tmp_path: Path) -> None:
    """A worker stopped (SIGSTOP) mid-stream while it holds partitions, for longer than its session timeout (8 s):
    the group gives its partitions to the other worker, whose producers for them fence its own; continued
    (SIGCONT), it can commit nothing more for them and joins the group again. The results are still the golden
    ones, each run once, and both workers are alive at the end."""
    dep = Deployment(bootstrap, tmp_path)
    try:
        ingest, workers = dep.streaming()
        out = tmp_path / "results.jsonl"
        final = dep.attributor(out, "--until-final", "--gather-timeout", "600")
        reach(ingest, lambda: line_count(out) >= 4, 240, "four results")
        paused = max(workers, key=lambda n: dep.log(f"worker{n}").count("published"))
        other = 3 - paused

        def taken() -> int:  # partitions the other worker read back so far (its whole log)
            return (tmp_path / f"worker{other}.log").read_text().count("changelog records read back")

        before = taken()
        workers[paused].send_signal(signal.SIGSTOP)
        try:
            # the other worker is given every partition (it reads each back: four more lines at least)
            wait_until(lambda: taken() >= before + 4, 120, "the hand-over")
            assert ingest.poll() is None, "the hand-over happens mid-stream"
        finally:
            workers[paused].send_signal(signal.SIGCONT)
        assert ingest.wait(300) == 0, dep.log("ingest")
        dep.finish(final, 400, list(workers.values()))
        _assert_golden(out)
        assert all(w.poll() is None for w in workers.values()), "both workers are still running"
        for n in workers:  # a fence met is one line (when the paused worker was mid-transaction), never a traceback
            assert "Traceback" not in (tmp_path / f"worker{n}.log").read_text(), dep.log(f"worker{n}")
    finally:
        dep.close()


def test_a_worker_restarted_with_its_instance_id_takes_its_partitions_back_without_a_rebalance(
    bootstrap: str, tmp_path: Path
) -> None:
    """Static membership (the chart gives each worker pod its name as ``SKYATTR_WORKER__INSTANCE``): a worker killed
    (SIGKILL) mid-stream and started again under the same id within its session timeout (8 s) is given back the
    partitions it held, and the other worker keeps its own throughout: it reads nothing back after the restart (no
    rebalance moved anything). The results are still the golden ones."""
    dep = Deployment(bootstrap, tmp_path)
    try:
        ingest = dep.ingest(wait=False, batch_items=10, speed=1000)
        wait_until(dep.events_exist, 60, "the events topic")
        ports = {n: free_port() for n in (1, 2, 3)}
        workers = {n: dep.worker(n, metrics_port=ports[n], instance=f"pod-{n}") for n in (1, 2)}

        def held(port: int) -> frozenset[int]:
            try:
                names = _metrics(port)
            except OSError:  # not serving yet
                return frozenset()
            return frozenset(int(k.split('"')[1]) for k in names if k.startswith("skyattr_worker_consumer_lag{"))

        seen: list[tuple[frozenset[int], frozenset[int]]] = []

        def settled() -> bool:  # both hold some, together all four, the same at three scrapes in a row
            seen.append((held(ports[1]), held(ports[2])))
            a, b = seen[-1]
            steady = len(seen) >= 3 and seen[-3] == seen[-2] == seen[-1]
            return steady and bool(a) and bool(b) and a | b == set(range(4))

        wait_until(settled, 120, "two workers sharing the four partitions")
        first, second = seen[-1]

        def read_back(n: int) -> int:  # partitions worker n read back so far (its whole log)
            return (tmp_path / f"worker{n}.log").read_text().count("changelog records read back")

        before = read_back(1)
        workers[2].kill()  # the member that joined second (the first leads the group)
        workers.pop(2).wait(30)
        workers[3] = dep.worker(3, metrics_port=ports[3], instance="pod-2")  # the same pod, started again
        wait_until(lambda: held(ports[3]) == second, 60, "the restarted worker holding its partitions again")
        assert ingest.poll() is None, "the restart happens mid-stream"
        assert held(ports[1]) == first and read_back(1) == before, "the other worker's partitions never moved"
        out = tmp_path / "results.jsonl"
        final = dep.attributor(out, "--until-final", "--gather-timeout", "600")
        assert ingest.wait(300) == 0, dep.log("ingest")
        dep.finish(final, 400, list(workers.values()))
        _assert_golden(out)
        assert read_back(1) == before, "nor later"
    finally:
        dep.close()


def _metrics(port: int) -> dict[str, float]:
    """The samples of a role's /metrics, by name with labels (the real prometheus-client exposition)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out


def _readiness_until_ready(port: int, timeout: float) -> list[tuple[int, str]]:
    """Every distinct /readyz reply of a starting worker, in order, until it is ready."""
    replies: list[tuple[int, str]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            reply = http_get(f"http://127.0.0.1:{port}/readyz")
        except OSError:  # not listening yet
            time.sleep(0.05)
            continue
        if not replies or replies[-1] != reply:
            replies.append(reply)
        if reply[0] == 200:
            return replies
        time.sleep(0.1)
    raise AssertionError(f"worker not ready after {timeout} s: {replies}")
