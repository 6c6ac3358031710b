"""What an attach leaves behind it (the XDP attachment, the pins, the state file), and its removal.

Pins and state are the calling thread's network namespace's (see :mod:`mos.xdp.env`): the state file
``/run/mos-xdp/net-<inode>/<ifname>.json`` records what a later process needs to recognise the program:
its id, the peer, the workers and queues, the namespace (``netns``, its inode, and ``netns_cookie``),
and who is responsible for it:

- ``owner``: ``"attach"`` (``mos-xdp attach`` made it: it stays until ``mos-xdp detach``) or ``"run"`` (a
  ``mos-xdp run`` attached it for itself, and detaches it when it ends); ``pid`` and ``pid_start`` are the
  process that attached it.
- ``engine``: ``{"pid", "pid_start", "since"}`` of the run whose engine serves the program now, absent
  when none does. A run that dies leaves it behind: that is how a crash is told from a clean stop.
- ``on_failure``: what monitored traffic meets while no engine serves it (``pass`` or ``drop``, the
  program's config field of the same name).

A pid alone does not say a process is alive (pids are reused): :func:`process_alive` also compares the
process's start time. Likewise a namespace inode is given again to a later namespace: a state file whose
``netns`` or ``netns_cookie`` is not the caller's is not the caller's (:func:`read_state` ignores it).

A namespace that goes away takes its interfaces, and with them the XDP attachment, but not its pins: they
keep the program and its maps loaded. :func:`stale` finds them, :func:`remove_stale` removes them.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
from pathlib import Path
from typing import Any, Dict, List, Optional, Set

from ..net import netlink
from .abi import PROG_NAME
from .env import PIN_ROOT, RUN_DIR, netns_cookie, netns_key, netns_of_key, pin_dir, private_dir, state_path
from .errors import XdpError
from .links import link_xdp, links, xdp_remove

STATE_MODE = 0o600
_INIT_PID_NS = 0xEFFFFFFC  # PROC_PID_INIT_INO (<linux/proc_ns.h>): the host's pid namespace


def process_start(pid: int) -> int:
    """The start time of process ``pid`` (clock ticks since boot, /proc/PID/stat field 22); 0 when there
    is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    # the command name (field 2) is in parentheses and may hold spaces: count fields after its end
    return int(stat[stat.rindex(")") + 2:].split()[19])


def this_process() -> Dict[str, int]:
    """``{"pid", "pid_start"}`` of the calling process, as the state file records processes."""
    pid = os.getpid()
    return {"pid": pid, "pid_start": process_start(pid)}


def process_alive(rec: Optional[Dict[str, Any]]) -> bool:
    """Whether the process a state record names (``pid``, ``pid_start``) still runs."""
    if not rec or not rec.get("pid"):
        return False
    start = process_start(int(rec["pid"]))
    return start != 0 and (not rec.get("pid_start") or start == int(rec["pid_start"]))


def remove_pins(pins: Path) -> None:
    """Removes a pin directory and what it holds, as far as possible (a leftover is no error)."""
    if not pins.is_dir():
        return
    for p in pins.iterdir():
        try:
            p.unlink()
        except OSError:
            pass
    try:
        pins.rmdir()
    except OSError:
        pass


def _load(path: Path) -> Dict[str, Any]:
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return {}


def is_this_netns(state: Dict[str, Any]) -> bool:
    """Whether a state record was written in the calling thread's network namespace."""
    if state.get("netns") != netlink.netns_id():
        return False
    cookie, mine = state.get("netns_cookie"), netns_cookie()
    return not (cookie and mine) or cookie == mine


def read_state(iface: str) -> Dict[str, Any]:
    """The state file of ``iface`` in the calling thread's namespace ({} when absent, unreadable, or
    written by another namespace that had this one's inode)."""
    state = _load(state_path(iface))
    return state if state and is_this_netns(state) else {}


def foreign_state(iface: str) -> bool:
    """Whether ``iface``'s state file exists but is another namespace's (a dead one, whose inode the
    kernel gave to the caller's): its pins are that namespace's leftovers too."""
    state = _load(state_path(iface))
    return bool(state) and not is_this_netns(state)


