"""python -m wan_train.lora ... (see wan_train.lora.cli)."""

import sys

from wan_train.lora.cli import main

sys.exit(main())
