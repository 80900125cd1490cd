"""Who is on the other end of a Unix socket, and whether the socket's folder can be trusted.

* ``peer_uid(sock)``: the uid of the process that connected (``SO_PEERCRED``,
  recorded by the kernel at ``connect``; a client cannot forge it).
* ``UidAllowList``: the uids the operator lets talk to the shm carrier
  (``--shm-allow-uid``; default: the daemon's own uid only). root is not
  implied.
* ``check_private_dir(path)``: the socket folder must be owned by the
  daemon's user and not writable by group or others; a folder that does not
  exist is created 0700. Another local user who pre-creates the folder (a
  squat: ``/tmp/kvstore-UID`` is guessable) makes the daemon refuse to start
  instead of serving prompts through a socket that user controls.
"""

from __future__ import annotations

import os
import socket
import stat
import struct

from kvstore.errors import InvalidArgument, Unauthorized

_UCRED = struct.Struct("3i")  # pid, uid, gid


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """``(pid, uid, gid)`` of the peer of a connected Unix socket."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    return _UCRED.unpack(raw)


def peer_uid(sock: socket.socket) -> int:
    return peer_credentials(sock)[1]


class UidAllowList:
    """The uids that may connect (empty: the daemon's own uid)."""

    def __init__(self, uids=()):
        self.uids = frozenset(int(u) for u in uids) or frozenset({os.getuid()})

    @classmethod
    def parse(cls, value) -> UidAllowList:
        """From ``[1000, 1001]``, ``"1000,1001"`` or None (the daemon's uid)."""
        if value in (None, "", []):
            return cls()
        if isinstance(value, (int, str)):
            value = [v for v in str(value).split(",") if v.strip()]
        try:
            return cls(int(v) for v in value)
        except (TypeError, ValueError):
            raise InvalidArgument(f"shm_allow_uids must be uids, got {value!r}") from None

    def check(self, sock: socket.socket) -> int:
        """The peer's uid; ``Unauthorized`` when it is not on the list."""
        uid = peer_uid(sock)
        if uid not in self.uids:
            raise Unauthorized(f"uid {uid} may not use this shm socket")
        return uid


def check_private_dir(path: str, create: bool = True) -> bool:
    """Make sure ``path`` is a folder only the daemon's user controls; True when it was created.

    Refused (``InvalidArgument``): owned by another user, group/other-writable,
    or not a folder (a symlink is not followed).
    """
    made = False
    if create:
        try:
            os.mkdir(path, 0o700)
            made = True
        except FileExistsError:
            pass
        except FileNotFoundError:
            os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
            os.mkdir(path, 0o700)
            made = True
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise InvalidArgument(f"{path} is not a folder (refusing to put a socket there)")
    if st.st_uid != os.getuid():
        raise InvalidArgument(
            f"{path} is owned by uid {st.st_uid}, not by this daemon's uid {os.getuid()}: "
            "refusing it (another user may have created it to intercept clients)")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not st.st_mode & stat.S_ISVTX:
        raise InvalidArgument(f"{path} is writable by group/others (mode "
                              f"{stat.S_IMODE(st.st_mode):o}): refusing it")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):  # sticky and shared (/tmp): not ours
        raise InvalidArgument(f"{path} is a shared folder (mode {stat.S_IMODE(st.st_mode):o}): "
                              "put the socket in a folder of its own")
    return made
