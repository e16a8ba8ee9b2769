"""Reading gdb's `thread apply all bt`: every thread, its frames, llama.cpp's own frames first."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from llamactl.serve.stacks import parse_gdb, thread_stacks

GDB_OUT = """[New LWP 4242]
[Thread debugging using libthread_db enabled]
0x00007f1 in __futex_abstimed_wait_common64 (private=0) at ./nptl/futex-internal.c:57

Thread 2 (Thread 0x7f2 (LWP 4242) "llama-server"):
#0  0x00007f1 in __futex_abstimed_wait_common64 (private=0) at ./nptl/futex-internal.c:57
#1  0x00007f3 in std::condition_variable::wait(std::unique_lock<std::mutex>&) () from /lib/libstdc++.so.6
#2  0x000055 in server_queue::start_loop(long) () at tools/server/server-queue.cpp:210
#3  0x000056 in main ()

Thread 1 (Thread 0x7f4 (LWP 4241) "llama-server"):
#0  0x00007f5 in __GI___poll (fds=0x1, nfds=1, timeout=-1) at ../sysdeps/unix/sysv/linux/poll.c:29
#1  0x000057 in httplib::Server::listen_internal() ()
[Inferior 1 (process 4241) detached]
"""


def test_every_thread_and_its_frames():
    st = parse_gdb(GDB_OUT, 4241)
    assert [t["id"] for t in st.threads] == [2, 1] and st.threads[0]["lwp"] == 4242
    assert st.threads[0]["name"] == "llama-server" and len(st.threads[0]["frames"]) == 4
    assert st.threads[0]["frames"][2].startswith("#2 server_queue::start_loop")
    line = st.summary()[0]
    assert line.startswith("thread 2 llama-server: #0 __futex_abstimed_wait_common64")   # where it waits
    assert "<- #2 server_queue::start_loop" in line and "condition_variable" not in line     # then llama.cpp's own
    assert st.error is None


def test_no_threads_is_said():
    st = parse_gdb("ptrace: Operation not permitted.\n", 1)
    assert not st.threads and "Operation not permitted" in (st.error or "")


def test_gdb_missing_is_named(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    st = thread_stacks(os.getpid())
    assert st.error and "apt-get install gdb" in st.error


@pytest.mark.skipif(shutil.which("gdb") is None, reason="gdb not installed (.ci/run installs it)")
def test_a_live_process_is_read_and_left_running():
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        st = thread_stacks(p.pid)
        assert st.threads and any("sleep" in f or "select" in f for t in st.threads for f in t["frames"]), st
        assert p.poll() is None           # detached, still running
    finally:
        p.kill()
        p.wait()
