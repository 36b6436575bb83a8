"""``python -m retrieval_pipeline.cli``: the same as ``qwen3vl-rag``."""

import sys

from . import main

sys.exit(main())
