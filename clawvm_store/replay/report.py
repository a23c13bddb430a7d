"""Presenting evaluation results: a Rich table, and a PNG of faults and thrash against budget."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ..errors import InvalidInput
from .harness import ConfigResult, oracle_gap, summarize


def results_table(results: Sequence[ConfigResult]) -> Table:
    """Mean faults per configuration and per policy, by budget, with the summary columns."""
    budgets = sorted({result.budget for result in results})
    policies = list(dict.fromkeys(result.policy for result in results))
    summary = summarize(results)
    gaps = oracle_gap(results)
    table = Table(title="mean policy-controllable faults per configuration, by budget")
    table.add_column("policy")
    for budget in budgets:
        table.add_column(str(budget), justify="right")
    for name in ("faults", "feasible-only", "thrash", "tokens", "oracle gap", "reuse", "cost"):
        table.add_column(name, justify="right")
    for policy in policies:
        cells = []
        for budget in budgets:
            mine = [r.total_faults for r in results if r.policy == policy and r.budget == budget]
            cells.append(f"{statistics.fmean(mine):.1f}" if mine else "-")
        table.add_row(
            policy,
            *cells,
            f"{summary[policy]['mean_faults']:.2f}",
            f"{summary[policy]['mean_faults_feasible']:.2f}",
            f"{summary[policy]['mean_thrash']:.3f}",
            f"{summary[policy]['mean_tokens_used']:.0f}",
            f"{gaps.get(policy, 0.0):.2f}",
            f"{summary[policy]['median_prefix_reuse']:.0%}",
            f"{summary[policy]['cached_cost_ratio']:.2f}x",
        )
    table.caption = (
        "reuse: median share of each prompt's tokens that is a prefix of the previous prompt; "
        "cost: input cost with Anthropic's prompt cache (reads 0.1x, writes 1.25x) over without"
    )
    return table


def kinds_table(results: Sequence[ConfigResult]) -> Table:
    """Faults by kind (summed over configurations), alerts and hits, per policy."""
    kinds = list(results[0].faults) if results else []
    table = Table(title="faults by kind (all configurations), alerts and hits")
    table.add_column("policy")
    for kind in kinds:
        table.add_column(kind.replace("_", " "), justify="right")
    table.add_column("alerts", justify="right")
    table.add_column("hits", justify="right")
    for policy in dict.fromkeys(result.policy for result in results):
        mine = [r for r in results if r.policy == policy]
        table.add_row(
            policy,
            *[str(sum(r.faults[kind] for r in mine)) for kind in kinds],
            str(sum(r.alerts for r in mine)),
            str(sum(r.hits for r in mine)),
        )
    return table


def print_tables(results: Sequence[ConfigResult], console: Console | None = None) -> None:
    """Both tables, on a terminal or as plain text when piped."""
    # Wide enough for every budget column even when piped (Rich assumes 80 columns there).
    out = console or Console()
    if out.width < 150:
        out = Console(width=150, file=out.file)
    out.print(results_table(results))
    out.print(kinds_table(results))


def plot(results: Sequence[ConfigResult], path: str | Path) -> None:
    """Faults and thrash against budget per policy (needs the ``plot`` extra: matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InvalidInput("--plot needs matplotlib: pip install 'clawvm-store[plot]'") from None
    budgets = sorted({result.budget for result in results})
    policies = list(dict.fromkeys(result.policy for result in results))
    figure, (faults_axis, thrash_axis, reuse_axis) = plt.subplots(1, 3, figsize=(15, 4.2))
    for policy in policies:
        faults = []
        thrash = []
        reuse = []
        for budget in budgets:
            mine = [r for r in results if r.policy == policy and r.budget == budget]
            faults.append(statistics.fmean(r.total_faults for r in mine))
            thrash.append(statistics.fmean(r.thrash for r in mine))
            reuse.append(100 * statistics.median(r.prefix_reuse for r in mine))
        faults_axis.plot(budgets, faults, marker="o", label=policy)
        thrash_axis.plot(budgets, thrash, marker="o", label=policy)
        reuse_axis.plot(budgets, reuse, marker="o", label=policy)
    reuse_axis.set(
        title="prefix reuse (median)",
        xlabel="budget (tokens)",
        ylabel="% of prompt tokens cached from the last prompt",
    )
    reuse_axis.set_ylim(0, 100)
    faults_axis.set(
        title="faults per configuration", xlabel="budget (tokens)", ylabel="mean faults"
    )
    thrash_axis.set(
        title="thrash index", xlabel="budget (tokens)", ylabel="(faults + alerts) / (hits + 1)"
    )
    thrash_axis.set_yscale("symlog", linthresh=0.1)
    faults_axis.set_yscale("symlog", linthresh=1.0)
    faults_axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
