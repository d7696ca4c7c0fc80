"""The ``lm-eval`` suite: lm-eval tasks, built-in or local YAMLs under ``include_path``,
run offline by ``lm_eval.simple_evaluate`` over ``BuiltModel``.

The data files a local task names (``dataset_kwargs.data_files``, ``data_dir``) are read
relative to its YAML's folder, like its ``include:`` and ``!function`` references (plain
lm-eval reads them relative to the working directory). They must lie under
``include_path``, whose content is part of the node's key.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from llmbuild.errors import UserError, did_you_mean


class TaskError(UserError):
    """An lm-eval task that is unknown, or whose data lies outside ``include_path``."""


def _offline() -> None:
    """Nothing downloads: the environment for libraries imported from here on, and the
    flags of those already imported, which read it at import."""
    import sys

    os.environ["HF_HUB_OFFLINE"] = os.environ["HF_DATASETS_OFFLINE"] = "1"
    if "datasets" in sys.modules:
        import datasets.config

        datasets.config.HF_HUB_OFFLINE = datasets.config.HF_DATASETS_OFFLINE = True
    if "huggingface_hub" in sys.modules:
        import huggingface_hub.constants

        huggingface_hub.constants.HF_HUB_OFFLINE = True


def task_manager(suite: Any) -> Any:
    """lm-eval's task index: only ``include_path`` when it holds every task asked for
    (indexing lm-eval's thousands of built-in YAMLs takes seconds), else everything."""
    from lm_eval.tasks import TaskManager

    if suite.include_path:
        if not Path(suite.include_path).is_dir():
            raise TaskError(
                f"eval.{suite.name}.include_path: not a directory: {suite.include_path}"
            )
        local = TaskManager(include_path=suite.include_path, include_defaults=False)
        if set(suite.tasks) <= set(local.all_tasks):
            return local
    manager = TaskManager(include_path=suite.include_path)
    for name in suite.tasks:
        if name not in manager.all_tasks:
            where = f" or in {suite.include_path}" if suite.include_path else ""
            raise TaskError(
                f"eval.{suite.name}.tasks: unknown lm-eval task {name!r} (not among "
                f"lm-eval's tasks{where}){did_you_mean(name, manager.all_tasks)}"
            )
    return manager


def _rebased(path: str, base: Path, root: Path, yaml_path: Path) -> str:
    if "://" in path:
        return path
    full = Path(os.path.normpath(base / path))
    if not full.is_relative_to(root):
        raise TaskError(
            f"{yaml_path}: data file {path} lies outside include_path {root}, so it would "
            "not be part of the eval's key; move it under include_path"
        )
    return str(full)


def _local_task(yaml_path: Path, root: Path, cache_dir: Path) -> dict[str, Any]:
    """A local task's full config, with its data paths made absolute."""
    from lm_eval.tasks._yaml_loader import load_yaml

    config = load_yaml(yaml_path, resolve_func=True)
    kwargs = dict(config.get("dataset_kwargs") or {})
    base = yaml_path.parent

    def fix(value: Any) -> Any:
        if isinstance(value, str):
            return _rebased(value, base, root, yaml_path)
        if isinstance(value, list):
            return [fix(v) for v in value]
        if isinstance(value, dict):
            return {k: fix(v) for k, v in value.items()}
        return value

    local = [key for key in ("data_files", "data_dir") if key in kwargs]
    for key in local:
        kwargs[key] = fix(kwargs[key])
    if str(config.get("dataset_path", "")).startswith(("./", "../")):
        config["dataset_path"] = fix(config["dataset_path"])
    if not local:
        return config
    # a dataset built from local files is cached with the node's work, not in ~/.cache
    return {**config, "dataset_kwargs": {**kwargs, "cache_dir": str(cache_dir)}}


def task_specs(manager: Any, suite: Any, cache_dir: Path) -> list[str | dict[str, Any]]:
    """What ``simple_evaluate`` gets: local tasks (and the local tasks of a tag) as full
    configs with absolute data paths; anything else by name."""
    from lm_eval.tasks._index import Kind

    root = Path(suite.include_path).resolve() if suite.include_path else None
    specs: list[str | dict[str, Any]] = []
    for name in suite.tasks:
        entry = manager.task_index[name]
        members = sorted(entry.tags) if entry.kind == Kind.TAG else [name]
        for member in members:
            found = manager.task_index[member]
            local = (
                root is not None
                and found.kind == Kind.TASK
                and found.yaml_path is not None
                and Path(found.yaml_path).resolve().is_relative_to(root)
            )
            specs.append(
                _local_task(Path(found.yaml_path).resolve(), root, cache_dir) if local else member
            )
    return specs


def _task_metrics(values: dict[str, Any]) -> dict[str, tuple[float, float | None]]:
    """lm-eval's ``{"acc,none": .., "acc_stderr,none": ..}`` -> ``{"acc": (value,
    stderr)}``; a metric under a filter other than ``none`` is named ``metric.filter``."""
    out = {}
    for key, value in values.items():
        metric, _, filt = key.partition(",")
        if not filt or metric.endswith("_stderr") or not _number(value):
            continue
        err = values.get(f"{metric}_stderr,{filt}")
        name = metric if filt == "none" else f"{metric}.{filt}"
        out[name] = (value, err if _number(err) else None)
    return out


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _sample_rows(samples: dict[str, list[dict[str, Any]]], metrics: dict[str, Any]) -> list[str]:
    """One JSON line per scored example: its target, the model's filtered responses (the
    choices' log-likelihoods, the generation, ...) and its metric values."""
    rows = []
    for task, docs in sorted(samples.items()):
        names = {name.split(".")[0] for name in _task_metrics(metrics.get(task, {}))}
        for doc in docs:
            row = {
                "task": task,
                "doc_id": doc["doc_id"],
                "filter": doc.get("filter", "none"),
                "target": doc["target"],
                "responses": doc["filtered_resps"],
                **{m: doc[m] for m in sorted(names) if m in doc},
            }
            rows.append(json.dumps(row, default=str))
    return rows


@contextmanager
def without_environment_probe() -> Iterator[None]:
    """lm-eval ends each evaluation by adding the environment to its results: torch's
    ``collect_env`` (a second or two of subprocesses per eval node) and the git commit
    of the working directory (``fatal: not a git repository`` on stderr outside one).
    The build's record holds the environment already; lm-eval's results go without."""
    from lm_eval import evaluator

    saved = evaluator.add_env_info, evaluator.get_git_commit_hash
    evaluator.add_env_info = lambda results: None
    evaluator.get_git_commit_hash = lambda: None
    try:
        yield
    finally:
        evaluator.add_env_info, evaluator.get_git_commit_hash = saved


def run_lm_eval(ctx: Any, suite: Any) -> tuple[dict[str, Any], list[str]]:
    """Run the suite's tasks; returns ``{task: {metric: value}}`` and a markdown table,
    records each task's metrics and writes every scored example to ``samples.jsonl``."""
    _offline()
    from llmbuild.backends.eval.lm_eval_adapter import BuiltModel
    from llmbuild.backends.megatron.artifact import StageArtifact
    from lm_eval import simple_evaluate

    manager = task_manager(suite)
    specs = task_specs(manager, suite, ctx.work_dir / "datasets")
    stage_dir, base_dir = StageArtifact.open(ctx.input("model")).dirs
    model = BuiltModel(
        stage_dir,
        ctx.input("tokenizer").path,
        batch_size=suite.batch_size,
        max_gen_toks=suite.max_gen_toks,
        base=base_dir,
    )
    with without_environment_probe():
        out = simple_evaluate(
            model=model,
            tasks=specs,
            num_fewshot=suite.num_fewshot,
            limit=suite.limit,
            task_manager=manager,
            log_samples=True,
        )
    results: dict[str, dict[str, Any]] = {}
    table = ["| task | metric | value | stderr |", "| --- | --- | --- | --- |"]
    for task, values in sorted(out["results"].items()):
        results[task] = {"samples": out["n-samples"].get(task, {}).get("effective")}
        for name, (value, err) in sorted(_task_metrics(values).items()):
            results[task].update({name: float(value), f"{name}_stderr": err})
            ctx.metrics[f"{task}.{name}"] = float(value)
            table.append(
                f"| {task} | {name} | {value:.4f} | {'' if err is None else f'{err:.4f}'} |"
            )
    rows = _sample_rows(out.get("samples", {}), out["results"])
    (ctx.out_dir / "samples.jsonl").write_text("".join(r + "\n" for r in rows))
    return results, table
