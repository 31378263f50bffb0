"""Component of the `ingest` step (as `shopguide ingest`)."""

from kfp import dsl
from kfp.dsl import Dataset, Output

from components.settings import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def ingest(
    raw_path: str,
    params_json: str,
    events: Output[Dataset],
    exposures: Output[Dataset],
    queries: Output[Dataset],
    raw_fingerprint: str = "",
) -> None:
    """Raw data (format: data.adapter) -> canonical events, labelled examples (exposures and
    sampled items) with the time split and taobao-rank-v1 queries, as `shopguide ingest`.

    The data card goes into the exposures' metadata, where the KFP UI shows it next to the data.
    `raw_fingerprint` (the raw file's sha256, from `fingerprint_inputs`) is recorded there too;
    as a parameter it is what makes the step's cache key change when the data does.
    """
    from pathlib import Path

    from shopguide.logs import setup_logging

    setup_logging()
    from shopguide.adapters import ingest as ingest_raw
    from shopguide.config import params_from_json

    p = params_from_json(params_json)
    card = ingest_raw(
        Path(raw_path), Path(events.path), Path(exposures.path), Path(queries.path), p
    )
    exposures.metadata.update(card)
    exposures.metadata["raw_fingerprint"] = raw_fingerprint
