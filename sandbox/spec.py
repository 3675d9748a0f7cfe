"""The job spec: what a submitter asks a worker to run, and the limits it runs under.

This module owns the shape of a job and its validation, nothing else: it is pure data (no I/O), is
shared with the rest of the project, and travels over the network as msgpack through `to_wire()` /
`from_wire()`. Every spec that exists has been validated (in `__post_init__`), so code downstream
never re-checks: argv and environment are bounded, paths are relative and cannot climb out of the
job directory, and limits are inside sane ranges. A bad spec raises `SpecError` naming the field.
Whether a *worker* accepts a valid spec is a separate question (see `sandbox.policy`).
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sandbox.errors import SpecError

WIRE_VERSION = 1

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30

# Bounds on what a spec may carry. They keep a hostile submitter from making a worker allocate or
# parse without limit before any sandbox exists; the numbers sit well above real jobs' needs.
MAX_ARGV = 4096
MAX_ARG_BYTES = 128 * KiB  # Linux's own per-string limit (MAX_ARG_STRLEN)
MAX_ENV = 512
MAX_ENV_NAME = 255
MAX_ENV_VALUE_BYTES = 32 * KiB
MAX_EXEC_BYTES = 1 * MiB  # argv + env together, under the kernel's usual ARG_MAX budget
MAX_INPUTS = 1024
MAX_INPUT_BYTES = 64 * MiB  # total input payload carried inline in the spec
MAX_OUTPUTS = 256
MAX_PATH_BYTES = 1024
MAX_COMPONENT_BYTES = 255
MAX_IMAGE_LEN = 255
DEFAULT_DISK_FILES = 65536
OUTPUT_STREAMS = 2  # stdout and stderr, each kept up to limits.output_bytes
MAX_DISK_FILES = 1 << 24  # each costs the worker about a KiB of kernel memory (charged to the job)

_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# A Docker image reference, loosely: [registry[:port]/]name[/name...][:tag][@digest]. The engine
# validates the details; this only keeps out whitespace, options (`-x`) and path tricks.
_IMAGE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:@+-]*")


class Network(enum.StrEnum):
    """What network a job sees. `none` (the default) is a private loopback only."""

    NONE = "none"
    # Outbound access through the engine's NAT (Docker's bridge): never the host's loopback or
    # the owner's LAN services by address, but the internet. Only where the owner's policy allows.
    INTERNET = "internet"
    # The host's own network, for the ranks of an MPI group (node.mpi): they open TCP
    # connections to the other members and to the launcher. Only where the owner's policy allows
    # MPI groups, and only on a backend that can share the host's network (native).
    GROUP = "group"


@dataclass(frozen=True)
class Limits:
    """Resource limits of one job. Sizes are bytes, times seconds."""

    cpus: float = 1.0  # CPU bandwidth, in cores (CFS quota)
    memory: int = 512 * MiB  # memory + swap
    wall_seconds: float = 3600.0  # running time, not counting time suspended by the owner
    cpu_seconds: float | None = None  # total CPU time across all the job's processes
    # The job's files, /job and /tmp together, inputs included: their bytes (in whole pages, as the
    # kernel counts them) and how many there are (files, directories and links). They are held in
    # memory, so they count against `memory` too (see sandbox.jobdir).
    disk: int = 1 * GiB
    disk_files: int = DEFAULT_DISK_FILES
    pids: int = 256  # processes and threads of the job itself (the sandbox's own are extra)
    gpus: int = 0
    network: Network = Network.NONE
    # stdout and stderr kept, each; the rest is drained and dropped. The worker holds them in its
    # own memory, so they count against `memory`: the job's processes get the rest (job_memory).
    output_bytes: int = 1 * MiB

    def __post_init__(self) -> None:
        _check_number("limits.cpus", self.cpus, 0.01, 1024.0)
        _check_int("limits.memory", self.memory, 4 * MiB, 1 << 40)
        _check_number("limits.wall_seconds", self.wall_seconds, 0.1, 7 * 86400.0)
        if self.cpu_seconds is not None:
            _check_number("limits.cpu_seconds", self.cpu_seconds, 0.1, 1024 * 7 * 86400.0)
        _check_int("limits.disk", self.disk, 64 * KiB, 1 << 40)
        _check_int("limits.disk_files", self.disk_files, 1, MAX_DISK_FILES, unit="files")
        _check_int("limits.pids", self.pids, 1, 1 << 16)
        _check_int("limits.gpus", self.gpus, 0, 64)
        if not isinstance(self.network, Network):
            raise SpecError("limits.network", f"must be one of {_choices(Network)}")
        _check_int("limits.output_bytes", self.output_bytes, 0, 64 * MiB)
        if self.output_memory > self.memory // 2:
            # Else a job of 4 MiB could have the worker hold 128 MiB for it (its RSS rose from
            # 0.1 to 1.3 GB with a few such jobs).
            raise SpecError(
                "limits.output_bytes",
                f"{self.output_bytes} bytes for each of stdout and stderr count against "
                f"limits.memory ({self.memory}), and may take at most half of it: ask for at "
                f"most {self.memory // 2 // OUTPUT_STREAMS} bytes, or for "
                "more memory",
            )

    @property
    def output_memory(self) -> int:
        """What the worker may hold of the job's output: its buffers for stdout and stderr."""
        return OUTPUT_STREAMS * self.output_bytes

    @property
    def job_memory(self) -> int:
        """The memory wall of the job itself (its processes and files): `memory` less the
        worker's buffers for its output, which count against the same limit."""
        return self.memory - self.output_memory

    def to_wire(self) -> dict[str, Any]:
        return {
            "cpus": self.cpus,
            "memory": self.memory,
            "wall_seconds": self.wall_seconds,
            "cpu_seconds": self.cpu_seconds,
            "disk": self.disk,
            # Sent only when asked for: a worker that predates it refuses the key (it could not
            # honour it), and leaving it out keeps every other spec readable there.
            **({"disk_files": self.disk_files} if self.disk_files != DEFAULT_DISK_FILES else {}),
            "pids": self.pids,
            "gpus": self.gpus,
            "network": self.network.value,
            "output_bytes": self.output_bytes,
        }

    @classmethod
    def from_wire(cls, obj: object) -> Limits:
        data = _expect_map("limits", obj, set(_LIMIT_FIELDS))
        kwargs: dict[str, Any] = {}
        for name, kind in _LIMIT_FIELDS.items():
            if name not in data:
                continue
            value = data[name]
            where = f"limits.{name}"
            if kind == "float":
                kwargs[name] = _wire_float(where, value)
            elif kind == "float?":
                kwargs[name] = None if value is None else _wire_float(where, value)
            elif kind == "int":
                kwargs[name] = _wire_int(where, value)
            else:
                kwargs[name] = _wire_enum(where, value, Network)
        return cls(**kwargs)


