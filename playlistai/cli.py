"""How the project's command-line programs (the entry points, `playlistai.launch`) run.

`run_cli(app)` calls the program and, at exit, skips the interpreter's last garbage collection.
A stage's process imports mlflow, pandas, pyarrow and more (hundreds of thousands of objects);
when it exits, CPython walks all of them once more looking for cycles to collect, about a
second on this project's 2-core machines (`bench/bench_startup.py`), for memory the operating
system takes back anyway. `gc.freeze()` as an exit handler moves every object out of the
collector's reach before that walk. Nothing else changes: the other exit handlers (MLflow's,
Ray's, logging's) still run, objects still go when their last reference does, the exit status
is the program's. Only cyclic garbage left at exit is not collected, which no stage relies on
(files and writers are closed by `with` blocks, not by the collector).
"""

from __future__ import annotations

import atexit
import gc
from collections.abc import Callable


def run_cli(program: Callable[[], object]) -> None:
    atexit.register(gc.freeze)
    program()
