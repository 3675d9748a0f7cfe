"""`rain sandbox run` and `rain sandbox check`, as a user runs them (real processes, real walls)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from sandbox.job import Backend
from tests.e2e.dockerd import Dockerd

pytest_plugins = ["tests.e2e.sandbox_fixtures"]

# The `rain` entry point, whichever venv runs the tests (`-m node.cli` would load node.cli twice).
RAIN = [sys.executable, "-c", "import sys; from node.cli import main; sys.exit(main())"]


def rain(
    home: Path, *args: str, docker: str = "unix:///nonexistent.sock"
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, DOCKER_HOST=docker)
    return subprocess.run(
        [*RAIN, "--home", str(home), "sandbox", *args],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
        cwd=Path(__file__).parent.parent.parent,
        check=False,
    )


def test_run_prints_the_result(
    native_backend: Backend, dockerd: Dockerd, sandbox_root: Path
) -> None:
    home = sandbox_root / "cli-home"
    burn = "import time\nwhile time.process_time() < 0.2: pass\nprint('done')"
    for backend, docker in [("native", "unix:///nonexistent.sock"), ("docker", dockerd.url)]:
        p = rain(
            home, "run", "--backend", backend, "--mem", "64M", "--time", "30s", "--json",
            "--", "python3", "-c", burn, docker=docker,
        )  # fmt: skip
        assert p.returncode == 0, p.stderr
        result = json.loads(p.stdout)
        assert result["backend"] == backend
        assert (result["reason"], result["exit_code"], result["stdout"]) == ("ok", 0, "done\n")
        assert 0.2 <= result["cpu_seconds"] <= 0.3
        assert result["peak_memory"] > 0 and result["wall_seconds"] > 0
    # Human output: the job's own output streams through, then one summary line.
    p = rain(home, "run", "--mem", "64M", "--", "python3", "-c", "b = b'x' * (256 << 20)")
    assert p.returncode == 137
    assert "rain: out_of_memory (exit 137) on native" in p.stderr
    p = rain(home, "run", "--time", "1s", "--", "sh", "-c", "echo hi; exit 4")
    assert p.returncode == 4 and p.stdout == "hi\n" and "nonzero_exit" in p.stderr
    for backend, docker in [("native", "unix:///nonexistent.sock"), ("docker", dockerd.url)]:
        p = rain(home, "run", "--backend", backend, "--", "nosuchcmd", docker=docker)
        assert p.returncode == 127, p.stderr
        assert p.stderr.startswith("command not found: nosuchcmd\n"), p.stderr
        assert f"rain: nonzero_exit (exit 127) on {backend}" in p.stderr
    many = "for f in a b c; do head -c 500000 /dev/zero > $f; done"  # each under the limit
    p = rain(home, "run", "--disk", "1M", "--", "sh", "-c", many)
    assert p.returncode != 0 and "rain: disk_limit" in p.stderr, p.stderr


def test_run_refuses_bad_input_in_one_line(native_backend: Backend, sandbox_root: Path) -> None:
    home = sandbox_root / "cli-home"
    p = rain(home, "run", "--mem", "12Q", "--", "true")
    assert p.returncode == 2 and "not a size: '12Q'" in p.stderr
    p = rain(home, "run", "--time", "soon", "--", "true")
    assert p.returncode == 2 and "not a duration" in p.stderr
    p = rain(home, "run", "--")
    assert p.returncode == 1 and "give the command to run" in p.stderr
    p = rain(home, "run", "--mem", "1M", "--", "true")
    assert p.returncode == 1 and p.stderr.startswith("rain: limits.memory:")
    p = rain(home, "run", "--image", "rainnet-test/busybox:1", "--", "true")
    assert p.returncode == 1 and "no backend here can run this job" in p.stderr


def test_check_reports_both_backends_and_every_wall(
    native_backend: Backend, dockerd: Dockerd, sandbox_root: Path
) -> None:
    home = sandbox_root / "cli-home"
    p = rain(home, "check", "--json", docker=dockerd.url)
    assert p.returncode == 0, p.stdout + p.stderr
    report = json.loads(p.stdout)
    assert report["can_host_guests"] and report["usable"] == ["docker", "native"]
    for name in ("docker", "native"):
        entry = report["backends"][name]
        assert entry["available"] and entry["all_walls_hold"], entry
        walls = {w["name"]: w["passed"] for w in entry["walls"]}
        assert set(walls) >= {"network", "filesystem", "syscalls", "pids", "memory", "suspend"}
        assert all(walls.values()), walls
    assert set(report["cgroups"]) == {"memory", "pids", "cpu", "cpuacct", "freezer"}
    p = rain(home, "check", "--backend", "docker")  # no engine at the default address
    assert p.returncode == 1
    assert "docker: unavailable: no Docker engine" in p.stdout
    assert "guest jobs: NO" in p.stdout and "refuse other people's jobs" in p.stdout


def test_a_local_job_lives_as_long_as_its_time_limit_says(
    native_backend: Backend, sandbox_root: Path
) -> None:
    """Regression: every job was killed at 10 s of wall time, whatever `--time` said. The
    launch chain's parent-death signal followed the trio worker thread that spawned it, and such
    threads exit after 10 s idle (sandbox.child)."""
    home = sandbox_root / "cli-home"
    p = rain(home, "run", "--time", "40s", "--json", "--", "sh", "-c", "sleep 14; echo x")
    assert p.returncode == 0, p.stdout + p.stderr
    result = json.loads(p.stdout)
    assert (result["reason"], result["exit_code"], result["stdout"]) == ("ok", 0, "x\n")
    assert result["wall_seconds"] >= 14
