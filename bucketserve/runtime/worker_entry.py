"""A worker process's main: `python -m bucketserve.runtime.worker_entry MODULE:FUNCTION FD` (see worker_process.py).

A module of its own that nothing imports: run with `-m`, a module the package already imports (tp_executor,
tp_compile) would execute a second time as __main__, which runpy warns about.
"""
import importlib
import sys
from multiprocessing.connection import Connection

if __name__ == "__main__":
    module, function = sys.argv[1].split(":")
    getattr(importlib.import_module(module), function)(Connection(int(sys.argv[2])))
