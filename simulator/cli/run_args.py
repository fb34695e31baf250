"""The options of ``edgesim run`` (apart from :mod:`simulator.cli.run`, so ``--help`` loads no lab)."""

from __future__ import annotations

import argparse


def add_run_arguments(run: argparse.ArgumentParser) -> None:
    run.add_argument("file", nargs="?", default=None, help="scenario file (default: the shipped 2-node scaled "
                     "consolidated Edge scenario)")
    run.add_argument("--out", "--report-dir", dest="out", metavar="DIR", default=None,
                     help="the run's output folder: report.json, report.html, intervals.csv, sessions.csv "
                     "(default: reports/<UTC time>-<scenario>/, with reports/latest pointing at it); "
                     "a folder that holds another run is refused without --force")
    run.add_argument("--force", action="store_true", help="replace the files of the run already in --out")
    run.add_argument("--junit", metavar="FILE", help="also write JUnit XML: one testcase per rule")
    run.add_argument("--details", action="store_true", help="print every rule's probe detail, not only "
                     "those of the rules that differ from expectations")
    run.add_argument("--rules", nargs="+", metavar="ID", help="only these rule ids")
    run.add_argument("--timeout", type=float, metavar="S",
                     help="seconds per probe step, above 0 (default: the scenario's)")
    run.add_argument("--lab-prefix", metavar="127.N", help="put the lab on 127.N.0.0/16 (default: the scenario's "
                     "lab.loopback_prefix, or a free one when that is busy)")
    run.add_argument("--pcap", metavar="FILE", help="capture the run's traffic on the lab's loopback /16 into FILE "
                     "(tcpdump or dumpcap; needs the privilege to capture)")
    run.add_argument("--keylog", metavar="FILE", help="append every TLS connection's secrets to FILE (NSS key log: "
                     "tshark -o tls.keylog_file:FILE); SSLKEYLOGFILE works too")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--no-load", action="store_true", help="probe the rules only; skip load phases and events")
    run.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop",
                     help="event loop (default uvloop; the test suite runs the lab on asyncio's)")
