/* libnids peer for the benchmark: reassemble every TCP connection of a capture and count the bytes
 * libnids delivers to its client, per direction.
 *
 *   nids_count FILE.pcap  ->  one line: "packets=N conns=N c2s=N s2c=N delivered=N"
 *
 * Checksums are not verified (the capture's are right, but a monitor should not pay for it), port-scan
 * detection is off, the stream table holds 64K streams, and libnids' "workarounds" are on.
 * Built by bench/run.py: gcc -O2 nids_count.c -lnids -lpcap -lnet -lgthread-2.0 -lglib-2.0
 */
#include <nids.h>
#include <pcap.h>
#include <stdio.h>
#include <stdlib.h>

static unsigned long long c2s, s2c, conns, packets;

static void quiet_syslog(int type, int err, void *iph, void *data)
{
    (void)type, (void)err, (void)iph, (void)data; /* libnids reports oddities through syslog: drop them */
}

static void on_tcp(struct tcp_stream *ts, void **param)
{
    (void)param;
    switch (ts->nids_state) {
    case NIDS_JUST_EST:
        ts->client.collect++; /* bytes the client receives (server to client) */
        ts->server.collect++; /* bytes the server receives (client to server) */
        conns++;
        break;
    case NIDS_DATA:
        if (ts->server.count_new)
            c2s += (unsigned long long)ts->server.count_new;
        if (ts->client.count_new)
            s2c += (unsigned long long)ts->client.count_new;
        break;
    default:
        break;
    }
}

/* counts packets, then hands them to libnids */
static void on_ip_frag(void *data, int len)
{
    (void)data, (void)len;
    packets++;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s FILE.pcap\n", argv[0]);
        return 2;
    }
    nids_params.filename = argv[1];
    nids_params.device = NULL;
    nids_params.n_tcp_streams = 1 << 16; /* 64K streams, far more than the capture has open at once
                                           * (libnids' default is 1040; it allocates the table up front) */
    nids_params.n_hosts = 1 << 16;
    nids_params.scan_num_hosts = 0;
    nids_params.syslog = quiet_syslog;
    nids_params.tcp_workarounds = 1;
    nids_params.multiproc = 0;
    static struct nids_chksum_ctl nochk = {0, 0, NIDS_DONT_CHKSUM, 0};
    nids_register_chksum_ctl(&nochk, 1);
    if (!nids_init()) {
        fprintf(stderr, "nids_init: %s\n", nids_errbuf);
        return 1;
    }
    nids_register_ip_frag(on_ip_frag);
    nids_register_tcp(on_tcp);
    nids_run();
    printf("packets=%llu conns=%llu c2s=%llu s2c=%llu delivered=%llu\n", packets, conns, c2s, s2c, c2s + s2c);
    return 0;
}
