"""What mos-xdp has on each interface of this namespace, leftovers of crashed runs included."""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from .abi import PROG_NAME
from .env import PIN_ROOT, RUN_DIR, pin_dir
from .errors import XdpError
from .links import link_xdp, links
from .program import XdpProgram
from .state import read_state


def status(iface: Optional[str] = None) -> List[Dict[str, Any]]:
    """What mos-xdp has on each interface of this namespace (or on ``iface``).

    One dict per interface that has an XDP program, mos-xdp pins or a state file: ``iface``,
    ``attached`` (bool), ``prog_id``, ``prog_name``, ``mode``, ``ours`` (the program is xdp_mos),
    ``pinned``, ``state``, ``counters`` (when pinned maps can be read), and ``problem``: None or a
    sentence for a leftover (a program without pins/state after a crash, pins without a program, ...).
    """
    all_links = links()
    names = {lx.ifname for lx in all_links if lx.prog_id}
    if PIN_ROOT.is_dir():
        names |= {p.name for p in PIN_ROOT.iterdir() if p.is_dir()}
    if RUN_DIR.is_dir():
        names |= {p.stem for p in RUN_DIR.glob("*.json")}
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
        lx = by_name.get(name)
        st = read_state(name)
        pinned = XdpProgram.is_pinned(name)
        info: Dict[str, Any] = {
            "iface": name, "exists": lx is not None, "attached": bool(lx and lx.prog_id),
            "prog_id": lx.prog_id if lx else 0, "prog_name": lx.prog_name if lx else "",
            "mode": lx.mode if lx else "", "pinned": pinned, "state": st, "counters": None, "problem": None,
        }
        info["ours"] = info["prog_name"] == PROG_NAME or (bool(st) and info["prog_id"] == st.get("prog_id"))
        if pinned:
            try:
                with XdpProgram.open_pinned(name) as prog:
                    info["counters"] = prog.stats()
            except (XdpError, OSError) as e:
                info["problem"] = f"pinned maps unreadable: {e}"
        if info["attached"] and not info["ours"]:
            info["problem"] = f"another XDP program ({info['prog_name'] or '?'}) is attached, not mos-xdp's"
        elif info["attached"] and not (pinned and st):
            info["problem"] = ("mos-xdp program left attached without pins/state (crashed run?): "
                               f"run mos-xdp detach {name}")
        elif info["attached"] and st.get("prog_id") != info["prog_id"]:
            info["problem"] = (f"attached program {info['prog_id']} is not the one recorded "
                               f"({st.get('prog_id')}): run mos-xdp detach {name}")
        elif not info["attached"] and (pinned or st):
            info["problem"] = f"pins/state left without an attached program: run mos-xdp detach {name}"
        result.append(info)
    return result
