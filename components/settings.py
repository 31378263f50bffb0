"""Images the components run in: the shopguide image (CPU torch), which already holds
shopguide and kfp, and its CUDA build (images/Containerfile.cuda) for the steps that reserve
a GPU (train, finetune).

Read at import time, so set SHOPGUIDE_IMAGE / SHOPGUIDE_GPU_IMAGE before compiling to pin a
registry mirror or a tag.
"""

import os

DEFAULT_IMAGE = "ghcr.io/shopguide/shopguide:0.1.0"
DEFAULT_GPU_IMAGE = "ghcr.io/shopguide/shopguide-cuda:0.1.0"
IMAGE = os.environ.get("SHOPGUIDE_IMAGE", DEFAULT_IMAGE)
GPU_IMAGE = os.environ.get("SHOPGUIDE_GPU_IMAGE", DEFAULT_GPU_IMAGE)
