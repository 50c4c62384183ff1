"""System V IPC of every kind, as PostgreSQL and older servers use it: a shared-memory segment
holding a counter, a semaphore set counting the same, and a message queue with one message per
tick (the oldest is taken off when it holds 8). State lives only in the kernel's IPC objects."""

import ctypes
import os
import time

libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
IPC_PRIVATE, IPC_CREAT, IPC_NOWAIT = 0, 0o1000, 0o4000
SETVAL, GETVAL = 16, 12


def check(result, what):
    if result == -1 or result is None:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


class SemBuf(ctypes.Structure):
    _fields_ = (("num", ctypes.c_ushort), ("op", ctypes.c_short), ("flg", ctypes.c_short))


class Msg(ctypes.Structure):
    _fields_ = (("mtype", ctypes.c_long), ("text", ctypes.c_char * 32))


shmid = check(libc.shmget(IPC_PRIVATE, 4096, IPC_CREAT | 0o600), "shmget")
address = libc.shmat(shmid, None, 0)
if address in (None, ctypes.c_void_p(-1).value):
    raise OSError(ctypes.get_errno(), "shmat")
counter = ctypes.c_long.from_address(address)
semid = check(libc.semget(IPC_PRIVATE, 1, IPC_CREAT | 0o600), "semget")
check(libc.semctl(semid, 0, SETVAL, 0), "semctl")
msqid = check(libc.msgget(IPC_PRIVATE, IPC_CREAT | 0o600), "msgget")
print(f"ipc shm {shmid} sem {semid} msg {msqid}", flush=True)

queued = 0
while True:
    counter.value += 1
    check(libc.semop(semid, ctypes.byref(SemBuf(0, 1, 0)), 1), "semop")
    msg = Msg(1, f"tick {counter.value}".encode())
    check(libc.msgsnd(msqid, ctypes.byref(msg), 32, IPC_NOWAIT), "msgsnd")
    queued += 1
    oldest = ""
    if queued > 8:
        out = Msg()
        check(libc.msgrcv(msqid, ctypes.byref(out), 32, 0, IPC_NOWAIT), "msgrcv")
        queued -= 1
        oldest = out.text.decode()
    sem = check(libc.semctl(semid, 0, GETVAL), "semctl")
    print(f"count {counter.value} sem {sem} oldest {oldest!r}", flush=True)
    time.sleep(0.05)
