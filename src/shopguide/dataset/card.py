"""The model card of a model trained on a declared dataset: what each example is, which
features it reads (by kind, with the history definitions and when later-arriving data counts),
its tasks and their test metrics. Written beside the weights by `shopguide dataset train`."""

from __future__ import annotations

from shopguide.dataset.schema import DatasetSchema


def _value(metrics: dict, name: str) -> str:
    value = metrics.get(name)
    if value is None:
        return "n/a"
    low, high = metrics.get(f"{name}_interval") or (None, None)
    text = f"{value:.4f}"
    return text + (f" [{low:.4f}, {high:.4f}]" if low is not None else "")


def render_dataset_card(schema: DatasetSchema, metrics: dict) -> str:
    later = [
        f"`{name}` (known at `{t.known_at}`)" for name, t in schema.tables.items() if t.known_at
    ]
    lines = [
        f"# Model card: {schema.name}, {metrics.get('model', '?')}",
        "",
        schema.description,
        "",
        "## Examples",
        "",
        f"- One per row of `{schema.unit}` after its joins and filters, at t0 = "
        + (f"`{schema.time}`" if schema.time else "the row's position (no times)")
        + f"; {metrics.get('train_examples', '?')} training examples.",
        "- Split: "
        + (
            f"test from {schema.split.test_start} on (`{schema.split.column or schema.time}`)"
            if schema.split
            else "by the train and test files"
        )
        + ".",
        "- Later-arriving tables: " + (", ".join(later) or "none") + "; what they hold reaches "
        "a feature only through history, from the moment it became known.",
        "",
        "## Features",
        "",
    ]
    for kind in ("numeric", "categorical", "bag", "text"):
        names = schema.features_of(kind)
        if names:
            lines.append(f"- {kind} ({len(names)}): " + ", ".join(f"`{n}`" for n in names))
    for h in schema.history:
        source = f"rows of `{h.table}`" if h.table else "earlier examples"
        what = h.fn if h.of is None else f"{h.fn} of `{h.of}`"
        window = f" in the last {h.window_s} s" if h.window_s else ""
        lines.append(
            f"- history `{h.feature}`: {what} over {source} with the same "
            f"{' x '.join(h.by)}{window}, strictly before t0"
        )
    lines += [
        "",
        "## Tasks and test metrics",
        "",
        "| task | type | role | AUC | GAUC | RMSE | MAE | accuracy | rows |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    test = metrics.get("test") or {}
    for task, m in test.items():
        spec = schema.tasks.get(task)
        kind, role = (spec.type, spec.role) if spec else ("binary", "report")
        cells = [_value(m, k) for k in ("auc", "gauc", "rmse", "mae", "accuracy")]
        lines.append(f"| {task} | {kind} | {role} | {' | '.join(cells)} | {m.get('rows')} |")
    lines += [
        "",
        "## Limitations",
        "",
        "- Trained and judged on one time split of one dataset; rates drift, so retrain and "
        "check drift (`shopguide dataset check`) on fresh data.",
        "- Intervals are bootstrap intervals over the test examples: read small tasks with them.",
        "",
    ]
    return "\n".join(lines)
