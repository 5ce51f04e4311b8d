"""A child process for tests/test_discovery.py, run inside a test namespace: it drives cube.cluster.discovery and
reports what happens as JSON lines on stdout (each with a wall-clock "t" so the test can time discovery).

    advertise KIND NAME PORT [key=value ...]   register, print "ready", close on SIGTERM, print "closed"
    browse KIND                                print "add" / "remove" for each change, until SIGTERM
    find-manager TIMEOUT                       print "manager" with the result (or null) and the elapsed time
Every report carries "netns": the inode of this process's network namespace.
"""

import dataclasses
import json
import os
import signal
import sys
import threading
import time

from cube.cluster import discovery


def say(event: str, **fields) -> None:
    fields.update(event=event, t=time.time(), netns=os.stat("/proc/self/ns/net").st_ino)
    print(json.dumps(fields), flush=True)


STOP = threading.Event()


def wait_for_sigterm() -> None:
    say("waiting")
    STOP.wait()


def advertise(kind: str, name: str, port: str, *pairs: str) -> None:
    properties = dict(pair.split("=", 1) for pair in pairs)
    say("start")
    adv = discovery.Advertiser(kind, name, int(port), properties)
    say("ready", instance=adv.instance, addresses=adv.addresses, properties=adv.properties)
    wait_for_sigterm()
    started = time.monotonic()
    adv.close()
    say("closed", seconds=time.monotonic() - started)


def browse(kind: str) -> None:
    def report(event):
        return lambda found: say(event, found=dataclasses.asdict(found), url=found.url)

    browser = discovery.Browser(kind, on_add=report("add"), on_remove=report("remove"))
    wait_for_sigterm()
    started = time.monotonic()
    browser.close()
    say("closed", seconds=time.monotonic() - started)


def find_manager(timeout: str) -> None:
    started = time.monotonic()
    found = discovery.find_manager(float(timeout))
    say("manager", found=dataclasses.asdict(found) if found else None, seconds=time.monotonic() - started)


if __name__ == "__main__":
    # Installed first, so a SIGTERM during registration still ends in a clean close().
    signal.signal(signal.SIGTERM, lambda *_: STOP.set())
    {"advertise": advertise, "browse": browse, "find-manager": find_manager}[sys.argv[1]](*sys.argv[2:])