_LIMIT_FIELDS = {
    "cpus": "float",
    "memory": "int",
    "wall_seconds": "float",
    "cpu_seconds": "float?",
    "disk": "int",
    "disk_files": "int",
    "pids": "int",
    "gpus": "int",
    "network": "network",
    "output_bytes": "int",
}


@dataclass(frozen=True)
class InputFile:
    """A file placed in the job directory before the job starts."""

    path: str  # relative to the job directory
    data: bytes
    executable: bool = False

    def __post_init__(self) -> None:
        check_relative_path("input.path", self.path)
        if not isinstance(self.data, bytes):
            raise SpecError("input.data", "must be bytes")
        if not isinstance(self.executable, bool):
            raise SpecError("input.executable", "must be true or false")


@dataclass(frozen=True)
class JobSpec:
    """One job: a command (run from the host's /usr, or inside `image`), its files and its limits.

    The job starts in its job directory (`/job` inside the sandbox) holding `inputs`; after it
    ends, the regular files at `outputs` (files, or directories, recursively) are hashed and kept.
    """

    argv: tuple[str, ...]
    image: str | None = None
    env: tuple[tuple[str, str], ...] = ()
    inputs: tuple[InputFile, ...] = ()
    outputs: tuple[str, ...] = ()
    limits: Limits = field(default_factory=Limits)

    def __post_init__(self) -> None:
        self._check_argv()
        self._check_image()
        self._check_env()
        self._check_inputs()
        self._check_outputs()
        if not isinstance(self.limits, Limits):
            raise SpecError("limits", "must be a Limits")
        self._check_inputs_fit()

    @classmethod
    def create(
        cls,
        argv: Sequence[str],
        *,
        image: str | None = None,
        env: Mapping[str, str] | None = None,
        inputs: Mapping[str, bytes] | Sequence[InputFile] = (),
        outputs: Sequence[str] = (),
        limits: Limits | None = None,
    ) -> JobSpec:
        """Build a spec from ordinary Python values (a dict for env; path -> bytes for inputs)."""
        if isinstance(inputs, Mapping):
            files = tuple(InputFile(path, data) for path, data in inputs.items())
        else:
            files = tuple(inputs)
        return cls(
            argv=tuple(argv),
            image=image,
            env=tuple(sorted((env or {}).items())),
            inputs=files,
            outputs=tuple(outputs),
            limits=limits or Limits(),
        )

    @property
    def env_dict(self) -> dict[str, str]:
        return dict(self.env)

    # -- validation ------------------------------------------------------------------------------

    def _check_argv(self) -> None:
        if not isinstance(self.argv, tuple) or not all(isinstance(a, str) for a in self.argv):
            raise SpecError("argv", "must be a list of strings")
        if not self.argv:
            raise SpecError("argv", "is empty: give the command to run")
        if len(self.argv) > MAX_ARGV:
            raise SpecError("argv", f"has {len(self.argv)} items, more than {MAX_ARGV}")
        if not self.argv[0]:
            raise SpecError("argv[0]", "is empty: give the command to run")
        total = 0
        for i, arg in enumerate(self.argv):
            size = _utf8_len(f"argv[{i}]", arg)
            if "\0" in arg:
                raise SpecError(f"argv[{i}]", "contains a NUL byte")
            if size > MAX_ARG_BYTES:
                raise SpecError(f"argv[{i}]", f"is {size} bytes, more than {MAX_ARG_BYTES}")
            total += size + 1
        for name, value in self.env:
            total += len(name) + len(value.encode("utf-8", "surrogatepass")) + 2
        if total > MAX_EXEC_BYTES:
            raise SpecError("argv", f"argv and env take {total} bytes, more than {MAX_EXEC_BYTES}")

    def _check_image(self) -> None:
        if self.image is None:
            return
        if not isinstance(self.image, str):
            raise SpecError("image", "must be a string or absent")
        if len(self.image) > MAX_IMAGE_LEN or not _IMAGE_RE.fullmatch(self.image):
            raise SpecError("image", f"{self.image[:80]!r} is not an image reference")

    def _check_env(self) -> None:
        if not isinstance(self.env, tuple):
            raise SpecError("env", "must be a mapping of names to strings")
        if len(self.env) > MAX_ENV:
            raise SpecError("env", f"has {len(self.env)} variables, more than {MAX_ENV}")
        seen: set[str] = set()
        for pair in self.env:
            if not (isinstance(pair, tuple) and len(pair) == 2):
                raise SpecError("env", "must be a mapping of names to strings")
            name, value = pair
            if not isinstance(name, str) or not isinstance(value, str):
                raise SpecError("env", "names and values must be strings")
            where = f"env[{name[:40]!r}]"
            if len(name) > MAX_ENV_NAME or not _ENV_NAME_RE.fullmatch(name):
                raise SpecError(where, "is not a variable name (letters, digits, _)")
            if name in seen:
                raise SpecError(where, "is given twice")
            seen.add(name)
            if "\0" in value:
                raise SpecError(where, "contains a NUL byte")
            size = _utf8_len(where, value)
            if size > MAX_ENV_VALUE_BYTES:
                raise SpecError(where, f"is {size} bytes, more than {MAX_ENV_VALUE_BYTES}")

    def _check_inputs(self) -> None:
        if not isinstance(self.inputs, tuple) or not all(
            isinstance(f, InputFile) for f in self.inputs
        ):
            raise SpecError("inputs", "must be a list of input files")
        if len(self.inputs) > MAX_INPUTS:
            raise SpecError("inputs", f"has {len(self.inputs)} files, more than {MAX_INPUTS}")
        total = sum(len(f.data) for f in self.inputs)
        if total > MAX_INPUT_BYTES:
            raise SpecError("inputs", f"carry {total} bytes, more than {MAX_INPUT_BYTES}")
        files = {f.path for f in self.inputs}
        if len(files) != len(self.inputs):
            dup = next(p for p in files if sum(f.path == p for f in self.inputs) > 1)
            raise SpecError(f"inputs[{dup!r}]", "is given twice")
        for path in files:
            # A file at `a` and another at `a/b` cannot both exist.
            parts = path.split("/")
            for i in range(1, len(parts)):
                parent = "/".join(parts[:i])
                if parent in files:
                    raise SpecError(f"inputs[{path!r}]", f"lies under the input file {parent!r}")

    def _check_inputs_fit(self) -> None:
        # Inputs live in the job's file system, under its disk limits (staged inputs, which the
        # spec does not carry, are checked when they are placed: sandbox.jobdir).
        lim = self.limits
        size = sum(len(f.data) for f in self.inputs)
        if size > lim.disk:
            raise SpecError("inputs", f"carry {size} bytes, more than limits.disk ({lim.disk})")
        names = input_names(f.path for f in self.inputs)
        if names > lim.disk_files:
            raise SpecError(
                "inputs",
                f"make {names} files and directories, more than limits.disk_files "
                f"({lim.disk_files})",
            )

    def _check_outputs(self) -> None:
        if not isinstance(self.outputs, tuple):
            raise SpecError("outputs", "must be a list of paths")
        if len(self.outputs) > MAX_OUTPUTS:
            raise SpecError("outputs", f"has {len(self.outputs)} paths, more than {MAX_OUTPUTS}")
        for i, path in enumerate(self.outputs):
            check_relative_path(f"outputs[{i}]", path)
        if len(set(self.outputs)) != len(self.outputs):
            raise SpecError("outputs", "lists a path twice")

    # -- wire ------------------------------------------------------------------------------------

    def to_wire(self) -> dict[str, Any]:
        """A msgpack-ready dict (str keys; bytes stay bytes)."""
        return {
            "v": WIRE_VERSION,
            "argv": list(self.argv),
            "image": self.image,
            "env": dict(self.env),
            "inputs": [
                {"path": f.path, "data": f.data, "executable": f.executable} for f in self.inputs
            ],
            "outputs": list(self.outputs),
            "limits": self.limits.to_wire(),
        }

    @classmethod
    def from_wire(cls, obj: object) -> JobSpec:
        """Validate untrusted wire data (as msgpack decodes it) into a spec, or raise SpecError."""
        data = _expect_map(
            "spec", obj, {"v", "argv", "image", "env", "inputs", "outputs", "limits"}
        )
        version = data.get("v", WIRE_VERSION)
        if version != WIRE_VERSION:
            raise SpecError("v", f"wire version {version!r} is not supported (want {WIRE_VERSION})")
        argv = _wire_str_list("argv", data.get("argv"), MAX_ARGV)
        image = data.get("image")
        if image is not None and not isinstance(image, str):
            raise SpecError("image", "must be a string or absent")
        env_obj = data.get("env", {})
        if not isinstance(env_obj, dict):
            raise SpecError("env", "must be a mapping of names to strings")
        if len(env_obj) > MAX_ENV:
            raise SpecError("env", f"has {len(env_obj)} variables, more than {MAX_ENV}")
        for key, value in env_obj.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise SpecError("env", "names and values must be strings")
        inputs_obj = data.get("inputs", [])
        if not isinstance(inputs_obj, list):
            raise SpecError("inputs", "must be a list of input files")
        if len(inputs_obj) > MAX_INPUTS:
            raise SpecError("inputs", f"has {len(inputs_obj)} files, more than {MAX_INPUTS}")
        inputs = []
        for i, item in enumerate(inputs_obj):
            where = f"inputs[{i}]"
            entry = _expect_map(where, item, {"path", "data", "executable"})
            path, payload = entry.get("path"), entry.get("data")
            executable = entry.get("executable", False)
            if not isinstance(path, str):
                raise SpecError(f"{where}.path", "must be a string")
            if not isinstance(payload, bytes):
                raise SpecError(f"{where}.data", "must be bytes")
            if not isinstance(executable, bool):
                raise SpecError(f"{where}.executable", "must be true or false")
            check_relative_path(f"{where}.path", path)
            inputs.append(InputFile(path, payload, executable))
        outputs = _wire_str_list("outputs", data.get("outputs", []), MAX_OUTPUTS, allow_empty=True)
        limits = Limits.from_wire(data.get("limits", {}))
        return cls(
            argv=tuple(argv),
            image=image,
            env=tuple(sorted(env_obj.items())),
            inputs=tuple(inputs),
            outputs=tuple(outputs),
            limits=limits,
        )


