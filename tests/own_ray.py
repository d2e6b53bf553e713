"""A Ray of the tests' own, never another one on the machine, and ended without ``ray stop``.

``OwnRay().root`` is a temp dir to use as ``$RAY_TMPDIR``: a local instance (``ray.init()`` without
an address) looks only there for a cluster to join, ``ray start`` records its cluster there, and
every Ray process started with it (by this process, a subprocess, or ``ray start``) inherits it in
its environment. :meth:`OwnRay.processes` finds exactly those processes (whatever names Ray gave
them), :meth:`OwnRay.stop` ends them: never ``ray stop``, which ends every Ray process of the user.
The conftest gives the session one (``$RAY_TMPDIR`` for the whole run), test_ray_executor each of
its tests one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile


class OwnRay:
    def __init__(self):
        # short, in /tmp: Ray's socket paths under it must stay within 107 bytes
        self.root = tempfile.mkdtemp(prefix="apr-ray-", dir="/tmp" if os.path.isdir("/tmp") else None)

    def processes(self) -> list:
        """The processes started with this Ray's temp dir (this process and its parents aside)."""
        import psutil

        me = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
        found = []
        for proc in psutil.process_iter():
            if proc.pid in me:
                continue
            with contextlib.suppress(psutil.Error):
                if proc.environ().get("RAY_TMPDIR") == self.root:
                    found.append(proc)
        return found

    def kill(self) -> list[int]:
        """End every process of this Ray (SIGKILL) and wait for them; returns their ids."""
        import psutil

        procs = self.processes()
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(procs, timeout=60)
        return [proc.pid for proc in procs]

    def stop(self) -> None:
        """Disconnect this process (if Ray is imported and connected), end the processes, remove the dir."""
        ray = sys.modules.get("ray")
        if ray is not None and ray.is_initialized():
            ray.shutdown()
        with contextlib.suppress(ImportError):  # psutil (a test dependency) absent: nothing to sweep with
            self.kill()
        shutil.rmtree(self.root, ignore_errors=True)
