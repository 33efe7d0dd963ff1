"""The one fuzzy matcher (voice names in /voice autocomplete, voices in /say's)."""

from __future__ import annotations

from bot import fuzzy

NAMES = ["Grandma", "Grandpa Joe", "Narrator", "The Grand Wizard", "Bob"] + [f"Voice {i}" for i in range(40)]


def test_tiers_best_first():
    assert fuzzy.score("narrator", "Narrator") == 10.0
    prefix, word, inside, subsequence = (fuzzy.score(q, "Grandpa Joe") for q in ("gra", "jo", "ndpa", "gpj"))
    assert prefix > word > inside > subsequence > 0
    assert fuzzy.score("afbel", "af_bella") is not None  # subsequence across a separator
    assert fuzzy.score("bella", "Kokoro-82m/af_bella") > fuzzy.score("bella", "Kokoro-82m/af_isabella")


def test_one_threshold_for_typos():
    assert fuzzy.score("Narator", "Narrator") is not None  # one letter missing
    assert fuzzy.score("nicle", "af_nicole") is not None  # close to one word
    assert fuzzy.score("zzzz", "Narrator") is None
    assert fuzzy.score("xyz", "Bob") is None
    ratio_just_below = "abcdefghij"  # shares 6 of 10 letters in order with the candidate: ratio 0.6
    assert fuzzy.score(ratio_just_below, "abcdefqrst") is None


def test_rank_is_fuzzy_ordered_and_capped():
    assert fuzzy.rank("grand", NAMES, 25)[:3] == ["Grandma", "Grandpa Joe", "The Grand Wizard"]
    assert fuzzy.rank("GRANDMA", NAMES, 25)[0] == "Grandma"
    assert fuzzy.rank("nrtr", NAMES, 25) == ["Narrator"]
    assert fuzzy.rank("Narator", NAMES, 25)[0] == "Narrator"
    assert fuzzy.rank("zzzz", NAMES, 25) == []
    assert fuzzy.rank("", NAMES, 25) == sorted(NAMES, key=str.casefold)[:25]  # empty: alphabetical
    assert len(fuzzy.rank("voice", NAMES, 25)) == 25
    assert fuzzy.rank("  grand   ma ", ["Grand Ma", "Grandma"], 5)[0] == "Grand Ma"  # white space collapsed
