"""Image every component runs in: the shopguide image, which already holds shopguide and kfp.

Read at import time, so set SHOPGUIDE_IMAGE before compiling to pin a registry mirror or a tag.
"""

import os

DEFAULT_IMAGE = "ghcr.io/shopguide/shopguide:0.1.0"
IMAGE = os.environ.get("SHOPGUIDE_IMAGE", DEFAULT_IMAGE)
