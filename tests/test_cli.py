"""`run_cli`: a program's exit skips the final collection, and nothing else changes."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_run_cli_freezes_the_heap_at_exit_and_keeps_handlers_and_status(tmp_path):
    marker = tmp_path / "handler_ran"
    program = textwrap.dedent(f"""
        import atexit, gc, sys
        from playlistai.cli import run_cli

        def after_everything():  # registered first, so it runs last: after run_cli's handler
            with open({str(marker)!r}, "w") as f:
                f.write(str(gc.get_freeze_count()))

        atexit.register(after_everything)
        run_cli(lambda: sys.exit(3))
    """)
    proc = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr
    assert int(marker.read_text()) > 1000     # every live object was frozen before the interpreter's teardown
