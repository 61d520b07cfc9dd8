"""Named gates: the bundled TOML, a user's flipgate.toml overriding and adding, and every refusal."""

from __future__ import annotations

import pytest

from gates.policy import GatePolicy, bundled_gates_path, get_gate, load_gates, with_overrides
from harness.errors import InputError

BUNDLED = ("fp16", "int8lin", "int8hu", "int4lin", "mixed", "mixed-edge")


def test_the_bundled_gates(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no flipgate.toml here
    gates = load_gates()
    assert tuple(gates) == BUNDLED
    assert gates["fp16"].control is None
    for name in BUNDLED[1:]:
        g = gates[name]
        assert g.candidate == name and g.control == "fp16"
    for g in gates.values():
        assert (g.min_margin, g.margin_space, g.max_defects, g.max_kl, g.min_confident) == (0.1, "prob", 0, None, 12)
        assert 0.9 <= g.min_cosine < 1.0 and g.source == "bundled"
    assert bundled_gates_path().is_file()
    d = gates["int8hu"].to_dict()
    assert list(d) == ["name", "candidate", "control", "min_margin", "margin_space", "max_defects", "min_cosine",
                       "max_kl", "min_confident", "description", "source", "oracle_fp32", "reference"]
    assert GatePolicy.from_dict(d) == gates["int8hu"]


def test_a_user_file_overrides_keys_and_adds_gates(tmp_path):
    cfg = tmp_path / "flipgate.toml"
    cfg.write_text('[gates.int8hu]\nmin_cosine = 0.995\nmax_kl = 0.05\n\n'
                   '[gates.int8hu-logit]\ncandidate = "int8hu"\ncontrol = "fp16"\nmargin_space = "logit"\n'
                   'min_margin = 1.5\n\n[gates.int4lin]\ncontrol = "none"\n\n[recipes.other]\nanything = 1\n')
    gates = load_gates(cfg)
    g = gates["int8hu"]
    assert (g.min_cosine, g.max_kl, g.control, g.min_margin, g.source) == (0.995, 0.05, "fp16", 0.1, str(cfg))
    new = gates["int8hu-logit"]
    assert (new.margin_space, new.min_margin, new.max_defects, new.control) == ("logit", 1.5, 0, "fp16")
    assert gates["int4lin"].control is None
    assert list(gates)[:6] == list(BUNDLED) and list(gates)[6] == "int8hu-logit"


def test_flipgate_toml_in_the_working_directory_is_picked_up(monkeypatch, tmp_path):
    (tmp_path / "flipgate.toml").write_text('[gates.fp16]\nmin_cosine = 0.5\n')
    monkeypatch.chdir(tmp_path)
    assert get_gate("fp16").min_cosine == 0.5


@pytest.mark.parametrize("body, message", [
    ('[gates.int8hu]\nmin_cosin = 0.9\n', r"\[gates.int8hu\] unknown key 'min_cosin' \(valid keys: candidate, control, "
                                          r"min_margin, margin_space, max_defects, min_cosine, max_kl, min_confident, description, "
                                          r"oracle_fp32, reference\)"),
    ('[gates.int8hu]\nmargin_space = "log"\n', r"margin_space = 'log': valid values: prob, logit"),
    ('[gates.int8hu]\nmin_margin = -0.1\n', r"min_margin = -0.1: must lie in"),
    ('[gates.int8hu]\nmin_margin = 1.5\n', r"min_margin = 1.5 exceeds 1"),
    ('[gates.int8hu]\nmin_margin = nan\n', r"must be finite"),
    ('[gates.int8hu]\nmax_defects = 1.5\n', r"max_defects = 1.5: expected an integer"),
    ('[gates.int8hu]\nmax_defects = true\n', r"max_defects = True: expected an integer"),
    ('[gates.int8hu]\nmin_cosine = 1.01\n', r"min_cosine = 1.01: must lie in \[-1.0, 1.0\]"),
    ('[gates.int8hu]\nmax_kl = "big"\n', r"max_kl = 'big': expected a number"),
    ('[gates.int8hu]\ncandidate = ""\n', r"candidate must not be empty"),
    ('[gates.brand-new]\nmin_cosine = 0.9\n', r"\[gates.brand-new\] has no candidate"),
    ('[gates]\nint8hu = 3\n', r"gates.int8hu must be a table"),
    ('[gate.int8hu]\nmin_cosine = 0.9\n', r"gates are defined as \[gates.NAME\]"),
    ('[gates.int8hu\n', r"not valid TOML"),
])
def test_bad_gate_definitions_are_one_line_errors_naming_file_and_key(tmp_path, body, message):
    cfg = tmp_path / "flipgate.toml"
    cfg.write_text(body)
    with pytest.raises(InputError, match=message) as e:
        load_gates(cfg)
    assert str(cfg) in str(e.value) and "\n" not in str(e.value)


def test_unknown_gate_names_list_the_valid_ones(tmp_path):
    with pytest.raises(InputError, match=r"unknown gate 'int9' \(valid gates: fp16, int8lin, int8hu, int4lin, mixed, mixed-edge\)"):
        get_gate("int9", config_path=_empty(tmp_path))
    with pytest.raises(InputError, match="no such config file"):
        load_gates(tmp_path / "missing.toml")


def _empty(tmp_path):
    p = tmp_path / "empty.toml"
    p.write_text("")
    return p


def test_command_line_overrides_are_checked_like_the_file(tmp_path):
    g = get_gate("int8hu", config_path=_empty(tmp_path))
    assert with_overrides(g) is g
    h = with_overrides(g, min_margin=0.2, margin_space="logit", max_kl=0.1, max_defects=None)
    assert (h.min_margin, h.margin_space, h.max_kl, h.max_defects) == (0.2, "logit", 0.1, 0)
    assert with_overrides(h, max_kl="none").max_kl is None
    with pytest.raises(InputError, match="command line: \\[gates.int8hu\\] min_cosine = 2.0"):
        with_overrides(g, min_cosine=2.0)
