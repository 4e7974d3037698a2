"""Evaluation: independent re-identification attacks, utility, fidelity, record-level privacy, membership
inference against the generator, the margin sweep and an HTML report.

    from gmia.evaluation import evaluate, membership_inference, sweep, write_report
    metrics = evaluate("phantom-cxr64", "data/phantom-cxr64", "outputs/anon", "outputs/eval")

Modules, in the order the data flows: ``records`` (the anonymized run, its linkage, the real dataset),
``privacy`` (pairs, AUC, rank-k, DCR), ``adaptive`` (retrained attacker), ``utility``, ``fidelity``,
``evaluate`` (the orchestration behind ``gmia evaluate``), ``mia`` (``gmia mia``), ``sweep`` (``gmia sweep``),
``plots`` and ``report`` (``gmia report``), ``cli`` (the click commands).
"""

from .adaptive import AdaptiveConfig, train_adaptive_attacker
from .evaluate import EvalConfig, evaluate
from .mia import MIAConfig, membership_inference
from .report import write_report
from .sweep import sweep

__all__ = ["EvalConfig", "evaluate", "AdaptiveConfig", "train_adaptive_attacker", "MIAConfig", "membership_inference",
           "write_report", "sweep"]
