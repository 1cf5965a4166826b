"""`python -m benchmarks ...` from the repository root: the same as `bucketserve bench ...`."""
import sys

from .cli import main

sys.exit(main())
