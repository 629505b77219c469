import sys

from ims.cli import main

sys.exit(main())
