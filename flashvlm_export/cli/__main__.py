"""python -m flashvlm_export.cli: the flashvlm-export command."""

import sys

from flashvlm_export.cli import main

sys.exit(main())
