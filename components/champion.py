"""Components that start the fine-tuning pipeline: the current champion and its settings."""

from kfp import dsl
from kfp.dsl import Model, Output

from components.settings import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def champion_model(registry: str, model: Output[Model]) -> str:
    """Copy the registry's champion (weights and config) into a Model artifact.

    Returns its version name. Fails when the registry has no champion yet: fine-tuning needs
    one, so run the training pipeline first.
    """
    from pathlib import Path

    from shopguide.logs import setup_logging

    setup_logging()
    from shopguide.errors import ShopguideError
    from shopguide.io import atomic_path
    from shopguide.model.store import CONFIG, WEIGHTS
    from shopguide.registry import champion

    current = champion(Path(registry))
    if current is None:
        raise ShopguideError(f"{registry}: no champion to fine-tune; run the training pipeline")
    with atomic_path(Path(model.path)) as tmp:
        tmp.mkdir(parents=True)
        for name in (WEIGHTS, CONFIG):
            (tmp / name).write_bytes((current.path / name).read_bytes())
    model.metadata["version"] = current.name
    return current.name


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def with_new_categories(params_json: str, new_category_ids: list) -> str:
    """`params_json` with `finetune.new_category_ids` set, validated like params.yaml."""
    import json

    from shopguide.config import params_from_json
    from shopguide.errors import ShopguideError

    if not new_category_ids:
        raise ShopguideError("new_category_ids: name at least one new category to fine-tune on")
    p = params_from_json(params_json).model_dump(mode="json")
    p["finetune"]["new_category_ids"] = new_category_ids
    return params_from_json(json.dumps(p)).model_dump_json()
