"""What an attach leaves behind it (the XDP attachment, the pins, the state file), and its removal.

The state file (``/run/mos-xdp/<ifname>.json``) records what a later process needs to recognise the
program: its id, the peer, the workers and queues, the namespace, and who is responsible for it:

- ``owner``: ``"attach"`` (``mos-xdp attach`` made it: it stays until ``mos-xdp detach``) or ``"run"`` (a
  ``mos-xdp run`` attached it for itself, and detaches it when it ends); ``pid`` and ``pid_start`` are the
  process that attached it.
- ``engine``: ``{"pid", "pid_start", "since"}`` of the run whose engine serves the program now, absent
  when none does. A run that dies leaves it behind: that is how a crash is told from a clean stop.
- ``on_failure``: what monitored traffic meets while no engine serves it (``pass`` or ``drop``, the
  program's config field of the same name).

A pid alone does not say a process is alive (pids are reused): :func:`process_alive` also compares the
process's start time.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional

from .abi import PROG_NAME
from .env import RUN_DIR, pin_dir, state_path
from .errors import XdpError
from .links import link_xdp, links, xdp_remove


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


def read_state(iface: str) -> Dict[str, Any]:
    """The state file of ``iface`` ({} when absent or unreadable)."""
    try:
        return dict(json.loads(state_path(iface).read_text()))
    except (OSError, ValueError):
        return {}


def write_state(iface: str, state: Dict[str, Any]) -> None:
    """Replaces the state file of ``iface`` at once (a reader never sees half of it)."""
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    tmp = state_path(iface).with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=1) + "\n")
    tmp.replace(state_path(iface))


def detach(iface: str, state: Optional[Dict[str, Any]] = None) -> List[str]:
    """Removes mos-xdp from ``iface`` (and its peer): XDP program, pins, state file. Works after a crash.

    A program that is not mos-xdp's is left alone (XdpError). Returns a line per action taken.
    """
    state = state if state is not None else read_state(iface)
    done = []
    names = [iface] + ([state["peer"]] if state.get("peer") else [])
    all_links = {lx.ifname: lx for lx in links()}
    if iface not in all_links and not state and not pin_dir(iface).exists():
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
    pins = pin_dir(iface)
    if pins.exists():
        remove_pins(pins)
        done.append(f"removed pins {pins}")
    sp = state_path(iface)
    if sp.exists():
        sp.unlink()
        done.append(f"removed state {sp}")
    return done
