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
    run.add_argument("--av-workers", type=int, metavar="N", help="run each node's A/V Edge interfaces on N worker "
                     "processes each (as `serve av-edge --workers N`: SO_REUSEPORT, relay-port slices, MRAS "
                     "HMAC credentials); default: in-process")
    add_load_control_arguments(run)


def add_load_control_arguments(run: argparse.ArgumentParser) -> None:
    """SIPp-style overrides of every sign-in load phase, and k6-style thresholds (issue 12)."""
    group = run.add_argument_group("load control (override every sign-in load phase of the scenario)")
    group.add_argument("--rate", type=float, metavar="R", help="new sessions per second (SIPp -r)")
    group.add_argument("--rate-increase", type=float, metavar="R",
                       help="ramp: add R sessions/s every --rate-interval seconds (SIPp -rate_increase)")
    group.add_argument("--rate-interval", type=float, metavar="S", help="ramp period in seconds (default 1)")
    group.add_argument("--rate-max", type=float, metavar="R", help="ramp ceiling in sessions/s (SIPp -rate_max)")
    group.add_argument("--concurrency", type=int, metavar="N", help="at most N sign-ins in flight (SIPp -l)")
    group.add_argument("--count", type=int, metavar="N", help="N sessions in all per phase (SIPp -m)")
    group.add_argument("--duration", type=float, metavar="S", help="seconds each phase runs")
    loop = group.add_mutually_exclusive_group()
    loop.add_argument("--closed-loop", dest="closed_loop", action="store_true", default=None,
                      help="start a session when one is answered, --concurrency (default 1) at a time")
    loop.add_argument("--open-loop", dest="closed_loop", action="store_false",
                      help="start sessions at the rate whatever the answers (the default)")
    group.add_argument("--threshold", action="append", default=[], metavar="EXPR",
                       help="k6-style pass/fail on the load, repeatable: e.g. 'sign_in_ms:p99<500', "
                       "'sign_in_ok_ratio>0.999', 'fail_timeout==0'; a failing one makes the exit code 1")
