"""hpcgear: run Flywheel-style gears on SLURM clusters.

The library never prints, exits or configures logging; the CLI does.
"""

import logging

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())
