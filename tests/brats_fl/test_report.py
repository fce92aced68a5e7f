import json

import pytest

from functools import partial

from brats_fl.report import BRATS_REPORT
from medflare import crosssite
from medflare.crosssite import ReportError, find_results, format_markdown, format_text, write_report

build_report = partial(crosssite.build_report, spec=BRATS_REPORT)
load_results = partial(crosssite.load_results, spec=BRATS_REPORT)

# The seed card's cross-site numbers (final global model), as a FLARE results file would hold them.
RESULTS = {
    "site-1": {
        "SRV_FL_global_model.pt": {"TC": 0.8790, "WT": 0.9180, "ET": 0.8064, "n_cases": 30},
        "SRV_best_FL_global_model.pt": {"TC": 0.8812, "WT": 0.9152, "ET": 0.7877, "n_cases": 30},
        "site-1": {"TC": 0.8811, "WT": 0.9157, "ET": 0.7876, "n_cases": 30},
        "site-2": {"TC": 0.8798, "WT": 0.9137, "ET": 0.7895, "n_cases": 30},
    },
    "site-2": {
        "SRV_FL_global_model.pt": {"TC": 0.6223, "WT": 0.8841, "ET": 0.5908, "n_cases": 12},
        "SRV_best_FL_global_model.pt": {"TC": 0.6053, "WT": 0.8683, "ET": 0.5961, "n_cases": 12},
        "site-1": {"TC": 0.6427, "WT": 0.8882, "ET": 0.5109, "n_cases": 12},
        "site-2": {"TC": 0.6161, "WT": 0.8676, "ET": 0.5009, "n_cases": 12},
    },
}


def test_weighted_average_reproduces_the_seed_card():
    report = build_report(RESULTS)
    assert report.weights == {"site-1": 30.0, "site-2": 12.0}
    assert report.models[:2] == ["SRV_FL_global_model.pt", "SRV_best_FL_global_model.pt"]
    # Seed card: AVE TC 0.8057 WT 0.9083 ET 0.7448 for the final global model, etc.
    expected = {
        "SRV_FL_global_model.pt": (0.8057, 0.9083, 0.7448),
        "SRV_best_FL_global_model.pt": (0.8024, 0.9018, 0.7329),
        "site-1": (0.8130, 0.9078, 0.7085),
        "site-2": (0.8045, 0.9005, 0.7070),
    }
    for model, (tc, wt, et) in expected.items():
        avg = report.average[model]
        # The card averaged unrounded site scores; from its 4-decimal inputs we agree to the last digit +- 1.
        assert [avg["TC"], avg["WT"], avg["ET"]] == pytest.approx([tc, wt, et], abs=1.5e-4)
    # Hand check of one value: (0.8790 * 30 + 0.6223 * 12) / 42
    assert report.average["SRV_FL_global_model.pt"]["TC"] == pytest.approx((0.8790 * 30 + 0.6223 * 12) / 42)
    # mean is filled in when missing: (TC + WT + ET) / 3
    assert report.scores["site-2"]["site-2"]["mean"] == pytest.approx((0.6161 + 0.8676 + 0.5009) / 3)


def test_given_and_equal_weights():
    report = build_report(RESULTS, weights={"site-1": 1, "site-2": 3})
    assert report.average["site-1"]["ET"] == pytest.approx((0.7876 + 3 * 0.5109) / 4)
    no_counts = {s: {m: {k: v for k, v in metrics.items() if k != "n_cases"} for m, metrics in per.items()}
                 for s, per in RESULTS.items()}
    report = build_report(no_counts)
    assert report.weights == {"site-1": 1.0, "site-2": 1.0} and "equal" in report.weights_source
    with pytest.raises(ReportError, match="no weight given"):
        build_report(RESULTS, weights={"site-1": 1})


