import sys

from mimo.cli import main

sys.exit(main())
