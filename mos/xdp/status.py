"""What mos-xdp has on each interface of the calling thread's network namespace, leftovers of crashed runs
included, and what namespaces that are gone left behind."""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from .abi import PROG_NAME
from .env import PIN_ROOT, RUN_DIR, netns_key, pin_dir
from .errors import XdpError
from .links import link_xdp, links
from .program import XdpProgram
from .state import foreign_state, process_alive, read_state, stale

TRAFFIC = {"drop": "monitored traffic is dropped (on-failure drop)",
           "pass": "monitored traffic passes uninspected (on-failure pass)"}
"""What monitored traffic meets while no engine serves the program, by failure mode."""
STALE_FIX = "mos-xdp detach --stale"


def traffic_without_engine(on_failure: Optional[str]) -> str:
    """The sentence of :data:`TRAFFIC` for a failure mode (``pass``, ``drop``)."""
    return TRAFFIC.get(on_failure or "", f"monitored traffic meets failure mode {on_failure!r}")


def _engine(st: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    rec = st.get("engine")
    return {"pid": rec.get("pid"), "alive": process_alive(rec)} if isinstance(rec, dict) else None


def _dead_run(name: str, st: Dict[str, Any], on_failure: Optional[str]) -> Optional[str]:
    """The problem of a program whose run is gone (see :mod:`mos.xdp.state`), None when it has none."""
    fix = f"run mos-xdp detach {name}, or start mos-xdp run again (it adopts the program)"
    traffic = traffic_without_engine(on_failure)
    engine = st.get("engine")
    if isinstance(engine, dict) and not process_alive(engine):
        return f"its engine (mos-xdp run, pid {engine.get('pid')}) is gone (crashed?): {traffic}; {fix}"
    if st.get("owner") == "run" and not engine and not process_alive(st):
        return f"the mos-xdp run that attached it (pid {st.get('pid')}) is gone (crashed?): {traffic}; {fix}"
    return None


def status(iface: Optional[str] = None) -> List[Dict[str, Any]]:
    """What mos-xdp has on each interface of the calling thread's namespace (or on ``iface``).

    One dict per interface that has an XDP program, mos-xdp pins or a state file: ``iface``, ``netns``
    (its directory under the pin root), ``stale`` (False: see :func:`stale_status`), ``attached`` (bool),
    ``prog_id``, ``prog_name``, ``mode``, ``ours`` (the program is xdp_mos), ``pinned``, ``state``,
    ``counters`` (when pinned maps can be read), ``on_failure`` (the program's failure mode, from its
    config map when pinned), ``engine`` (None, or ``{"pid", "alive"}`` of the run serving it), and
    ``problem``: None or a sentence with the command that fixes it, for a leftover (a program without
    pins/state after a crash, pins without a program, ...) or a program whose run is gone.
    """
    key = netns_key()
    all_links = links()
    names = {lx.ifname for lx in all_links if lx.prog_id}
    if (PIN_ROOT / key).is_dir():
        names |= {p.name for p in (PIN_ROOT / key).iterdir() if p.is_dir()}
    if (RUN_DIR / key).is_dir():
        names |= {p.stem for p in (RUN_DIR / key).glob("*.json")}
    peers = {read_state(n).get("peer") for n in names} - {None}
    if iface is not None:
        if iface not in names:
            link_xdp(iface)  # XdpError when the interface does not exist
        names = {iface}
    by_name = {lx.ifname: lx for lx in all_links}
    result = []
    for name in sorted(names):
        if name in peers and iface is None and not pin_dir(name).exists():
            continue  # reported with its main interface
        if iface is None and foreign_state(name) and not (by_name.get(name) and by_name[name].prog_id):
            continue  # a dead namespace's, reported by stale_status()
        lx = by_name.get(name)
        st = read_state(name)
        pinned = XdpProgram.is_pinned(name)
        info: Dict[str, Any] = {
            "iface": name, "netns": key, "stale": False, "exists": lx is not None,
            "attached": bool(lx and lx.prog_id), "prog_id": lx.prog_id if lx else 0,
            "prog_name": lx.prog_name if lx else "", "mode": lx.mode if lx else "", "pinned": pinned,
            "state": st, "counters": None, "on_failure": st.get("on_failure"), "engine": _engine(st),
            "problem": None,
        }
        info["ours"] = info["prog_name"] == PROG_NAME or (bool(st) and info["prog_id"] == st.get("prog_id"))
        if pinned:
            try:
                with XdpProgram.open_pinned(name) as prog:
                    info["counters"] = prog.stats()
                    info["on_failure"] = prog.on_failure()
            except (XdpError, OSError) as e:
                info["problem"] = f"pinned maps unreadable: {e}"
        if info["attached"] and not info["ours"]:
            info["problem"] = f"another XDP program ({info['prog_name'] or '?'}) is attached, not mos-xdp's"
        elif not info["attached"] and foreign_state(name):
            info["problem"] = ("pins/state left by a network namespace that no longer exists (this one has its "
                               f"inode now): run mos-xdp detach {name} or {STALE_FIX}")
        elif info["attached"] and not (pinned and st):
            info["problem"] = ("mos-xdp program left attached without pins/state (crashed run?): "
                               f"run mos-xdp detach {name}")
        elif info["attached"] and st.get("prog_id") != info["prog_id"]:
            info["problem"] = (f"attached program {info['prog_id']} is not the one recorded "
                               f"({st.get('prog_id')}): run mos-xdp detach {name}")
        elif not info["attached"] and (pinned or st):
            info["problem"] = f"pins/state left without an attached program: run mos-xdp detach {name}"
        elif info["attached"] and info["problem"] is None:
            info["problem"] = _dead_run(name, st, info["on_failure"])
        result.append(info)
    return result


def stale_status() -> List[Dict[str, Any]]:
    """What network namespaces that no longer exist left (:func:`mos.xdp.state.stale`), as status dicts:
    ``iface``, ``netns``, ``stale`` (True), ``pin_dir``, ``state_path``, ``state`` and ``problem`` (what
    it costs, and ``mos-xdp detach --stale``, which removes it)."""
    result = []
    for entry in stale():
        held = "its pins keep the program and maps loaded" if entry["pin_dir"] else "its state file is left"
        whose = (f"an earlier network namespace with inode {entry['netns']} (another one has it now)"
                 if entry["reused"] else f"network namespace {entry['netns']}")
        entry.update(stale=True, pinned=bool(entry["pin_dir"]),
                     problem=f"{entry['iface']} of {whose}, which no longer exists: {held}; run {STALE_FIX}")
        result.append(entry)
    return result
