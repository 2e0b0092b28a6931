import sys

from datprl_edge.cli.main import main

sys.exit(main())
