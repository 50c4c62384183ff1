"""What the application is started inside of, so that CRIU can move it: an IPC namespace of its
own, a seccomp filter that refuses io_uring. Both are opt-in (they cost CAP_SYS_ADMIN), decided
once at start, and carried by CRIU across dumps and restores (it dumps the IPC namespace with
the tree and restores the filter), so a restored application needs nothing from here.

**IPC namespace.** CRIU saves System V shared memory, semaphores and message queues only with
an IPC namespace of the dumped tree's own (`SysVIPC shmem map ... doesn't live in IPC ns`);
a container shares its pod's. The application is started in a new one (`unshare(CLONE_NEWIPC)`
in the child, before exec): CAP_SYS_ADMIN, and CRIU needs it again to recreate the namespace.

**io_uring.** CRIU cannot dump an io_uring instance, and some runtimes (libuv, in Node.js)
create one even when told not to. A seccomp filter on the application alone makes
`io_uring_setup` fail with ENOSYS ("this kernel has no io_uring"), as container runtimes'
default profiles do, and they fall back to epoll. The agent and CRIU are not under it. The
filter is installed without no_new_privs (the application keeps setuid binaries working, as
under runc), which needs CAP_SYS_ADMIN; CRIU needs CAP_SYS_ADMIN anyway to dump a process
under a filter (PTRACE_O_SUSPEND_SECCOMP, PTRACE_SECCOMP_GET_FILTER). The number 425 is
io_uring_setup on every architecture (the unified syscall table from 403 on); the x32 ABI
spells it 0x40000000|425 on x86-64.
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
import struct

from podckpt.api import IoUring, IpcNamespace, Key, contract, qualified

from . import capabilities
from .errors import EnvironmentProblem

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from podckpt.api import CheckpointSettings

#: The webhook's decisions, handed to the agent (they include namespace defaults and `auto`,
#: which the agent cannot see: it reads only the pod's own labels and annotations).
IPC_NAMESPACE_ENV = contract.Env.IPC_NAMESPACE
IO_URING_ENV = contract.Env.IO_URING
NEEDED = contract.ISOLATION_CAPABILITIES

_CLONE_NEWIPC = 0x08000000
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2
_SECCOMP_RET_ALLOW = 0x7FFF0000
_SECCOMP_RET_ERRNO = 0x00050000
_ENOSYS = 38
_IO_URING_SETUP = 425
_X32_BIT = 0x40000000
_TIOCSCTTY = 0x540E


def _insn(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


#: ld [nr]; jeq 425 -> errno; jeq x32|425 -> errno; ret ALLOW; ret ERRNO(ENOSYS)
IO_URING_FILTER = b"".join(
    (
        _insn(0x20, 0, 0, 0),
        _insn(0x15, 2, 0, _IO_URING_SETUP),
        _insn(0x15, 1, 0, _X32_BIT | _IO_URING_SETUP),
        _insn(0x06, 0, 0, _SECCOMP_RET_ALLOW),
        _insn(0x06, 0, 0, _SECCOMP_RET_ERRNO | _ENOSYS),
    )
)


@dataclasses.dataclass(frozen=True)
class Isolation:
    private_ipc: bool = False
    deny_io_uring: bool = False

    @property
    def any(self) -> bool:
        return self.private_ipc or self.deny_io_uring

    def as_log(self) -> dict[str, object] | None:
        if not self.any:
            return None
        return {"ipc_namespace": "private" if self.private_ipc else "pod",
                "io_uring": "deny" if self.deny_io_uring else "allow"}  # fmt: skip


def decide(settings: CheckpointSettings, env: Mapping[str, str] | None = None) -> Isolation:
    """The webhook's hand-over when present, else the pod's own keys. `auto` without the
    webhook means the pod's namespace: only the webhook sees whether the container is alone
    in its pod."""
    env = os.environ if env is None else env
    ipc = env.get(IPC_NAMESPACE_ENV) or settings.ipc_namespace.value
    uring = env.get(IO_URING_ENV) or settings.io_uring.value
    return Isolation(
        private_ipc=ipc == IpcNamespace.PRIVATE.value, deny_io_uring=uring == IoUring.DENY.value
    )


def check(isolation: Isolation, mask: int | None = None) -> None:
    """Refuse in one line an isolation this container cannot provide."""
    if not isolation.any:
        return
    mask = capabilities.effective_capabilities() if mask is None else mask
    absent = capabilities.missing(NEEDED, mask)
    if not absent:
        return
    asked = []
    if isolation.private_ipc:
        asked.append(f"{qualified(Key.CHECKPOINT_IPC_NAMESPACE)}: private")
    if isolation.deny_io_uring:
        asked.append(f"{qualified(Key.CHECKPOINT_IO_URING)}: deny")
    raise EnvironmentProblem(
        " and ".join(asked) + f" needs {', '.join(absent)} in the container (the podckpt"
        " webhook adds it to pods that ask)"
    )


def preexec(
    isolation: Isolation,
    *,
    terminal: bool,
    user: tuple[int, int] | None,
    groups: Sequence[int] = (),
) -> Callable[[], None]:
    """A `preexec_fn` (run in the child between fork and exec, after subprocess's setsid): the
    new IPC namespace, the io_uring filter, the controlling terminal, and only then the
    application's user and supplementary `groups` (the first two need the agent's
    CAP_SYS_ADMIN; the filter and the namespace survive setuid and exec). libc and the filter
    are prepared here, in the parent: the child only makes system calls."""
    import ctypes  # noqa: PLC0415 - slow to import; a plain fresh start does without

    unshare = prctl = None
    fprog_buffer: ctypes.Array[ctypes.c_char] | None = None
    program: ctypes.Array[ctypes.c_char] | None = None
    if isolation.any:
        libc = ctypes.CDLL(None, use_errno=True)
        unshare, prctl = libc.unshare, libc.prctl
        program = ctypes.create_string_buffer(IO_URING_FILTER, len(IO_URING_FILTER))
        fprog = struct.pack("@HP", len(IO_URING_FILTER) // 8, ctypes.addressof(program))
        fprog_buffer = ctypes.create_string_buffer(fprog, len(fprog))

    def fail(what: str) -> None:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")

    def child() -> None:
        _ = program  # kept alive with the closure: fprog points into it
        if isolation.private_ipc and unshare is not None and unshare(_CLONE_NEWIPC) != 0:
            fail("unshare(CLONE_NEWIPC)")
        if (
            isolation.deny_io_uring
            and prctl is not None
            and prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, fprog_buffer, 0, 0) != 0
        ):
            fail("prctl(PR_SET_SECCOMP)")
        if terminal:
            for fd in (0, 1, 2):
                try:
                    fcntl.ioctl(fd, _TIOCSCTTY, 0)
                    break
                except OSError:
                    continue
        if user is not None:
            uid, gid = user
            os.setgroups(list(groups))
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)

    return child