def test_text_markdown_and_files(tmp_path):
    report = build_report(RESULTS)
    text = format_text(report)
    assert "AVE = (site-1 x 30 + site-2 x 12) / 42" in text
    assert "  Site-1: TC: 0.8790 WT: 0.9180 ET: 0.8064" in text
    assert "  AVE:    TC: 0.8057 WT: 0.9083 ET: 0.7448" in text
    assert "Site-2 best model selected via site-2 local validation" in text
    md = format_markdown(report)
    assert md.count("\n") == 2 + 4 * 3 + 2  # header, a row per model and site, a blank line and the interval note
    paths = write_report(report, tmp_path)
    csv_lines = paths["csv"].read_text().splitlines()
    assert csv_lines[0] == "model,site,TC,WT,ET,mean,weight," + ",".join(
        f"{c}_{end}" for c in ("TC", "WT", "ET", "mean") for end in ("low", "high")) and len(csv_lines) == 1 + 4 * 3
    data = json.loads(paths["json"].read_text())
    assert data["models"]["SRV_FL_global_model.pt"]["AVE"]["TC"] == pytest.approx(0.805666, abs=1e-5)


def test_finding_and_bad_files(tmp_path):
    run = tmp_path / "ws/server/simulate_job/cross_site_val"
    run.mkdir(parents=True)
    (run / "cross_val_results.json").write_text(json.dumps(RESULTS))
    assert find_results(tmp_path / "ws") == run / "cross_val_results.json"
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReportError, match="no cross_site_val"):
        find_results(tmp_path / "empty")
    with pytest.raises(ReportError, match="no such file"):
        find_results(tmp_path / "missing")
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(ReportError, match="not valid JSON"):
        load_results(bad)
    bad.write_text(json.dumps({"site-1": {"SRV_FL_global_model.pt": {"TC": 0.5}}}))
    with pytest.raises(ReportError, match="lacks numeric TC, WT, ET"):
        load_results(bad)


def test_hd95_columns_when_every_result_has_them(tmp_path):
    import copy

    results = copy.deepcopy(RESULTS)
    for site, per_model in results.items():
        for i, metrics in enumerate(per_model.values()):
            metrics.update(HD95_TC=10.0 + i, HD95_WT=5.0, HD95_ET=373.13 if site == "site-2" else 2.0)
    report = build_report(results)
    assert report.columns == ("TC", "WT", "ET", "mean", "HD95_TC", "HD95_WT", "HD95_ET")
    # Weighted like the Dice columns: (30 x 2 + 12 x 373.13) / 42; lower is better.
    assert report.average["SRV_FL_global_model.pt"]["HD95_ET"] == pytest.approx((30 * 2 + 12 * 373.13) / 42)
    text = format_text(report)
    assert "HD95_ET: 108.04" in text and "TC: 0.8790" in text
    assert "| HD95_TC |" in format_markdown(report).splitlines()[0]
    write_report(report, tmp_path)
    assert (tmp_path / "report.csv").read_text().splitlines()[0].startswith(
        "model,site,TC,WT,ET,mean,HD95_TC,HD95_WT,HD95_ET,weight,TC_low,TC_high")
    # Results of older runs, or with one model lacking them, show the Dice columns only.
    del results["site-1"]["site-2"]["HD95_WT"]
    assert build_report(results).columns == ("TC", "WT", "ET", "mean", "HD95_TC", "HD95_ET")
    assert build_report(RESULTS).columns == ("TC", "WT", "ET", "mean")
    results["site-1"]["site-1"]["HD95_TC"] = -1.0
    (tmp_path / "bad.json").write_text(json.dumps(results))
    with pytest.raises(ReportError, match="HD95_TC = -1.0, a negative distance"):
        load_results(tmp_path / "bad.json")


def _with_items(per_case: dict[str, dict[str, list[float]]]) -> dict:
    """Results whose every (site, model) carries per-case TC/WT/ET scores (``per_case[site][model]``: TC values;
    WT and ET are TC + 0.05 and TC - 0.05), means and counts to match."""
    results = {}
    for site, per_model in per_case.items():
        results[site] = {}
        for model, tc in per_model.items():
            items = {"TC": tc, "WT": [v + 0.05 for v in tc], "ET": [v - 0.05 for v in tc]}
            items["mean"] = [sum(v) / 3 for v in zip(*items.values())]
            results[site][model] = {**{k: sum(v) / len(v) for k, v in items.items()}, "n_cases": len(tc),
                                    "items": items}
    return results


