"""Component of the `ingest` step (as `shopguide ingest`)."""

from kfp import dsl
from kfp.dsl import Dataset, Output

from components.settings import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def ingest(
    raw_path: str, params_json: str, events: Output[Dataset], exposures: Output[Dataset]
) -> None:
    """Raw Taobao UserBehavior CSV -> canonical events and labelled exposures with the time split.

    The ingest summary and the split sizes go into the artifacts' metadata, where the KFP UI
    shows them next to the data.
    """
    from pathlib import Path

    from shopguide.logs import setup_logging

    setup_logging()
    from shopguide.config import params_from_json
    from shopguide.exposures import build_exposures
    from shopguide.ingest import ingest_taobao, summary_dict

    p = params_from_json(params_json)
    summary = ingest_taobao(Path(raw_path), Path(events.path), p.data)
    events.metadata.update(summary_dict(summary))
    exposures.metadata["splits"] = build_exposures(
        Path(events.path), Path(exposures.path), p.protocol, p.data
    )
