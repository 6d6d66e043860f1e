"""``python -m batch JOB [options]``: the same as ``spark-submit batch/main.py`` (local master)."""

import sys

from batch.main import main

sys.exit(main())
