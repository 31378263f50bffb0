"""Components that start the fine-tuning pipeline: the current champion and its settings."""

from kfp import dsl
from kfp.dsl import Model, Output

from components.settings import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def current_champion(registry: str) -> str:
    """The registry's champion now, as "<version>@<model fingerprint>". Never cached: it moves
    with every promotion; `champion_model` takes it as a parameter, so that copy is cached per
    version and its weights.

    Fails when the registry has no champion yet: fine-tuning needs one, so run the training
    pipeline first.
    """
    from pathlib import Path

    from shopguide.logs import setup_logging

    setup_logging()
    from shopguide.errors import ShopguideError
    from shopguide.registry import champion, model_fingerprint

    current = champion(Path(registry))
    if current is None:
        raise ShopguideError(f"{registry}: no champion to fine-tune; run the training pipeline")
    return f"{current.name}@{model_fingerprint(current.path)}"


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def champion_model(registry: str, champion: str, model: Output[Model]) -> str:
    """Copy the registry version `champion` ("<version>@<fingerprint>", from
    `current_champion`; weights and config) into a Model artifact. Returns its version name.

    Fails if that version's weights no longer have that fingerprint (a registry rebuilt under
    the same version names), so a cache key never stands for other weights.
    """
    from pathlib import Path

    from shopguide.logs import setup_logging

    setup_logging()
    from shopguide.errors import ShopguideError
    from shopguide.io import atomic_path
    from shopguide.model.store import CONFIG, WEIGHTS
    from shopguide.registry import find_version, model_fingerprint

    name, _, expected = champion.partition("@")
    version = find_version(Path(registry), name)
    if expected and model_fingerprint(version.path) != expected:
        raise ShopguideError(f"{registry}: {name} is no longer the model {expected}")
    with atomic_path(Path(model.path)) as tmp:
        tmp.mkdir(parents=True)
        for file in (WEIGHTS, CONFIG):
            (tmp / file).write_bytes((version.path / file).read_bytes())
    model.metadata["version"] = name
    return name


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
