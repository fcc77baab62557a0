"""The reset_metrics command: empties the metric files of PROMETHEUS_MULTIPROC_DIR, only them."""

from tests.support.commands import run


def test_deletes_the_metric_files_and_keeps_anything_else(settings, tmp_path):
    settings.PROMETHEUS_MULTIPROC_DIR = str(tmp_path)
    for name in ("counter_1.db", "gauge_all_2.db", "notes.txt"):
        (tmp_path / name).write_text("x")

    out, _ = run("reset_metrics")

    assert out == "2 metric file(s) deleted.\n"
    assert [path.name for path in tmp_path.iterdir()] == ["notes.txt"]


def test_without_a_directory_it_says_there_is_nothing_to_reset(settings):
    settings.PROMETHEUS_MULTIPROC_DIR = ""

    out, _ = run("reset_metrics")

    assert out == "PROMETHEUS_MULTIPROC_DIR is not set: nothing to reset.\n"
