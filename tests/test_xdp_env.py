"""What XDP control says when the host lacks something (mos.xdp.env): each a one-line XdpError that names
the fix, told apart by cause."""

from __future__ import annotations

import builtins
import importlib.util
from pathlib import Path
from typing import Any

import pytest

from mos.xdp import XdpError, env

DEBIAN_BCC = Path("/usr/lib/python3/dist-packages/bcc")


def _no_bcc(monkeypatch: pytest.MonkeyPatch, findable: bool) -> None:
    real = builtins.__import__

    def fake(name: str, *args: Any, **kw: Any) -> Any:
        if name == "bcc":
            raise ImportError("no bcc here")
        return real(name, *args, **kw)

    monkeypatch.setattr(builtins, "__import__", fake)
    real_find = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: (real_find(name, *a) if findable else None) if name == "bcc"
                        else real_find(name, *a))


@pytest.mark.skipif(not DEBIAN_BCC.is_dir(), reason="needs Debian's python3-bpfcc on the machine")
def test_bcc_installed_but_not_importable_says_how(monkeypatch: pytest.MonkeyPatch) -> None:
    _no_bcc(monkeypatch, findable=False)
    with pytest.raises(XdpError) as e:
        env.import_bcc()
    msg = str(e.value)
    assert "is installed but" in msg and "cannot import it" in msg and str(DEBIAN_BCC) in msg
    assert "--system-site-packages" in msg and "\n" not in msg


def test_bcc_that_fails_to_import_is_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    _no_bcc(monkeypatch, findable=True)
    with pytest.raises(XdpError, match="bcc is not installed .*apt-get install python3-bpfcc"):
        env.import_bcc()
