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
) -> None:
    """Raw data (format: data.adapter) -> canonical events, labelled examples (exposures and
    sampled items) with the time split and taobao-rank-v1 queries, as `shopguide ingest`.

    The data card goes into the exposures' metadata, where the KFP UI shows it next to the data.
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
