"""The system calls a job may not make, and that list rendered for each backend.

One deny list serves both backends, so their walls are the same: a BPF program for bubblewrap's
`--seccomp FD` (compiled with libseccomp through PyPI `pyseccomp`), and a Docker seccomp profile
(JSON) for the engine. The list is a deny list on top of the other walls (no capabilities, an
unprivileged uid, namespaces): it removes the kernel interfaces a contained process could still
reach without privilege and that have no place in a batch job: debugging other processes, mounting,
the kernel keyring, making new namespaces, eBPF, perf, io_uring and kin. Denied calls fail with
EPERM (so programs see an ordinary error, not a crash); `clone3` fails with ENOSYS so that libc
falls back to `clone`, whose flags a classic filter can inspect.
"""

from __future__ import annotations

import errno
import functools
import json
import os
from dataclasses import dataclass

# Denied outright. Grouped by why.
DENIED: tuple[str, ...] = (
    # other processes' memory and execution
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "pidfd_getfd",
    "kcmp",
    # file systems and mounts
    "mount",
    "umount",
    "umount2",
    "pivot_root",
    "chroot",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "move_mount",
    "open_tree",
    "mount_setattr",
    "open_by_handle_at",
    "name_to_handle_at",
    "quotactl",
    "quotactl_fd",
    "swapon",
    "swapoff",
    # the kernel keyring (shared across containers, not namespaced)
    "keyctl",
    "add_key",
    "request_key",
    # namespaces
    "unshare",
    "setns",
    # kernel attack surface without a batch-job use
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "lookup_dcookie",
    "fanotify_init",
    # the machine itself
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "reboot",
    "acct",
    "syslog",
    "iopl",
    "ioperm",
    "settimeofday",
    "clock_settime",
    "vhangup",
    "nfsservctl",
    "uselib",
    "_sysctl",
)

# clone(2) flags that make namespaces; each is denied by its own rule (a filter compares
# `flags & FLAG == FLAG`; "any of these bits" needs one rule per bit).
CLONE_NEW_FLAGS: tuple[int, ...] = (
    0x00020000,  # CLONE_NEWNS
    0x02000000,  # CLONE_NEWCGROUP
    0x04000000,  # CLONE_NEWUTS
    0x08000000,  # CLONE_NEWIPC
    0x10000000,  # CLONE_NEWUSER
    0x20000000,  # CLONE_NEWPID
    0x40000000,  # CLONE_NEWNET
)


@dataclass(frozen=True)
class Rule:
    syscall: str
    errno: int
    clone_flag: int | None = None  # deny only when arg 0 (flags) has this bit (x86, arm: arg 0)


def rules() -> list[Rule]:
    out = [Rule(name, errno.EPERM) for name in DENIED]
    out += [Rule("clone", errno.EPERM, flag) for flag in CLONE_NEW_FLAGS]
    out.append(Rule("clone3", errno.ENOSYS))
    return out


def docker_profile() -> str:
    """The rules as a Docker seccomp profile (JSON) for `security_opt=["seccomp=<json>"]`."""
    syscalls: list[dict[str, object]] = [
        {"names": list(DENIED), "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EPERM}
    ]
    for flag in CLONE_NEW_FLAGS:
        syscalls.append(
            {
                "names": ["clone"],
                "action": "SCMP_ACT_ERRNO",
                "errnoRet": errno.EPERM,
                "args": [{"index": 0, "value": flag, "valueTwo": flag, "op": "SCMP_CMP_MASKED_EQ"}],
            }
        )
    syscalls.append({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.ENOSYS})
    return json.dumps({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": syscalls})


@functools.cache
def bpf_program() -> bytes:
    """The rules compiled to a classic BPF program for this machine's architecture (cached).

    Calls made through another architecture's ABI (e.g. 32-bit `int 0x80` on x86-64) hit
    libseccomp's bad-architecture action, which kills: they cannot be used to slip past the list.
    """
    import pyseccomp  # imported here: only the native backend needs libseccomp

    flt = pyseccomp.SyscallFilter(pyseccomp.ALLOW)
    arch = pyseccomp.system_arch()
    for rule in rules():
        number = pyseccomp.resolve_syscall(arch, rule.syscall)
        if not isinstance(number, int) or number < 0:
            continue  # this architecture has no such call (e.g. `_sysctl` on newer ones)
        if rule.clone_flag is None:
            flt.add_rule(pyseccomp.ERRNO(rule.errno), rule.syscall)
        else:
            flag = rule.clone_flag
            flt.add_rule(
                pyseccomp.ERRNO(rule.errno),
                rule.syscall,
                pyseccomp.Arg(0, pyseccomp.MASKED_EQ, flag, flag),
            )
    with os.fdopen(os.memfd_create("rainnet-seccomp", os.MFD_CLOEXEC), "w+b") as sink:
        flt.export_bpf(sink)
        sink.seek(0)
        program = sink.read()
    if not program or len(program) % 8:
        raise RuntimeError(f"libseccomp produced a malformed BPF program ({len(program)} bytes)")
    return program
