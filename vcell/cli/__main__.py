"""`python -m vcell.cli ...` == `vcell ...`."""

import sys

from vcell.cli import main

sys.exit(main())
