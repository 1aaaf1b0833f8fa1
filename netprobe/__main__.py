import sys

from netprobe.cli.main import main

sys.exit(main())
