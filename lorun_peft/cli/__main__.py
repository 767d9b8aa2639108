"""``python -m lorun_peft.cli``: the ``lorun`` command without the console script."""

import sys

from lorun_peft.cli import main

sys.exit(main())
