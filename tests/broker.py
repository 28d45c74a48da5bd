"""The Kafka broker the integration tests use: given by SKYATTR_KAFKA_BOOTSTRAP (CI starts one with
ops/kafka/start.sh). Without it the tests skip, unless SKYATTR_REQUIRE_KAFKA=1 makes that a failure."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
KAFKA_OPS = REPO / "ops" / "kafka"
SCRIPTS_PORT = int(os.environ.get("SKYATTR_KAFKA_PORT", "9092"))  # where ops/kafka/start.sh listens (default 9092)
SCRIPTS_BOOTSTRAP = f"127.0.0.1:{SCRIPTS_PORT}"


def kafka_bootstrap() -> str:
    servers = os.environ.get("SKYATTR_KAFKA_BOOTSTRAP", "").strip()
    if servers:
        return servers
    if os.environ.get("SKYATTR_REQUIRE_KAFKA") == "1":
        pytest.fail("SKYATTR_REQUIRE_KAFKA=1 but SKYATTR_KAFKA_BOOTSTRAP is not set (run ops/kafka/start.sh first)")
    pytest.skip("SKYATTR_KAFKA_BOOTSTRAP not set: no Kafka broker (start one with ops/kafka/start.sh)")


def _run_script(name: str) -> None:
    proc = subprocess.run(
        ["bash", str(KAFKA_OPS / name)], capture_output=True, text=True, timeout=180, check=False, cwd=REPO
    )
    assert proc.returncode == 0, f"{name} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"


class ScriptBroker:
    """The broker that ops/kafka/start.sh runs (on 9092, or SKYATTR_KAFKA_PORT), stopped and started through the
    scripts.

    The pid file and the process's command line are read here too, so that the test can tell "stopped" from "the
    script thought nothing was running" and never leaves the shared broker down or orphaned (no pid file)."""

    def __init__(self) -> None:
        out = subprocess.run(
            [
                "bash",
                "-c",
                f'source "{KAFKA_OPS}/_common.sh" && printf "%s\\n%s" "$KAFKA_PID_FILE" "$KAFKA_PROPS_FILE"',
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
        self.pid_file, self.props_file = Path(out[0]), out[1]
        self.pid = self._live_pid()

    def _live_pid(self) -> int | None:
        """The pid in the pid file if that process is our kafka.Kafka (same check as the scripts, via /proc)."""
        try:
            pid = int(self.pid_file.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return None
        return pid if b"kafka.Kafka" in cmdline and self.props_file.encode() in cmdline else None

    def _alive(self, pid: int) -> bool:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return False
        return state != "Z"

    def stop(self) -> None:
        pid = self.pid
        assert pid is not None
        _run_script("stop.sh")
        deadline = time.monotonic() + 5
        while self._alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if self._alive(pid):
            # stop.sh did not recognise its own broker (see the warning); stop that very process as stop.sh would.
            warnings.warn(
                f"ops/kafka/stop.sh left broker pid {pid} running (its pid check failed); stopping it by pid",
                stacklevel=1,
            )
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 30
            while self._alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if self._alive(pid):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while _port_open(SCRIPTS_PORT) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _port_open(SCRIPTS_PORT), f"port {SCRIPTS_PORT} still accepts connections after stopping the broker"

    def ensure_running(self) -> None:
        if self.pid is not None and self._alive(self.pid):
            if self._live_pid() is None:  # stop.sh removed the pid file of a broker it failed to stop: restore it
                self.pid_file.write_text(f"{self.pid}\n")
            return
        _run_script("start.sh")
        self.pid = self._live_pid()


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


# ---------------------------------------------------------------------------------------------------- tests
