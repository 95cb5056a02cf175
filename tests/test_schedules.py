"""Coefficient tables: provenance checkpoints, the safety transform, schedule selection."""

import pytest

from polarkernels import schedules as s


def test_published_checkpoints():
    # Values quoted in the foundation issue from the paper and modded-nanogpt/dion.
    assert s.POLAR_EXPRESS_8_UNSCALED[0] == (8.28721201814563, -23.595886519098837, 17.300387312530933)
    assert s.POLAR_EXPRESS_8_UNSCALED[-1] == (1.875, -1.25, 0.375)
    assert s.POLAR_EXPRESS_5[0] == (8.156554524902461, -22.48329292557795, 15.878769915207462)
    assert s.POLAR_EXPRESS_5[-1] == (2.3465413258596377, -1.7097828382687081, 0.42323551169305323)


def test_with_safety_divides_all_but_the_last_step():
    table = ((2.0, -1.0, 0.5), (1.875, -1.25, 0.375))
    out = s.with_safety(table, 1.01)
    assert out[0] == pytest.approx((2.0 / 1.01, -1.0 / 1.01**3, 0.5 / 1.01**5), rel=1e-15)
    assert out[1] == table[1]
    assert s.POLAR_EXPRESS_8[-1] == (1.875, -1.25, 0.375)


@pytest.mark.parametrize("method", s.ITERATIVE_METHODS)
def test_fixed_schedules_have_the_requested_length(method):
    for steps in (0, 1, 5, 7):
        assert len(s.fixed_schedule(method, steps).coeffs) == steps
        assert s.fixed_schedule(method, steps).tail is None


def test_polar_express_fixed_uses_the_published_table_at_five_steps():
    sched = s.fixed_schedule("polar_express", 5)
    assert sched.coeffs == s.POLAR_EXPRESS_5 and sched.norm_safety == 1.02


def test_convergent_schedules_end_in_the_newton_schulz_quintic():
    for method in s.ITERATIVE_METHODS:
        assert s.convergent_schedule(method).tail == s.NEWTON_SCHULZ_QUINTIC
    assert s.convergent_schedule("polar_express").coeffs == s.POLAR_EXPRESS_8


def test_unknown_methods_raise():
    with pytest.raises(ValueError, match="no fixed schedule"):
        s.fixed_schedule("qdwh", 5)
    with pytest.raises(ValueError, match="no convergent schedule"):
        s.convergent_schedule("svd")
