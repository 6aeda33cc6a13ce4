import pytest

from i2e_engine.inflect import plural, singulars


@pytest.mark.parametrize("word, expected", [
    ("coin", "coins"), ("galaxy", "galaxies"), ("box", "boxes"), ("church", "churches"),
    ("day", "days"), ("space shuttle", "space shuttles"), ("Bus", "Buses"),
])
def test_plural(word, expected):
    assert plural(word) == expected


@pytest.mark.parametrize("word", ["coin", "galaxy", "box", "church", "day", "space shuttle", "crater"])
def test_singulars_recover_the_word(word):
    assert word in singulars(plural(word))


def test_singulars_leave_non_plurals_alone():
    assert singulars("glass") == []
    assert singulars("bus") == []
