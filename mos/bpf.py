from .xdp import *  # noqa: F403 -- shim until the integrator moves `from mos import bpf` to mos.xdp
