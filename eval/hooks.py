"""The training hooks from eval/: the encoder monitor (train.monitor) and the generator
metrics (eval.every), for train.py and the experiment commands."""
from __future__ import annotations

from arena.trainer import Hook

from .fidelity import check_metrics, check_sample_memory, evaluate_generator, resolve_features


def count_label(n: int) -> str:
    """5000 -> '5k', 50000 -> '50k', 1500 -> '1500': the sample count in a metric's name."""
    return f"{n // 1000}k" if n % 1000 == 0 else str(n)


def training_hooks(cfg) -> list[Hook]:
    """The monitor of an encoder (train.monitor, eval/monitor.py) and the metrics of a
    generator (eval.every), each checked now, before training."""
    hooks = []
    if cfg.train.monitor.enabled:
        from .monitor import monitor_hook

        hooks.append(monitor_hook(cfg))
    if cfg.eval.every > 0:
        hooks.append(generator_metrics_hook(cfg))
    return hooks


def generator_metrics_hook(cfg) -> Hook:
    """IS/FID/KID of the generator every eval.every steps, logged as e.g. fid_5k."""
    metrics = check_metrics(cfg.eval.metrics)
    # Fail now, before training, when the feature extractor's weights are missing or the
    # samples' features cannot fit in memory (gathered images counted, as with several processes).
    feats = resolve_features(cfg.eval.features, cfg.data, cfg.eval.inception_weights)
    check_sample_memory(cfg.eval.num_samples, feats, 3 * cfg.data.resolution ** 2, "eval.num_samples")
    label = count_label(cfg.eval.num_samples)

    def run_metrics(run, step: int) -> dict | None:
        if not run.objective.generates:
            return None
        values = evaluate_generator(run.objective, run.cfg, num_samples=cfg.eval.num_samples, metrics=metrics,
                                    procs=run.procs)
        return None if values is None else {f"{k}_{label}": v for k, v in values.items()}

    return Hook(every=cfg.eval.every, fn=run_metrics, all_processes=True)
