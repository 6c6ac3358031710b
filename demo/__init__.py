"""The mos-xdp demo, outside the library: ``python -m demo`` (what ``bash scripts/demo.sh`` runs).

:mod:`demo.live` puts a client, mos-xdp inline and a server in network namespaces and sends real traffic
through the apps; :mod:`demo.offline` builds a capture and runs the ``mos-xdp`` commands over it, and is
what runs where the live demo cannot (not root, no bcc, kernel headers or XDP).
"""
