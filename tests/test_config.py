import pytest

from gmia.config import PRESETS, PRIVACY_LEVELS, PhantomSpec, get_preset, margin_for, override
from gmia.errors import ConfigError


def test_presets_have_consistent_shapes():
    assert get_preset("phantom-cxr64").channels == 1 and get_preset("phantom-face64").channels == 3
    for p in PRESETS.values():
        assert p.resolution in (64, 256)
        assert (p.phantom is not None) == p.name.startswith("phantom")


def test_unknown_preset_lists_valid_ones():
    with pytest.raises(ConfigError, match="phantom-cxr64"):
        get_preset("nope")


def test_privacy_levels_are_monotone_and_margin_wins():
    margins = [PRIVACY_LEVELS[k] for k in ("low", "medium", "high", "max")]
    assert margins == sorted(margins, reverse=True)  # more privacy, lower allowed cosine
    assert margin_for("max") == PRIVACY_LEVELS["max"]
    assert margin_for("low", margin=-0.25) == -0.25
    with pytest.raises(ConfigError, match=r"\[-1, 1\]"):
        margin_for(margin=1.5)
    with pytest.raises(ConfigError, match="valid levels"):
        margin_for("extreme")


def test_override_ignores_unset_flags_and_rejects_unknown_fields():
    spec = PhantomSpec(domain="cxr")
    assert override(spec, patients=7, seed=None) == PhantomSpec(domain="cxr", patients=7)
    with pytest.raises(ConfigError, match="no field"):
        override(spec, colour="red")


def test_the_default_level_follows_the_start():
    from gmia.anonymization import anonymize_config
    from gmia.config import DEFAULT_PRIVACY

    # a re-drawn start is already another person: its level is medium; from E(x) the hinge must do the work
    assert anonymize_config("phantom-face64").margin == PRIVACY_LEVELS["medium"]
    for start in (dict(redraw=0.0), dict(speed="fast")):
        cfg = anonymize_config("phantom-cxr64", **start)
        assert (cfg.redraw, cfg.margin, cfg.privacy) == (0.0, PRIVACY_LEVELS[DEFAULT_PRIVACY], DEFAULT_PRIVACY)
    # the amortized network corrects the preset's own start, at its level
    cfg = anonymize_config("phantom-cxr64", engine="amortized")
    assert (cfg.redraw, cfg.margin) == (1.0, PRIVACY_LEVELS["medium"])
    # a level or margin the user asks for is kept, whatever the start
    assert anonymize_config("phantom-cxr64", privacy="low", redraw=0.0).margin == PRIVACY_LEVELS["low"]
    assert anonymize_config("phantom-cxr64", margin=0.1, speed="fast").margin == 0.1
    assert anonymize_config("gmia-cxr256").privacy == "max"


def test_the_amortized_correction_is_a_share():
    from gmia.anonymization import anonymize_config

    assert anonymize_config("phantom-cxr64", engine="amortized", correction=0.5).correction == 0.5
    # the preset's share applies to the amortized engine only: the optimizer's runs keep the field's default
    assert anonymize_config("phantom-cxr64", engine="amortized").correction == 0.4
    assert anonymize_config("phantom-cxr64").correction == 1.0
    for bad in (-0.1, 1.5):
        with pytest.raises(ConfigError, match=r"correction must be in \[0, 1\]"):
            anonymize_config("phantom-cxr64", correction=bad)


def test_the_mfm_term_is_the_faces_optimizer_default_only():
    from gmia.anonymization import anonymize_config

    assert anonymize_config("phantom-face64").lambda_mdl == 1.0 and anonymize_config("phantom-cxr64").lambda_mdl == 0.0
    # the fast profile and the amortized engine were measured without it (their network learned without it) ...
    assert anonymize_config("phantom-face64", speed="fast").lambda_mdl == 0.0
    assert anonymize_config("phantom-face64", engine="amortized").lambda_mdl == 0.0
    # ... and a flag still wins over both
    assert anonymize_config("phantom-face64", engine="amortized", lambda_mdl=2.0).lambda_mdl == 2.0
    assert anonymize_config("phantom-face64", speed="fast", lambda_mdl=0.5).lambda_mdl == 0.5
