"""`python -m jaxllm ...` runs the `jaxllm` command line."""

import sys

from jaxllm.entrypoints.cli import main

sys.exit(main())
