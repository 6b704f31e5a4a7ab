import sys

from meshplane.cli import main

sys.exit(main())
