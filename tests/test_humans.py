"""The shipped human reference figures (Pew, June 2023): exactly the published table, with sources
and caveats, and a data file that breaks its own rules is refused."""

from __future__ import annotations

import copy

import pytest
import yaml
from pydantic import ValidationError

from debatelab.humans import HumanReference, pew_2023

# Percent answering "a very big problem" (all adults, Rep/lean Rep, Dem/lean Dem), as published in
# the secondary reports the figures come from; None: not found.
PUBLISHED = {
    "gun_violence": (60, 38, 81),
    "climate_change": (39, 14, 64),
    "racism": (None, 14, 55),
    "illegal_immigration": (47, 70, 25),
}


def test_the_shipped_shares_are_the_published_ones():
    ref = pew_2023()
    assert set(ref.very_big_problem) == set(PUBLISHED)
    for topic, figures in PUBLISHED.items():
        got = tuple(ref.very_big_share(topic, g) for g in ("all_adults", "republican", "democrat"))
        assert got == tuple(None if f is None else f / 100 for f in figures), topic
        assert ref.very_big_problem[topic].source
    assert ref.survey.respondents == 5115 and ref.survey.options[0] == "A very big problem"
    assert ref.very_big_share("no_such_topic", "democrat") is None


def test_the_partisan_direction_matches_the_paper_topics():
    ref = pew_2023()
    for topic in ("gun_violence", "climate_change", "racism"):
        assert ref.very_big_share(topic, "democrat") > ref.very_big_share(topic, "republican"), topic
    assert ref.very_big_share("illegal_immigration", "republican") > ref.very_big_share("illegal_immigration", "democrat")


def test_distributions_cross_checks_and_caveats_travel_with_the_numbers():
    ref = pew_2023()
    (guns,) = ref.distributions
    assert (guns.topic, guns.group, guns.very_big, guns.moderately_big, guns.small, guns.not_a_problem) == \
        ("gun_violence", "all_adults", 60, 23, 13, 4)
    assert guns.very_big == PUBLISHED["gun_violence"][0]  # the table and the distribution agree
    assert len(ref.cross_checks) == 10 and all(c.note for c in ref.cross_checks if c.wave.startswith("2018"))
    assert any("secondary" in c for c in ref.caveats) and any("4-point" in c for c in ref.caveats)


@pytest.mark.parametrize("break_it, needle", [
    (lambda d: d["very_big_problem"]["racism"].update(democrat=120), "less than or equal to 100"),
    (lambda d: d["very_big_problem"].update(taxes=d["very_big_problem"]["racism"]), "unknown topics"),
    (lambda d: d["distributions"][0].update(small=30), "does not sum to 100"),
    (lambda d: d["very_big_problem"]["racism"].pop("source"), "source"),
    (lambda d: d["caveats"].clear(), "caveats"),
])
def test_a_data_file_that_breaks_its_rules_is_refused(break_it, needle):
    from importlib.resources import files

    data = yaml.safe_load(files("debatelab").joinpath("data/human_reference.yaml").read_text())
    broken = copy.deepcopy(data)
    break_it(broken)
    HumanReference.model_validate(data)  # the shipped file itself passes
    with pytest.raises(ValidationError, match=needle):
        HumanReference.model_validate(broken)
