"""The Markdown model card written into every registry version, from its metadata (lineage,
parameters, metrics, gate decision) and its model config. Every field is optional: a card is
still written for a version registered with little metadata."""

from __future__ import annotations

from typing import Any


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _metric(m: dict, name: str) -> str:
    value, ci = m.get(name), m.get(f"{name}_ci") or {}
    text = _fmt(value)
    if value is not None and ci.get("low") is not None:
        text += f" [{_fmt(ci['low'])}, {_fmt(ci['high'])}]"
    return text


def _metrics_table(metrics: dict) -> list[str]:
    blocks = [("all", metrics.get("overall") or {}), *(metrics.get("slices") or {}).items()]
    lines = [
        "| slice | task | AUC | log loss | ECE | GAUC | positives | rows |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, block in blocks:
        for task, m in block.items():
            if not isinstance(m, dict):
                continue
            lines.append(
                f"| {name} | {task} | {_metric(m, 'auc')} | {_metric(m, 'logloss')} | "
                f"{_metric(m, 'ece')} | {_metric(m, 'gauc')} | {_fmt(m.get('positives'))} | "
                f"{_fmt(m.get('rows'))} |"
            )
    return lines if len(lines) > 2 else ["No evaluation metrics were recorded."]


def _gate_lines(gate: dict) -> list[str]:
    pairs = zip(gate.get("reasons") or [], gate.get("checks") or [], strict=False)
    return [f"- {'PASS' if c.get('passed') else 'FAIL'}: {r}" for r, c in pairs]


def _rule(rule: dict) -> str:
    from shopguide.model.tensors import rule_text  # torch: not for every registry reader

    return rule_text(rule.get("ids"), _fmt(rule.get("modulo")), _fmt(rule.get("remainder")))


def _sequence(config: dict) -> str:
    length, encoder = config.get("sequence_length") or 0, config.get("sequence_encoder") or "none"
    return "not read" if not length or encoder == "none" else f"the last {length}, {encoder}"


def _expert_lines(health: dict | None) -> list[str]:
    """The expert-health section (`shopguide.model.experts`): each gate's expert shares and
    entropy, each expert's share of zero activations; none for a model without experts."""
    if not health:
        return []
    lines = [
        "## Expert health",
        "",
        f"On {health['rows']} test rows. Gate entropy: 1 spreads evenly, 0 gives one expert "
        f"everything (lowest {health['min_gate_entropy']:.3f}); the largest share of zero "
        f"activations of an expert is {health['max_zero_activation_share']:.3f}.",
        "",
        "| gate | expert shares | entropy |",
        "|---|---|---|",
    ]
    for name, gate in health["gates"].items():
        shares = " / ".join(f"{v:.2f}" for v in gate["share"])
        lines.append(f"| {name} | {shares} | {gate['entropy']:.3f} |")
    zero = ", ".join(f"{k} {v:.2f}" for k, v in health["zero_activation_share"].items())
    return [*lines, "", f"Zero activations per expert: {zero}.", ""]


def render_model_card(meta: dict, config: dict) -> str:
    version = meta.get("version", "?")
    params = meta.get("params") or {}
    metrics = meta.get("metrics") or {}
    gate = meta.get("gate") or {}
    data = meta.get("data_fingerprint") or {}
    protocol = params.get("protocol") or {}
    finetune = params.get("finetune") or {}
    serving = params.get("serving") or {}
    routes = (config.get("routes") or []) if config.get("kind") == "routed" else []
    if routes:  # a fine-tuned copy per route beside the base model (shopguide.model.routed)
        config = config.get("base") or {}
    tasks = config.get("tasks") or protocol.get("tasks") or []
    kind = config.get("kind") or (params.get("model") or {}).get("name") or "multi-task model"
    if routes:
        rules = "; ".join(_rule(r.get("rule") or {}) for r in routes)
        kind += f" with {len(routes)} fine-tuned cop{'y' if len(routes) == 1 else 'ies'} ({rules})"
    boot = metrics.get("bootstrap") or {}
    lines = [
        f"# Model card: shopguide {version}",
        "",
        "| | |",
        "|---|---|",
        f"| Version | {version} |",
        f"| Registered | {_fmt(meta.get('registered_at'))} |",
        f"| Architecture | {kind}, tasks {', '.join(tasks) or 'n/a'}, "
        f"{len(config.get('dense_features') or [])} dense features, embedding dim "
        f"{_fmt(config.get('embedding_dim'))} (ids embedded: "
        f"{', '.join(config.get('id_embeddings') or ('user', 'item', 'category'))}), recent "
        f"events: {_sequence(config)} |",
        f"| Code | git commit `{_fmt(meta.get('git_commit'))}` |",
        f"| Model fingerprint | `{_fmt(meta.get('model_fingerprint'))}` |",
        f"| Parent (fine-tuned from) | {_fmt(meta.get('parent_version'))} "
        f"(weights `{_fmt(meta.get('parent'))}`) |",
        f"| Training set | sha256 `{_fmt(data.get('training_set'))}` |",
        f"| Raw events | sha256 `{_fmt(data.get('raw'))}` |",
        f"| Gate | {'passed' if gate.get('passed') else 'not passed' if gate else 'n/a'} |",
        "",
        "## Intended use",
        "",
        "Ranks candidate items for one user on an e-commerce shopping-guide surface. For each "
        "(user, item) at a moment it predicts the probabilities of each task (view, add to the "
        "cart, favourite, buy the item) within the label horizon from that moment; the ranking "
        "score is "
        + (
            " + ".join(f"{w} x p({t})" for t, w in (serving.get("ranking_weights") or {}).items())
            or "a weighted sum of them"
        )
        + ". Not intended for pricing, credit or any decision about a person beyond the order "
        "in which items are shown.",
        "",
        "## Training data and protocol",
        "",
        f"- Exposures: Taobao UserBehavior page views in [{_fmt(protocol.get('window_start'))}, "
        f"{_fmt(protocol.get('window_end'))}) (Unix seconds), labelled by a later cart, "
        "favourite or purchase of the same item by the same user (protocol taobao-mtl-v1).",
        f"- Time split: test exposures from {_fmt(protocol.get('test_start'))} on.",
        "- Features: counts and rates of the user's, item's and category's past behaviour "
        "(24 h, 72 h, all history), point-in-time correct, from the Feast feature store.",
        "- New categories (taobao-transfer-v1): "
        + _rule(
            {
                "ids": finetune.get("new_category_ids"),
                "modulo": finetune.get("new_category_modulo"),
                "remainder": finetune.get("new_category_remainder"),
            }
        )
        + f"; pre-trained without them, then fine-tuned on them (`finetune.strategy`: "
        f"{_fmt(finetune.get('strategy'))})"
        + (
            "; the fine-tuned copy scores only the routed categories, every other category "
            "keeps the base model's scores"
            if routes
            else ""
        )
        + ".",
        "",
        "## Evaluation on the test split",
        "",
        (
            f"Brackets: {_fmt(boot.get('confidence'), 2)} bootstrap intervals "
            f"({_fmt(boot.get('samples'))} resamples of the test exposures)."
            if boot
            else ""
        ),
        "",
        *_metrics_table(metrics),
        "",
        *_expert_lines(metrics.get("expert_health")),
        "## Gate decision",
        "",
        *(_gate_lines(gate) or ["No gate decision recorded."]),
        "",
        "## Limitations",
        "",
        "- Users and items the online store does not know are scored with default (zero) "
        "features and flagged `unknown_user` / `unknown_item` in every response; their scores "
        "rest on hashed id embeddings alone.",
        "- Trained on one window of one marketplace's behaviour; rates drift with seasons and "
        "promotions, so retrain and re-gate on fresh data.",
        "- Positive rates are low (about 1% for purchases), so per-slice metrics of small "
        "slices have wide intervals; read them with their brackets.",
        "- Probabilities are ranking scores first: check the calibration error (ECE) before "
        "using them as calibrated rates.",
        "",
    ]
    return "\n".join(lines)
