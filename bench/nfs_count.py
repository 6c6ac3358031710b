"""nfstream peer for the benchmark: one meter, no nDPI, payload accounting; optionally a trivial plugin.

    nfs_count.py FILE.pcap [--plugin]  ->  flows=N packets=N payload=N plugin_calls=N

``accounting_mode=3`` makes nfstream count transport payload bytes. nfstream does not reassemble:
its payload count includes every retransmitted copy, and it never knows about bytes lost in capture.
"""

import sys

from nfstream import NFPlugin, NFStreamer


class Trivial(NFPlugin):
    def on_init(self, packet, flow):
        flow.udps.calls = 1

    def on_update(self, packet, flow):
        flow.udps.calls += 1


def main():
    pcap = sys.argv[1]
    plugin = "--plugin" in sys.argv[2:]
    st = NFStreamer(source=pcap, n_meters=1, accounting_mode=3, statistical_analysis=False, splt_analysis=0,
                    n_dissections=0, udps=Trivial() if plugin else None)
    flows = packets = payload = calls = 0
    for f in st:
        flows += 1
        packets += f.bidirectional_packets
        payload += f.bidirectional_bytes
        if plugin:
            calls += f.udps.calls
    print(f"flows={flows} packets={packets} payload={payload} plugin_calls={calls}")


if __name__ == "__main__":
    main()
