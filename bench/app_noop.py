"""Benchmark app: no handler at all (the baseline for the cost of a handler call)."""


def init(monitor):
    pass


def finish(monitor):
    print(f"events=0 packets={monitor.stats()['packets']}")
