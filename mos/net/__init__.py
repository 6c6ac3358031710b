"""Networking plumbing on netlink (pyroute2): links, XDP attach/detach, namespaces, veth topologies.

:mod:`mos.net.netlink` is the layer that talks to the kernel (no ``ip`` subprocess, no ``ip -j`` parsing);
:mod:`mos.net.topology` builds throw-away namespace topologies on it for the tests, the benchmarks and the
demo, and removes everything it created on every exit path.
"""
