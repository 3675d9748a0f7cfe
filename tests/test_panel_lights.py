"""This node's lights: when they re-sign the record, a guest's light file (written by a stranger),
and the record's new fields, which older nodes' records lack and older nodes skip."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import msgpack
import pytest

from node.cli import light as light_cli
from node.panel import lights as panel_lights
from node.panel.lights import (
    GUEST_LIGHT_FILE,
    LOAD_RESIGN_INTERVAL,
    NetLight,
    NodeLights,
    UserLight,
    net_light,
    parse_lights,
    read_guest_lights,
)
from rainnet import records, wire
from rainnet.identity import Identity
from rainnet.records import Light
from tests.test_wire import _record


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _lights(max_temperature: float | None = 90.0) -> tuple[NodeLights, list[int], Clock]:
    told: list[int] = []
    clock = Clock()
    return NodeLights(max_temperature, lambda: told.append(1), clock), told, clock


def test_user_lights_and_heat_are_news_at_once() -> None:
    lights, told, _ = _lights()
    lights.set_user(UserLight.USER1, Light.ON)
    assert len(told) == 1 and lights.for_record().user1 is Light.ON
    lights.set_user(UserLight.USER1, Light.ON)
    assert len(told) == 1  # no change, no new record
    lights.observe(0.0, 95.0, [])
    assert len(told) == 2 and lights.for_record().hot
    lights.observe(0.0, None, [])  # sensors gone: not hot
    assert len(told) == 3 and not lights.for_record().hot


def test_without_a_temperature_limit_nothing_is_hot() -> None:
    lights, told, _ = _lights(max_temperature=None)
    lights.observe(0.0, 120.0, [])
    assert not lights.hot and told == []


def test_the_load_re_signs_only_when_it_moved_and_not_too_often() -> None:
    lights, told, clock = _lights()
    lights.observe(0.1, None, [])  # 1/8: too small a move to tell
    assert (lights.load, lights.for_record().load, told) == (1, 0, [])
    lights.observe(0.5, None, [])
    assert lights.for_record().load == 4 and len(told) == 1
    clock.now += LOAD_RESIGN_INTERVAL / 2
    lights.observe(1.0, None, [])
    assert lights.load == 8 and lights.for_record().load == 4 and len(told) == 1
    clock.now += LOAD_RESIGN_INTERVAL / 2
    lights.observe(1.0, None, [])
    assert lights.for_record().load == 8 and len(told) == 2
    assert panel_lights.load_level(None) == 0 and panel_lights.load_level(float("nan")) == 0


def test_a_guest_sets_the_lights_while_it_runs(tmp_path: Path) -> None:
    lights, told, _ = _lights()
    lights.set_user(UserLight.USER2, Light.ON)
    old, new = tmp_path / "job-a", tmp_path / "job-b"
    old.mkdir()
    new.mkdir()
    (old / GUEST_LIGHT_FILE).write_text("user1=on user2=off")
    (new / GUEST_LIGHT_FILE).write_text("user1=blink\n")
    os.utime(old / GUEST_LIGHT_FILE, (time.time() - 60, time.time() - 60))
    lights.observe(0.0, None, [old, new])
    # The newest file wins, and names only user1: user2 stays the owner's.
    assert (lights.user(UserLight.USER1), lights.user(UserLight.USER2)) == (Light.BLINK, Light.ON)
    lights.observe(0.0, None, [])  # the job is gone: the owner's lights are back
    assert lights.user(UserLight.USER1) is Light.OFF
    assert len(told) == 3


def test_a_guest_light_file_is_read_with_care(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("user1=on")
    link = tmp_path / "link"
    link.mkdir()
    (link / GUEST_LIGHT_FILE).symlink_to(tmp_path / "secret")
    fifo = tmp_path / "fifo"
    fifo.mkdir()
    os.mkfifo(fifo / GUEST_LIGHT_FILE)
    huge = tmp_path / "huge"
    huge.mkdir()
    (huge / GUEST_LIGHT_FILE).write_bytes(b"user2=on " + b"x" * 10_000_000 + b" user1=on")
    assert read_guest_lights(link) is None  # not followed
    assert read_guest_lights(fifo) is None  # not waited on
    assert read_guest_lights(tmp_path / "nothing") is None
    found = read_guest_lights(huge)
    assert found is not None and found[1] == {UserLight.USER2: Light.ON}


def test_parse_lights_takes_what_it_knows() -> None:
    assert parse_lights("USER1=On user2=blink user3=on user1 =on user2=purple \x00") == {
        UserLight.USER1: Light.ON,
        UserLight.USER2: Light.BLINK,
    }


def test_the_network_light() -> None:
    circuit = "/ip4/1.2.3.4/tcp/1/p2p/R/p2p-circuit/p2p/X"
    assert net_light(["/ip4/1.2.3.4/tcp/1"], True) is NetLight.DIRECT
    assert net_light([circuit, "/ip4/10.0.0.2/tcp/1"], True) is NetLight.RELAY
    assert net_light([circuit], False) is NetLight.OFF


def test_the_cli_offers_the_lights_the_node_knows() -> None:
    assert tuple(UserLight) == light_cli.WHICH
    assert tuple(Light) == light_cli.LIGHTS


# ----- the record's new fields --------------------------------------------------------------


def test_lights_travel_in_the_signed_record() -> None:
    me = Identity.generate()
    rec = _record(me, user1="on", user2="blink", hot=True, load=5)
    value = records.sign_record(me, rec).to_bytes()
    back = records.parse_signed(value, time.time(), records.record_key(me.peer_id))
    assert (back.user1, back.user2, back.hot, back.load) == ("on", "blink", True, 5)


def test_an_older_nodes_record_without_lights_still_parses() -> None:
    me = Identity.generate()
    fields = wire.to_fields(_record(me))
    for name in ("user1", "user2", "hot", "load"):
        del fields[name]
    payload = msgpack.packb({**fields, "t": "node-record", "v": 1}, use_bin_type=True)
    old = wire.decode_payload(payload, expected=(records.NodeRecord,))
    assert isinstance(old, records.NodeRecord)
    assert (old.user1, old.user2, old.hot, old.load) == ("off", "off", False, 0)


def test_an_older_node_skips_the_fields_it_does_not_know() -> None:
    """What an older node does with our record: its codec drops unknown keys (wire._build);
    here, a record class without the new fields stands for the older node's."""

    @dataclasses.dataclass(frozen=True)
    class OldRecord(wire.Message):
        peer_id: str
        addrs: tuple[str, ...]
        state: str
        seq: int

    me = Identity.generate()
    raw = wire.to_fields(_record(me, user1="on", load=3))
    rebuilt = wire._build(OldRecord, dict(raw), "node-record")
    assert isinstance(rebuilt, OldRecord) and rebuilt.peer_id == me.peer_id


@pytest.mark.parametrize("bad", [{"user1": "purple"}, {"user2": ""}, {"load": 9}, {"load": -1}])
def test_a_record_with_bad_lights_is_refused(bad: dict[str, object]) -> None:
    me = Identity.generate()
    with pytest.raises(ValueError):
        _record(me, **bad)
    fields = {**wire.to_fields(_record(me)), **bad, "t": "node-record", "v": 1}
    with pytest.raises(wire.RemoteProtocolError):
        wire.decode_payload(msgpack.packb(fields, use_bin_type=True))