def write_state(iface: str, state: Dict[str, Any]) -> None:
    """Replaces the state file of ``iface`` at once (a reader never sees half of it), 0600 in 0700
    directories; stamps it with the caller's namespace (``netns``, ``netns_cookie``).

    Also makes ``iface``'s pin directory private: :meth:`XdpProgram.attach` creates it with the umask's
    mode, and writes the state right after pinning.
    """
    path = state_path(iface)
    private_dir(path.parent, RUN_DIR)
    pins = pin_dir(iface)
    if pins.is_dir():
        private_dir(pins, PIN_ROOT)
    record = {**state, "netns": netlink.netns_id(), "netns_cookie": netns_cookie()}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, STATE_MODE)
    try:
        os.fchmod(fd, STATE_MODE)  # whatever the umask
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(record, indent=1) + "\n")
        tmp.replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _remove_empty(*dirs: Path) -> None:
    for d in dirs:
        with contextlib.suppress(OSError):
            d.rmdir()


def detach(iface: str, state: Optional[Dict[str, Any]] = None) -> List[str]:
    """Removes mos-xdp from ``iface`` (and its peer) in the calling thread's namespace: XDP program,
    pins, state file. Works after a crash.

    A program that is not mos-xdp's is left alone (XdpError), and so is a ``state`` of another namespace.
    Returns a line per action taken.
    """
    if state is not None and state.get("netns") not in (None, netlink.netns_id()):
        raise XdpError(f"{iface}'s program was attached in another network namespace (inode {state['netns']}, "
                       f"this is {netlink.netns_id()}): detach it from there")
    state = state if state is not None else read_state(iface)
    done = []
    names = [iface] + ([state["peer"]] if state.get("peer") else [])
    all_links = {lx.ifname: lx for lx in links()}
    pins, sp = pin_dir(iface), state_path(iface)
    if iface not in all_links and not state and not pins.exists() and not sp.exists():
        raise XdpError(f"interface {iface} does not exist")
    for name in names:
        lx = all_links.get(name)
        if lx is None or not lx.prog_id:
            continue
        if lx.prog_name != PROG_NAME and lx.prog_id != state.get("prog_id"):
            raise XdpError(f"{name} has another XDP program ({lx.prog_name or '?'}, id {lx.prog_id}), "
                           "not mos-xdp's: left alone")
        xdp_remove(name, lx.mode)
        if link_xdp(name).prog_id:
            raise XdpError(f"cannot detach XDP program {lx.prog_id} from {name}")
        done.append(f"detached XDP program {lx.prog_id} ({lx.mode}) from {name}")
    if pins.exists():
        remove_pins(pins)
        done.append(f"removed pins {pins}")
    if sp.exists():
        sp.unlink()
        done.append(f"removed state {sp}")
    _remove_empty(pins.parent, sp.parent)
    return done


# ---- leftovers of namespaces that are gone ---------------------------------------------------------------


def _ns_inode(link: str) -> Optional[int]:
    """The inode in a namespace link's text (``net:[4026531833]``)."""
    return int(link[5:-1]) if link.startswith("net:[") and link.endswith("]") else None


