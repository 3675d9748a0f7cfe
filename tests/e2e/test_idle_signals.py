"""The sampler on real files and processes, and the trio watch loop end to end.

Touching a file in a temporary "input" directory is a keystroke; a Python busy loop started here
(outside any sandbox) is owner load, unless the test declares its CPU-seconds as the guests'.
Bounds are generous: other tests share these CPUs.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psutil
import pytest
import trio

from node.owner import signals as idle_signals
from node.owner.config import PolicyConfig, parse_window
from node.owner.policy import Decision, IdlePolicy
from node.owner.signals import PolicyWatch, Sampler, input_files

# (alone: the owner's CPU load is the machine's, so another test's load would be the owner's)
pytestmark = pytest.mark.alone


def quiet_config(input_dir: Path, **overrides: Any) -> PolicyConfig:
    """Small thresholds; CPU load never matters (other tests load these machines)."""
    values: dict[str, Any] = {
        "input_paths": (str(input_dir),),
        "watch_ttys": False,
        "start_idle": 0.5,
        "continue_idle": 0.5,
        "low_load_for": 0.0,
        "background_load": 1.0,
        "high_load": 1.0,
        "high_load_for": 3600.0,
        "min_free_memory": 0,
        "max_temperature": None,
    }
    values.update(overrides)
    return PolicyConfig(**values)


def age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_touching_an_input_file_is_owner_input(tmp_path: Path) -> None:
    inputs = tmp_path / "input"
    inputs.mkdir()
    sampler = Sampler(quiet_config(inputs))
    assert sampler.sample().input_idle is None  # no input devices: headless, no owner input
    (inputs / "event0").touch()
    (inputs / "by-id").mkdir()  # directories (udev's by-id/, by-path/) are not devices
    age(inputs / "event0", 100)
    s = sampler.sample()
    assert s.input_idle == pytest.approx(100, abs=2) and s.input_sources == 1
    (inputs / "event0").touch()  # a keystroke
    s = sampler.sample()
    assert s.input_idle is not None and s.input_idle < 1.0
    age(inputs / "event0", 100)
    (inputs / "mouse1").touch()  # a new device counts at once
    s = sampler.sample()
    assert s.input_idle is not None and s.input_idle < 1.0 and s.input_sources == 2


def test_input_paths_take_globs_and_files(tmp_path: Path) -> None:
    for name in ("event0", "event1", "js0"):
        (tmp_path / name).touch()
    single = tmp_path / "mice"
    single.touch()
    found = input_files([str(tmp_path / "event*"), str(single), str(tmp_path / "missing")])
    assert sorted(Path(f).name for f in found) == ["event0", "event1", "mice"]


def test_ttys_of_logged_in_users_count_when_watched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    master, slave = os.openpty()
    try:
        tty = os.ttyname(slave)
        fake = [SimpleNamespace(terminal=tty.removeprefix("/dev/")), SimpleNamespace(terminal=":0")]
        monkeypatch.setattr(psutil, "users", lambda: fake)
        assert idle_signals.user_ttys() == [tty]
        watched = Sampler(quiet_config(tmp_path, watch_ttys=True)).sample()
        unwatched = Sampler(quiet_config(tmp_path, watch_ttys=False)).sample()
        assert watched.input_sources == 1 and watched.input_idle is not None
        assert unwatched.input_sources == 0 and unwatched.input_idle is None
    finally:
        os.close(master)
        os.close(slave)


def test_battery_temperature_memory_and_hours(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = Sampler(quiet_config(tmp_path)).sample()
    assert real.memory_available > 0
    assert real.on_battery in (None, True, False)
    assert real.temperature is None or 1 <= real.temperature <= 150

    def battery() -> Any:
        return SimpleNamespace(percent=50, secsleft=100, power_plugged=False)

    def temperatures() -> Any:
        reading = SimpleNamespace
        return {
            "coretemp": [reading(current=55.0), reading(current=61.5)],
            "bogus": [reading(current=0.0), reading(current=255.0)],
        }

    monkeypatch.setattr(psutil, "sensors_battery", battery)
    monkeypatch.setattr(psutil, "sensors_temperatures", temperatures)
    saturday_noon = dt.datetime(2024, 1, 6, 12, 0)
    config = quiet_config(tmp_path, schedule=(parse_window("Mon-Fri 18:00-08:00"),))
    s = Sampler(config, local_time=lambda: saturday_noon).sample()
    assert s.on_battery is True and s.temperature == 61.5 and s.in_schedule is False


def test_guest_counter_faults_do_not_break_sampling(tmp_path: Path) -> None:
    readings = iter([100.0, 50.0])  # a counter that went down (a job ended)
    sampler = Sampler(quiet_config(tmp_path, load_interval=0.1), guest_cpu=lambda: next(readings))
    time.sleep(0.15)
    s = sampler.sample()
    assert s.guest_load == 0.0 and s.owner_load == s.host_load and s.load_window > 0

    def broken() -> float:
        raise OSError("cgroup gone")

    s = Sampler(quiet_config(tmp_path, load_interval=0.1), guest_cpu=broken).sample(
        time.monotonic() + 0.2
    )
    assert s.guest_load == 0.0


BURNER = "import time\nend = time.monotonic() + 30\nwhile time.monotonic() < end:\n    pass\n"


def test_a_cpu_burner_is_owner_load_unless_it_is_the_guest(tmp_path: Path) -> None:
    burner = subprocess.Popen([sys.executable, "-c", BURNER])
    try:
        proc = psutil.Process(burner.pid)

        def burner_cpu() -> float:
            t = proc.cpu_times()
            return t.user + t.system

        config = quiet_config(tmp_path, load_interval=1.0)
        as_owner = Sampler(config)
        as_guest = Sampler(config, guest_cpu=burner_cpu)
        time.sleep(2.0)
        owner_view, guest_view = as_owner.sample(), as_guest.sample()
    finally:
        burner.kill()
        burner.wait()
    share = 1 / (psutil.cpu_count() or 1)  # one busy core, as a fraction of the machine
    # The burner shows in the machine's load; declared as the guest, it is subtracted exactly.
    assert owner_view.guest_load == 0.0
    assert owner_view.owner_load >= 0.2 * share
    assert 0.2 * share <= guest_view.guest_load <= share + 0.05  # less if the CPUs are shared
    assert guest_view.owner_load == pytest.approx(
        guest_view.host_load - guest_view.guest_load, abs=1e-9
    )
    assert owner_view.owner_load - guest_view.owner_load == pytest.approx(
        guest_view.guest_load, abs=0.1
    )
    assert owner_view.load_window == pytest.approx(2.0, abs=0.5)


class Recorder:
    """The node's side: records each decision it is told, with the time."""

    def __init__(self) -> None:
        self.told: list[tuple[float, Decision]] = []
        self._changed = trio.Event()

    async def __call__(self, d: Decision) -> None:
        self.told.append((time.monotonic(), d))
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, action: str, after: float = 0.0) -> float:
        with trio.fail_after(10):
            while True:
                for t, d in self.told:
                    if t >= after and d.action == action:
                        return t
                await self._changed.wait()


def test_the_watch_suspends_on_input_and_resumes(tmp_path: Path) -> None:
    inputs = tmp_path / "input"
    inputs.mkdir()
    keyboard = inputs / "event0"
    keyboard.touch()
    age(keyboard, 60)
    config = quiet_config(inputs)
    node = Recorder()
    watch = PolicyWatch(
        Sampler(config), IdlePolicy(config), guests_running=lambda: True, on_decision=node
    )

    async def main() -> float:
        async with trio.open_nursery() as nursery:
            await nursery.start(watch.run)
            assert node.told[0][1].state == "suspended"  # a guest while not lending
            await node.wait_for("resume")
            touched = time.monotonic()
            keyboard.touch()
            suspended = await node.wait_for("suspend", touched)
            await node.wait_for("resume", touched)
            nursery.cancel_scope.cancel()
        return suspended - touched

    latency = trio.run(main)
    assert latency < 1.5  # 4 Hz sampling: ~0.25 s; generous for loaded machines
    report = json.loads(json.dumps(watch.report()))
    assert report["node_running"] is True and report["state"] == "busy"
    assert [t["action"] for t in report["transitions"]][-2:] == ["suspend", "resume"]
