import sys

from agent.service.cli import main

sys.exit(main())
