"""Jobs that tell the truth, as a new user meets them through `rain` (real nodes on 127.0.0.1):
a job file's command as one string, output past every cap it used to be cut at silently,
Ctrl-C on `rain submit --wait`, and who is distrusted (`rain workers`, `rain forgive`). Each
test is one bug a new user hit."""

from __future__ import annotations

import hashlib
import signal
import subprocess
from pathlib import Path

from tests.e2e.nodes import PYTHON, Cluster, NodeProcess, requester_and_workers, wait_until


def test_a_job_file_command_may_be_one_string(cluster: Cluster, tmp_path: Path) -> None:
    """`command = "echo hi"` ran `e c h o ...` (the string split into characters)."""
    requester, _ = requester_and_workers(cluster, 1)
    job = tmp_path / "job.toml"
    job.write_text('command = "sh -c \'echo \\"$0 and $1\\"\' one \'two words\'"\ntime = "1m"\n')
    res = requester.rain("submit", "--file", str(job), "--wait", timeout=60)
    assert res.stdout == "one and two words\n"
    job.write_text('command = ["true"]\nmemory = "1G"\n')
    bad = requester.rain("submit", "--file", str(job), check=False)
    assert bad.returncode == 1
    assert "unknown field(s) memory; a job file may have" in bad.stderr and "mem," in bad.stderr
    job.write_text("command = 3\n")
    bad = requester.rain("submit", "--file", str(job), check=False)
    assert "command: a string, or a list of strings" in bad.stderr
    # Limits out of range are said in the flags' own units.
    bad = requester.rain("submit", "--cpus", "5000", "--", "true", check=False)
    assert "--cpus must be between 0.01 and 1024" in bad.stderr, bad.stderr
    bad = requester.rain("submit", "--mem", "1K", "--", "true", check=False)
    assert "--mem must be between 4M and 1T" in bad.stderr, bad.stderr
    usage = requester.rain("submit", "--help").stdout
    assert "job file" in usage and "command =" in usage


def test_output_beyond_the_old_caps_arrives_whole_or_says_where_it_was_cut(
    cluster: Cluster,
) -> None:
    """stdout was cut at 1 MiB for --wait and at 256 KiB for `rain logs`, silently."""
    requester, _ = requester_and_workers(cluster, 1)
    # 3 MiB of numbered lines under a 4 MiB cap: all of it, in order, both ways.
    make = "seq 1 400000 | head -c 3145728"
    expected = subprocess.run(["sh", "-c", make], capture_output=True).stdout
    res = requester.rain(
        "submit", "--log-cap", "4M", "--mem", "256M", "--wait", "--", "sh", "-c", make, timeout=90
    )
    assert len(res.stdout) == len(expected)
    assert hashlib.sha256(res.stdout.encode()).digest() == hashlib.sha256(expected).digest()
    job_id = requester.rain_json("jobs")[0]["job_id"]
    logs = requester.rain("logs", job_id).stdout
    assert logs.encode() == expected
    # Past the cap (the default 1 MiB), the job's owner is told where and how to keep more.
    res = requester.rain("submit", "--wait", "--", "sh", "-c", make, timeout=90)
    assert len(res.stdout) == 1 << 20
    assert "stdout was cut at 1M, the job's cap (submit with --log-cap SIZE" in res.stderr


def _submit_and_interrupt(requester: NodeProcess) -> subprocess.CompletedProcess[str]:
    cmd = [PYTHON, "-m", "node.cli", "--home", str(requester.home), "submit", "--wait"]
    proc = subprocess.Popen(
        [*cmd, "--", "sh", "-c", "echo started; sleep 300"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "started\n"  # it runs, and its output streams
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_ctrl_c_on_submit_wait_cancels_the_job_and_says_so(cluster: Cluster) -> None:
    """Ctrl-C printed a traceback and left the job running, unannounced."""
    requester, _ = requester_and_workers(cluster, 1)
    res = _submit_and_interrupt(requester)
    [job] = requester.rain_json("jobs")
    assert f"rain: submitted job {job['job_id']}" in res.stderr
    assert res.returncode == 130 and "Traceback" not in res.stderr
    assert f"rain: cancelled job {job['job_id']} (Ctrl-C)" in res.stderr
    wait_until(lambda: requester.rain_json("jobs")[0]["state"] == "cancelled", 30, "cancelled")


def test_workers_shows_none_distrusted_and_forgive_names_a_worker(cluster: Cluster) -> None:
    """Who is distrusted shaped placement, unseen (the in-memory tests make one distrusted)."""
    requester, [worker] = requester_and_workers(cluster, 1)
    assert requester.rain_json("workers") == []
    assert "no worker is distrusted" in requester.rain("workers").stdout
    res = requester.rain("forgive", worker.peer_id[-8:], check=False)
    assert res.returncode == 1 and "names no distrusted worker" in res.stderr


def test_an_array_is_one_job_with_an_id(cluster: Cluster, tmp_path: Path) -> None:
    """An array was N unrelated ids: listed as N rows, cancelled one by one, fetched one by
    one. Now it is ID with tasks ID_0..ID_N-1, as Slurm's arrays."""
    requester, _ = requester_and_workers(cluster, 1)
    script = 'echo "$RAIN_JOB_ID $RAIN_ARRAY_JOB_ID $RAIN_ARRAY_TASK_ID" > out.txt; cat out.txt'
    array = requester.rain(
        "submit", "--name", "sweep", "--array", "0-3", "--output", "out.txt",
        "--wait", "--", "sh", "-c", script, timeout=90,
    ).stderr  # fmt: skip
    array_id = array.split("rain: submitted array ")[1].split()[0]
    assert requester.rain("logs", f"{array_id}_2").stdout == f"{array_id}_2 {array_id} 2\n"
    table = requester.rain("jobs").stdout.splitlines()
    [row] = [line for line in table if line.startswith(array_id)]
    assert row.startswith(f"{array_id}[4]") and "sweep" in row and "4/4 done" in row
    expanded = requester.rain("jobs", "--expand").stdout
    assert all(f"{array_id}_{i}" in expanded for i in range(4))
    got = tmp_path / "got"
    requester.rain("get", array_id, "--to", str(got))
    for i in range(4):
        assert (
            got / f"{array_id}_{i}" / "out.txt"
        ).read_text() == f"{array_id}_{i} {array_id} {i}\n"
    logs = requester.rain("logs", array_id, check=False)
    assert logs.returncode == 1 and f"name one, like {array_id}_0" in logs.stderr
    # Cancel the rest mid-way: the array's id reaches every task not ended.
    long = requester.rain(
        "submit", "--array", "0-5", "--cpus", "2", "--", "sleep", "300"
    ).stdout.strip()
    wait_until(
        lambda: any(
            j["state"] == "running" for j in requester.rain_json("jobs", "--state", "running")
        ),
        30,
        "a task runs",
    )
    said = requester.rain("cancel", long[:6]).stdout  # (a unique start of an id will do)
    assert said.startswith(f"{long}: cancel sent (6 of 6 tasks")
    wait_until(
        lambda: all(
            j["state"] == "cancelled" for j in requester.rain_json("jobs") if j["array_id"] == long
        ),
        30,
        "every task cancelled",
    )
    assert requester.rain_json("jobs", "--name", "sweep", "--state", "done").__len__() == 4
