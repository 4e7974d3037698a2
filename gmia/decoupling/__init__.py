"""MDL decoupling of foundation-model (MFM) features into an identity code and a semantic part.

    from gmia.decoupling import fit_decoupler, load_decoupler, MDLTerm
    report = fit_decoupler("phantom-cxr64", "data/phantom-cxr64", "runs/decoupler-phantom-cxr64")
    term = MDLTerm(mfm, load_decoupler("runs/decoupler-phantom-cxr64"))   # a stage-2 Objective extra term

Modules, in the order the data flows: ``scatter`` (closed-form between/within-patient directions),
``coding_rate`` (a learned refinement of the scatter split: ``FitConfig(method="coding_rate")``), ``mdl``
(description lengths: the rank choice, the report's code lengths), ``decoupler`` (the frozen module and its
checkpoint), ``report`` (the held-out audit), ``fit`` (features → fit → audit → checkpoint), ``term`` (the
stage-2 loss), ``cli`` (``gmia fit-decoupler``). Depends only on gmia.networks, data, metrics, checkpoints.
"""

from .coding_rate import CodingRateConfig, CodingRateFit, fit_coding_rate
from .decoupler import CHECKPOINT_NAME, Decoupler, load_decoupler, save_decoupler
from .fit import METHODS, FitConfig, calibrate, extract_features, fit_decoupler, fit_from_features
from .mdl import findings_codelength, identity_bits, online_codelength, select_rank
from .report import audit, evaluate_features, format_table
from .scatter import ScatterFit, fit_scatter
from .term import MDLTerm, identity_code_hinge, semantic_distance

__all__ = ["CodingRateConfig", "CodingRateFit", "fit_coding_rate", "CHECKPOINT_NAME", "Decoupler", "load_decoupler",
           "save_decoupler", "METHODS", "FitConfig", "calibrate",
           "extract_features", "fit_decoupler", "fit_from_features", "findings_codelength", "identity_bits",
           "online_codelength", "select_rank", "audit", "evaluate_features", "format_table", "ScatterFit",
           "fit_scatter", "MDLTerm", "identity_code_hinge", "semantic_distance"]