def test_intervals_per_cell_and_a_stratified_ave(tmp_path):
    results = _with_items({"site-1": {"site-1": [0.8, 0.9, 0.7, 0.6, 0.85], "site-2": [0.9] * 5},
                           "site-2": {"site-1": [0.5, 0.4, 0.6], "site-2": [0.5] * 3}})
    report = build_report(results)
    cell = report.intervals["site-1"]["site-1"]["TC"]
    assert cell.low < report.scores["site-1"]["site-1"]["TC"] < cell.high and cell.resamples == 2000
    # site-2's model scores every case of a site alike (0.9 and 0.5): resampled within each site its AVE never
    # moves, where resampling the pooled cases would mix the sites' counts
    ave = report.intervals["site-2"]["AVE"]["TC"]
    assert ave.low == ave.high == pytest.approx((0.9 * 5 + 0.5 * 3) / 8)
    assert report.intervals["site-1"]["AVE"]["WT"].low == pytest.approx(report.intervals["site-1"]["AVE"]["TC"].low
                                                                         + 0.05)
    text = format_text(report)
    assert f"TC: {report.scores['site-1']['site-1']['TC']:.4f} [{cell.low:.4f}, {cell.high:.4f}]" in text
    assert "95% percentile bootstrap intervals over each site's test cases (2000 resamples, seed 0)" in text
    written = write_report(report, tmp_path)
    data = json.loads(written["json"].read_text())
    assert data["models"]["site-1"]["intervals"]["AVE"]["TC"]["low"] == pytest.approx(
        report.intervals["site-1"]["AVE"]["TC"].low)
    assert "TC_low" in written["csv"].read_text().splitlines()[0]
    assert build_report(results, resamples=0).intervals == {}


def test_results_without_per_case_scores_have_no_intervals_and_say_so():
    report = build_report(RESULTS)
    assert report.intervals == {} and "No intervals: the results carry no per-item scores" in format_text(report)
    bad = _with_items({"site-1": {"site-1": [0.8, 0.9]}})
    bad["site-1"]["site-1"]["items"]["TC"] = [0.8]
    with pytest.raises(ReportError, match="'items' that are not lists of numbers of one length"):
        load_results_from(bad)


def load_results_from(results: dict):
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "cross_val_results.json"
        path.write_text(json.dumps(results))
        return load_results(path)


def test_paired_comparison_of_two_models(tmp_path, capsys):
    results = _with_items({"site-1": {"a": [0.8, 0.9, 0.7, 0.6], "b": [0.75, 0.85, 0.65, 0.55]},
                           "site-2": {"a": [0.5, 0.4, 0.6], "b": [0.5, 0.4, 0.6]}})
    comparison = crosssite.compare_models(results, BRATS_REPORT, "a", "b", {"site-1": 4, "site-2": 3})
    assert comparison["site-1"]["TC"].difference.low == pytest.approx(0.05) and comparison["site-1"]["TC"].p_value == 0
    assert comparison["site-2"]["TC"].difference.high == 0 and comparison["site-2"]["TC"].p_value == 1
    assert comparison["AVE"]["mean"].difference.estimate == pytest.approx(0.05 * 4 / 7)
    path = tmp_path / "cross_val_results.json"
    path.write_text(json.dumps(results))
    assert crosssite.report_command(path, BRATS_REPORT, out=tmp_path / "out", plot=False, compare=("a", "b")) == 0
    assert "a minus b, paired on the same test cases" in capsys.readouterr().out
    saved = json.loads((tmp_path / "out" / "comparison.json").read_text())
    assert saved["rows"]["site-1"]["TC"]["p_value"] == 0
    with pytest.raises(ReportError, match="no model named 'c'"):
        crosssite.compare_models(results, BRATS_REPORT, "a", "c", {"site-1": 4, "site-2": 3})
    with pytest.raises(ReportError, match="no per-item scores"):
        crosssite.compare_models(RESULTS, BRATS_REPORT, "site-1", "site-2", {"site-1": 30, "site-2": 12})
