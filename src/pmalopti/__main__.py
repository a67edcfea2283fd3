import sys

from pmalopti.cli import main

sys.exit(main())