def input_names(paths: Iterable[str]) -> int:
    """How many files and directories placing inputs at `paths` makes (each counts once)."""
    made: set[str] = set()
    for path in paths:
        parts = path.split("/")
        made.update("/".join(parts[:i]) for i in range(1, len(parts) + 1))
    return len(made)


def check_relative_path(where: str, path: object) -> str:
    """A path inside the job directory: relative, normalised, no `..`, bounded. Returns it."""
    if not isinstance(path, str):
        raise SpecError(where, "must be a string")
    if not path:
        raise SpecError(where, "is empty")
    size = _utf8_len(where, path)
    if size > MAX_PATH_BYTES:
        raise SpecError(where, f"is {size} bytes, more than {MAX_PATH_BYTES}")
    if any(ord(ch) < 0x20 or ch == "\x7f" for ch in path):
        raise SpecError(where, "contains a control character")
    if path.startswith("/"):
        raise SpecError(
            where, f"{path[:80]!r} is absolute: paths are relative to the job directory"
        )
    for part in path.split("/"):
        if part in ("", ".", ".."):
            # `..` climbs out of the job directory; empty and `.` parts make two spellings of one
            # path, which would defeat the duplicate checks.
            raise SpecError(where, f"{path[:80]!r} is not a plain relative path (no '', '.', '..')")
        if len(part.encode("utf-8", "surrogatepass")) > MAX_COMPONENT_BYTES:
            raise SpecError(where, f"has a name longer than {MAX_COMPONENT_BYTES} bytes")
    return path


