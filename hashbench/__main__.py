import sys

from hashbench.platform.cli import main

sys.exit(main())
