"""``python -m tfbn.report EXPERIMENT_DIR``: see `tfbn.report`."""

import sys

from tfbn.report import main

sys.exit(main())
