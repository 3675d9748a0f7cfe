"""The `[policy]` table of config.toml: defaults, the project's units, errors naming the key."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from node.owner.config import (
    ConfigError,
    PolicyConfig,
    human_duration,
    load_policy_config,
    parse_window,
)


def write(home: Path, text: str) -> Path:
    (home / "config.toml").write_text(text)
    return home


def test_defaults_are_htcondor_like_without_a_file(tmp_path: Path) -> None:
    c = load_policy_config(tmp_path)
    assert c == PolicyConfig()
    assert (c.start_idle, c.continue_idle, c.max_suspend) == (900, 300, 600)
    assert (c.background_load, c.high_load) == (0.3, 0.5)
    assert c.lend == "idle" and c.input_paths == ("/dev/input",) and c.schedule == ()
    assert load_policy_config(tmp_path, lend="always").lend == "always"


def test_a_full_table(tmp_path: Path) -> None:
    write(
        tmp_path,
        """
[node]
something = "not ours"

[policy]
lend = "always"
start_idle = "1s"
continue_idle = 0.5
max_suspend = "2m"
high_load_for = "250ms"
background_load = "20%"
high_load = 0.75
min_free_memory = "1G"
max_temperature = false
pause_on_battery = false
schedule = ["Mon-Fri 18:00-08:00", "Sat,Sun"]
input_paths = ["/tmp/input", "/tmp/other/*"]
watch_ttys = false
cpu_share = 0.5
memory_share = "25%"
""",
    )
    c = load_policy_config(tmp_path, lend=None)
    assert c.lend == "always" and c.start_idle == 1.0 and c.continue_idle == 0.5
    assert c.max_suspend == 120.0 and c.high_load_for == 0.25
    assert c.background_load == pytest.approx(0.2) and c.high_load == 0.75
    assert c.min_free_memory == 1 << 30 and c.max_temperature is None
    assert not c.pause_on_battery and not c.watch_ttys
    assert [w.text for w in c.schedule] == ["Mon-Fri 18:00-08:00", "Sat,Sun"]
    assert c.input_paths == ("/tmp/input", "/tmp/other/*")
    assert (c.cpu_share, c.memory_share) == (0.5, 0.25)
    assert load_policy_config(tmp_path, lend="never").lend == "never"
    assert c.as_dict()["schedule"] == ["Mon-Fri 18:00-08:00", "Sat,Sun"]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('start_idle = "soon"', "policy.start_idle: expected a duration like 15m, got 'soon'"),
        ("start_idle = -5", "policy.start_idle: expected a duration like 15m"),
        ("max_suspend = true", "policy.max_suspend: expected a duration like 15m"),
        ('lend = "sometimes"', "policy.lend: expected one of idle, always, never"),
        ("high_load = 1.5", "policy.high_load: expected a fraction of the machine, 0 to 1"),
        ("background_load = 0.6", "policy.background_load: must not exceed policy.high_load"),
        ('min_free_memory = "lots"', "policy.min_free_memory: expected a size like 256M"),
        ('max_temperature = "hot"', "policy.max_temperature: expected °C like 90"),
        ("schedule = ['Mon-Fri 25:00-08:00']", "policy.schedule[0]: 25:00 is not a time of day"),
        ("schedule = ['weekdays']", "policy.schedule[0]: expected hours like"),
        ("schedule = '18:00-08:00'", "policy.schedule: expected a list of strings"),
        ("watch_ttys = 'yes'", "policy.watch_ttys: expected true or false"),
        ("cpu_share = 0", "policy.cpu_share: expected a fraction above 0 and at most 1"),
        ("input_interval = '1ms'", "policy.input_interval: expected a duration between"),
        ("start_idel = '1m'", "policy.start_idel: unknown key (known: "),
    ],
)
def test_errors_name_the_key(tmp_path: Path, line: str, message: str) -> None:
    write(tmp_path, f"[policy]\n{line}\n")
    with pytest.raises(ConfigError) as info:
        load_policy_config(tmp_path)
    text = str(info.value)
    assert text.startswith(f"{tmp_path / 'config.toml'}: ")
    assert message in text


def test_unreadable_toml_and_a_policy_that_is_not_a_table(tmp_path: Path) -> None:
    write(tmp_path, "[policy\n")
    with pytest.raises(ConfigError, match=r"config\.toml: "):
        load_policy_config(tmp_path)
    write(tmp_path, 'policy = "idle"\n')
    with pytest.raises(ConfigError, match=r"policy: expected a table \(\[policy\]\)"):
        load_policy_config(tmp_path)


def at(day: int, hour: int, minute: int = 0) -> dt.datetime:
    """A local time on weekday `day` (0 = Monday) of a fixed week."""
    return dt.datetime(2024, 1, 1 + day, hour, minute)  # 2024-01-01 is a Monday


def test_schedule_windows() -> None:
    evenings = parse_window("Mon-Fri 18:00-08:00")
    assert evenings.contains(at(0, 18)) and evenings.contains(at(4, 23, 59))
    assert evenings.contains(at(5, 7, 59))  # Friday night runs into Saturday morning
    assert not evenings.contains(at(5, 8)) and not evenings.contains(at(5, 20))
    assert not evenings.contains(at(0, 7))  # Monday morning follows Sunday: not listed
    assert evenings.contains(at(1, 7)) and not evenings.contains(at(2, 12))
    weekend = parse_window("Sat,Sun")
    assert weekend.contains(at(5, 0)) and weekend.contains(at(6, 23, 59))
    assert not weekend.contains(at(0, 0))
    nights = parse_window("22:00-06:00")
    assert all(nights.contains(at(d, 23)) and nights.contains(at(d, 5)) for d in range(7))
    assert not nights.contains(at(3, 12))
    long_weekend = parse_window("Fri-Mon 00:00-24:00")
    assert long_weekend.days == frozenset({4, 5, 6, 0})
    assert long_weekend.contains(at(0, 23, 59)) and not long_weekend.contains(at(1, 0))
    config = PolicyConfig(schedule=(evenings, weekend))
    assert config.in_schedule(at(5, 12)) and not config.in_schedule(at(2, 12))
    assert PolicyConfig().in_schedule(at(2, 12))  # no schedule: any time


def test_human_durations() -> None:
    assert human_duration(0.25) == "0.2 s"
    assert human_duration(12) == "12 s"
    assert human_duration(300) == "5 min"
    assert human_duration(270) == "4 min 30 s"
    assert human_duration(3900) == "1 h 5 min"
    assert human_duration(float("inf")) == "ever"
