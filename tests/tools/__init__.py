"""Helper scripts for the test-suite (pcap decoding, reference checks, netns capture)."""
