"""`python -m agent_runtime`: the same as the `agent-runtime` command."""

import sys

from agent_runtime.cli import main

sys.exit(main())
