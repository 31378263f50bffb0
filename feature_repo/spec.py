"""The views this repo declares: `shopguide.feature_spec`'s, with the sequence length that
`shopguide features` built the tables with (recorded in data/spec.json; the default before)."""

import json
from pathlib import Path

from shopguide.config import FeatureParams
from shopguide.feature_spec import SPEC_FILE, feature_views

_spec = Path(__file__).with_name("data") / SPEC_FILE
_length = (
    json.loads(_spec.read_text())["sequence_length"]
    if _spec.is_file()
    else FeatureParams().sequence_length
)
VIEWS = feature_views(_length)
