"""The wire codec: length-prefixed, typed, versioned msgpack messages, validated sans-io.

Every `/rain/...` protocol carries frames of `uvarint length | msgpack map`. The map names its type
(`"t"`) and version (`"v"`); the remaining keys are the fields of a frozen dataclass registered
with `@message("type-name")`. Decoding checks, before any use: the frame's size against the
protocol's cap, that the payload is a map, that the type is one this protocol expects, and each
field's type and size against the dataclass's annotations. Anything else raises
`RemoteProtocolError`, which says the fault is the remote's; the caller closes that stream and
carries on.

The codec holds no sockets: `FrameDecoder.feed(bytes)` returns whole messages, and `encode(msg)`
returns bytes. The trio edge (rainnet.streams) moves those bytes.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from collections.abc import Iterable, Iterator
from typing import Any, ClassVar, TypeVar, get_args, get_origin, get_type_hints

import msgpack

WIRE_VERSION = 1
# Default caps. A frame this large is a bug or an attack on every protocol we run; bulk data goes in
# chunks well below it (see the data-transfer protocols).
DEFAULT_MAX_FRAME = 1 << 20
DEFAULT_MAX_STR = 4096
DEFAULT_MAX_BYTES = 1 << 16
DEFAULT_MAX_ITEMS = 256
_MAX_VARINT_BYTES = 5  # enough for 2**35, far above any cap


class WireError(Exception):
    """Base of codec errors."""


class RemoteProtocolError(WireError):
    """The remote sent something malformed, oversized or unexpected (the remote's fault)."""


class LocalProtocolError(WireError):
    """We tried to send something that breaks our own rules (a bug on this side)."""


class Message:
    """Base of wire messages; subclasses are frozen dataclasses registered with @message."""

    TYPE: ClassVar[str]
    VERSION: ClassVar[int] = WIRE_VERSION


_REGISTRY: dict[str, type[Message]] = {}
M = TypeVar("M", bound=type[Message])


def message(type_name: str, version: int = WIRE_VERSION) -> typing.Callable[[M], M]:
    """Register a frozen dataclass as a wire message named `type_name`."""

    def register(cls: M) -> M:
        if not dataclasses.is_dataclass(cls) or not cls.__dataclass_params__.frozen:
            raise TypeError(f"{cls.__name__} must be a frozen dataclass")
        if type_name in _REGISTRY:
            raise TypeError(f"wire type {type_name!r} registered twice")
        cls.TYPE = type_name
        cls.VERSION = version
        _REGISTRY[type_name] = cls
        return cls

    return register


def limit(max_len: int) -> dict[str, int]:
    """Field metadata overriding the default size cap: `x: str = field(metadata=limit(64))`."""
    return {"max": max_len}


def to_fields(msg: Message) -> dict[str, Any]:
    """A message's fields as msgpack-ready values (tuples as lists, nested messages as maps)."""
    return {f.name: _plain(getattr(msg, f.name)) for f in dataclasses.fields(msg)}  # type: ignore[arg-type]


def _plain(value: Any) -> Any:
    if isinstance(value, Message):
        return to_fields(value)
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def encode_payload(msg: Message) -> bytes:
    """The msgpack map of `msg`, without the length prefix."""
    body = to_fields(msg)
    body["t"] = msg.TYPE
    body["v"] = msg.VERSION
    return msgpack.packb(body, use_bin_type=True)  # type: ignore[no-any-return]


def encode(msg: Message, max_frame: int = DEFAULT_MAX_FRAME) -> bytes:
    """One frame: uvarint length prefix and the msgpack payload."""
    payload = encode_payload(msg)
    if len(payload) > max_frame:
        raise LocalProtocolError(f"{msg.TYPE} is {len(payload)} bytes, over the {max_frame} cap")
    return encode_uvarint(len(payload)) + payload


def encode_uvarint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def decode_payload(payload: bytes, expected: Iterable[type[Message]] | None = None) -> Message:
    """Validate and build the message in one msgpack payload."""
    try:
        raw = msgpack.unpackb(
            payload,
            raw=False,
            strict_map_key=True,
            use_list=True,
        )
    except Exception as exc:  # msgpack raises many kinds; all mean the same to us
        raise RemoteProtocolError(f"not msgpack: {exc}") from None
    if not isinstance(raw, dict):
        raise RemoteProtocolError(f"a message is a map, not {type(raw).__name__}")
    type_name = raw.pop("t", None)
    version = raw.pop("v", None)
    if not isinstance(type_name, str):
        raise RemoteProtocolError("message has no type")
    cls = _REGISTRY.get(type_name)
    if cls is None:
        raise RemoteProtocolError(f"unknown message type {type_name[:64]!r}")
    if expected is not None and cls not in tuple(expected):
        raise RemoteProtocolError(f"unexpected message {type_name!r} here")
    if version != cls.VERSION:
        raise RemoteProtocolError(
            f"{type_name} version {version!r} unsupported (want {cls.VERSION})"
        )
    return _build(cls, raw, type_name)


def _build(cls: type[Message], raw: dict[str, Any], where: str) -> Message:
    hints = _hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name in raw:
            value = raw.pop(f.name)
        elif f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING:
            continue
        else:
            raise RemoteProtocolError(f"{where}: missing field {f.name!r}")
        cap = f.metadata.get("max")
        kwargs[f.name] = _check(hints[f.name], value, f"{where}.{f.name}", cap)
    # Unknown keys are tolerated (a newer peer may add optional fields) but must not be huge: the
    # frame cap already bounds them.
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        # __post_init__ validation of cross-field rules raises ValueError.
        raise RemoteProtocolError(f"{where}: {exc}") from None


_HINTS_CACHE: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    hints = _HINTS_CACHE.get(cls)
    if hints is None:
        hints = get_type_hints(cls)
        _HINTS_CACHE[cls] = hints
    return hints


def _check(tp: Any, value: Any, where: str, cap: int | None) -> Any:
    """`value` converted to `tp` if it matches, else RemoteProtocolError naming the field."""
    origin = get_origin(tp)
    if origin is typing.Union or origin is types.UnionType:
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check(arg, value, where, cap)
            except RemoteProtocolError as exc:
                errors.append(str(exc))
        raise RemoteProtocolError("; ".join(errors) or f"{where}: may not be None")
    if origin is tuple:
        args = get_args(tp)
        if not isinstance(value, list):
            raise RemoteProtocolError(f"{where}: expected a list, got {type(value).__name__}")
        if len(args) == 2 and args[1] is Ellipsis:
            max_items = cap if cap is not None else DEFAULT_MAX_ITEMS
            if len(value) > max_items:
                raise RemoteProtocolError(
                    f"{where}: {len(value)} items, over the cap of {max_items}"
                )
            return tuple(_check(args[0], v, f"{where}[{i}]", None) for i, v in enumerate(value))
        if len(value) != len(args):
            raise RemoteProtocolError(f"{where}: expected {len(args)} items")
        pairs = zip(args, value, strict=True)
        return tuple(_check(a, v, f"{where}[{i}]", None) for i, (a, v) in enumerate(pairs))
    if tp is bool:
        if not isinstance(value, bool):
            raise RemoteProtocolError(f"{where}: expected a bool")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise RemoteProtocolError(f"{where}: expected an integer, got {type(value).__name__}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise RemoteProtocolError(f"{where}: expected a number, got {type(value).__name__}")
        if value != value or value in (float("inf"), float("-inf")):
            raise RemoteProtocolError(f"{where}: not a finite number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise RemoteProtocolError(f"{where}: expected a string, got {type(value).__name__}")
        max_len = cap if cap is not None else DEFAULT_MAX_STR
        if len(value) > max_len:
            raise RemoteProtocolError(
                f"{where}: {len(value)} characters, over the cap of {max_len}"
            )
        return value
    if tp is bytes:
        if not isinstance(value, bytes):
            raise RemoteProtocolError(f"{where}: expected bytes, got {type(value).__name__}")
        max_len = cap if cap is not None else DEFAULT_MAX_BYTES
        if len(value) > max_len:
            raise RemoteProtocolError(f"{where}: {len(value)} bytes, over the cap of {max_len}")
        return value
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        # An Enum travels as its value; one this side does not know is the sender's error.
        try:
            return tp(value)
        except ValueError:
            known = ", ".join(str(m.value) for m in tp)
            raise RemoteProtocolError(f"{where}: {value!r} is not one of {known}") from None
    if isinstance(tp, type) and issubclass(tp, Message):
        if not isinstance(value, dict):
            raise RemoteProtocolError(f"{where}: expected a map")
        return _build(tp, dict(value), where)
    raise LocalProtocolError(f"{where}: field type {tp!r} is not supported by the codec")


class FrameDecoder:
    """Splits a byte stream into messages; one decoder per stream direction.

    `feed` buffers at most one frame (the cap) plus one read's worth, so memory per stream is
    bounded whatever the remote sends.
    """

    def __init__(
        self,
        expected: Iterable[type[Message]] | None = None,
        max_frame: int = DEFAULT_MAX_FRAME,
    ) -> None:
        self._expected = tuple(expected) if expected is not None else None
        self._max_frame = max_frame
        self._buffer = bytearray()

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Message]:
        self._buffer += data
        return list(self._drain())

    def _drain(self) -> Iterator[Message]:
        while True:
            header = self._read_length()
            if header is None:
                return
            length, offset = header
            if len(self._buffer) < offset + length:
                return
            payload = bytes(self._buffer[offset : offset + length])
            del self._buffer[: offset + length]
            yield decode_payload(payload, self._expected)

    def _read_length(self) -> tuple[int, int] | None:
        value = 0
        for i, byte in enumerate(self._buffer[:_MAX_VARINT_BYTES]):
            value |= (byte & 0x7F) << (7 * i)
            if not byte & 0x80:
                if i > 0 and byte == 0:
                    raise RemoteProtocolError("length prefix is not minimally encoded")
                if value > self._max_frame:
                    raise RemoteProtocolError(
                        f"frame of {value} bytes announced, over the cap of {self._max_frame}"
                    )
                return value, i + 1
        if len(self._buffer) >= _MAX_VARINT_BYTES:
            raise RemoteProtocolError("length prefix too long")
        return None
