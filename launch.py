"""`python launch.py COMMAND ...` is exactly `vcell COMMAND ...` (dispatch only, no logic).

    python launch.py atlas synth                 # the demo atlas (20,000 simulated cells)
    python launch.py atlas info data/demo.zarr
    python launch.py --help
"""

import sys

from vcell.cli import main

if __name__ == "__main__":
    sys.exit(main())