# -- helpers ---------------------------------------------------------------------------------


def _utf8_len(where: str, text: str) -> int:
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise SpecError(where, "is not valid UTF-8") from None


def _choices(kind: type[enum.StrEnum]) -> str:
    return ", ".join(repr(m.value) for m in kind)


def _check_number(where: str, value: object, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SpecError(where, "must be a number")
    if not math.isfinite(value) or not low <= value <= high:
        raise SpecError(where, f"{value!r} is outside {low:g}..{high:g}", (low, high))


def _check_int(where: str, value: object, low: int, high: int, unit: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(where, "must be a whole number")
    if not low <= value <= high:
        units = f" {unit}" if unit else ""
        raise SpecError(where, f"{value}{units} is outside {low}..{high}{units}", (low, high))


def _expect_map(where: str, obj: object, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise SpecError(where, "must be a map")
    for key in obj:
        if not isinstance(key, str):
            raise SpecError(where, "has a non-string key")
        if key not in allowed:
            # Unknown keys are refused rather than ignored: a newer submitter asking for something
            # (say, a limit) this worker does not know must not have it silently dropped.
            raise SpecError(f"{where}.{key[:40]}", "is not a known field")
    return obj


def _wire_float(where: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SpecError(where, "must be a number")
    return float(value)


def _wire_int(where: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(where, "must be a whole number")
    return value


def _wire_enum(where: str, value: object, kind: type[Network]) -> Network:
    if not isinstance(value, str):
        raise SpecError(where, f"must be one of {_choices(kind)}")
    try:
        return kind(value)
    except ValueError:
        raise SpecError(where, f"must be one of {_choices(kind)}") from None


def _wire_str_list(
    where: str, value: object, limit: int, *, allow_empty: bool = False
) -> list[str]:
    if not isinstance(value, list):
        raise SpecError(where, "must be a list of strings")
    if len(value) > limit:
        raise SpecError(where, f"has {len(value)} items, more than {limit}")
    if not value and not allow_empty:
        raise SpecError(where, "is empty")
    if not all(isinstance(v, str) for v in value):
        raise SpecError(where, "must be a list of strings")
    return value