def _unescape(field: str) -> str:
    """A /proc/PID/mountinfo path field, whose spaces, tabs, newlines and backslashes are octal escapes."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def live_netns() -> Dict[int, str]:
    """The network namespaces something still holds, by inode, each with a path that opens it: a thread
    lives in it, a process has it open, or a mount namespace of a process has it bind-mounted (``ip
    netns``'s /run/netns/NAME).

    Processes this one may not inspect are skipped. XdpError in a pid namespace other than the host's:
    there /proc does not show every process, and a namespace would look gone that is not.
    """
    try:
        if os.stat("/proc/self/ns/pid").st_ino != _INIT_PID_NS:
            raise XdpError("cannot tell which network namespaces are gone from inside a pid namespace "
                           "(a container): run this on the host")
    except OSError as e:
        raise XdpError(f"cannot inspect namespaces: /proc/self/ns/pid: {e.strerror}") from None
    found: Dict[int, str] = {}
    mount_ns: Set[str] = set()

    def add(link: str, path: str) -> None:
        ino = _ns_inode(link)
        if ino is not None:
            found.setdefault(ino, path)

    for proc in os.scandir("/proc"):
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for task in os.scandir(f"{proc.path}/task"):
                with contextlib.suppress(OSError):
                    add(os.readlink(f"{task.path}/ns/net"), f"{task.path}/ns/net")
        with contextlib.suppress(OSError):
            for fd in os.scandir(f"{proc.path}/fd"):
                with contextlib.suppress(OSError):
                    add(os.readlink(fd.path), fd.path)
        with contextlib.suppress(OSError):
            mnt = os.readlink(f"{proc.path}/ns/mnt")
            if mnt not in mount_ns:
                mount_ns.add(mnt)
                for line in Path(f"{proc.path}/mountinfo").read_text().splitlines():
                    fields = line.split()
                    if len(fields) > 4:  # a bind-mounted namespace file: its root is the namespace
                        add(fields[3], f"{proc.path}/root{_unescape(fields[4])}")
    return found


def _cookie_of(path: str) -> int:
    """The cookie of the namespace at ``path`` (0 when it cannot be entered: it is then taken as alive)."""
    try:
        with netlink.entered(Path(path)):
            return netns_cookie()
    except OSError:
        return 0


def _stale_entries() -> List[Dict[str, Any]]:
    """What :func:`stale` returns, with ``gone`` (the namespace's whole directory is dead), and entries
    without ``iface`` for the empty directories of gone namespaces."""
    keys: Set[str] = set()
    for root in (PIN_ROOT, RUN_DIR):
        with contextlib.suppress(OSError):
            keys |= {d.name for d in root.iterdir() if netns_of_key(d.name) and d.is_dir()}
    mine = netns_key()
    # the caller's namespace is alive whatever /proc says; the others need a scan
    alive = live_netns() if keys - {mine} else {}
    found = []
    for key in sorted(keys):
        ino = netns_of_key(key)
        pins_dir, run_dir = PIN_ROOT / key, RUN_DIR / key
        names: Set[str] = set()
        with contextlib.suppress(OSError):
            names |= {p.name for p in pins_dir.iterdir() if p.is_dir()}
        with contextlib.suppress(OSError):
            names |= {p.stem for p in run_dir.glob("*.json")}
        gone = key != mine and ino not in alive
        states = {name: _load(run_dir / f"{name}.json") for name in names}
        if not gone:
            # the kernel gives a dead namespace's inode to later ones: a recorded cookie tells them apart
            recorded = {name: st.get("netns_cookie") for name, st in states.items() if st.get("netns_cookie")}
            if not recorded:
                continue
            now = netns_cookie() if key == mine else _cookie_of(alive[ino or 0])
            names = {name for name, cookie in recorded.items() if now and cookie != now}
        for name in sorted(names):
            pins, sp = pins_dir / name, run_dir / f"{name}.json"
            found.append({"iface": name, "netns": key, "gone": gone, "reused": not gone,
                          "pin_dir": str(pins) if pins.is_dir() else None,
                          "state_path": str(sp) if sp.is_file() else None, "state": states[name]})
        if gone and not names:
            found.append({"iface": None, "netns": key, "gone": True, "reused": False, "pin_dir": None,
                          "state_path": None, "state": {}})
    return found


def stale() -> List[Dict[str, Any]]:
    """Pins and state files of network namespaces that no longer exist, one dict per interface:
    ``iface``, ``netns`` (the directory name), ``reused``, ``pin_dir`` and ``state_path`` (None when
    absent) and ``state`` (as recorded). XdpError when this cannot be told (see :func:`live_netns`).

    A namespace is gone when nothing holds its inode any more, or when its inode now names another
    namespace (``reused``: the state file's ``netns_cookie`` is not that namespace's)."""
    return [{k: v for k, v in e.items() if k != "gone"} for e in _stale_entries() if e["iface"] is not None]


def remove_stale() -> List[str]:
    """Removes the pins and state files of network namespaces that no longer exist (what :func:`stale`
    finds), and the directories of those namespaces; returns a line per pin directory or state file."""
    done = []
    dead: Set[str] = set()
    touched: Set[str] = set()
    for entry in _stale_entries():
        touched.add(entry["netns"])
        why = f"(network namespace {entry['netns']} is gone)"
        if entry["pin_dir"]:
            remove_pins(Path(entry["pin_dir"]))
            done.append(f"removed pins {entry['pin_dir']} {why}")
        if entry["state_path"]:
            with contextlib.suppress(FileNotFoundError):
                Path(entry["state_path"]).unlink()
            done.append(f"removed state {entry['state_path']} {why}")
        if entry["gone"]:
            dead.add(entry["netns"])
    for key in dead:
        for leftover in (RUN_DIR / key).glob(".*.tmp"):  # a writer's, killed between writing and renaming
            with contextlib.suppress(OSError):
                leftover.unlink()
    for key in touched:  # an empty directory only: a live namespace's (inode reused) may have its own
        _remove_empty(PIN_ROOT / key, RUN_DIR / key)
    return done
