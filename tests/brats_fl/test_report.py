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
    assert md.count("\n") == 2 + 4 * 3
    paths = write_report(report, tmp_path)
    csv_lines = paths["csv"].read_text().splitlines()
    assert csv_lines[0] == "model,site,TC,WT,ET,mean,weight" and len(csv_lines) == 1 + 4 * 3
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
    assert (tmp_path / "report.csv").read_text().splitlines()[0].endswith("HD95_TC,HD95_WT,HD95_ET,weight")
    # Results of older runs, or with one model lacking them, show the Dice columns only.
    del results["site-1"]["site-2"]["HD95_WT"]
    assert build_report(results).columns == ("TC", "WT", "ET", "mean", "HD95_TC", "HD95_ET")
    assert build_report(RESULTS).columns == ("TC", "WT", "ET", "mean")
    results["site-1"]["site-1"]["HD95_TC"] = -1.0
    (tmp_path / "bad.json").write_text(json.dumps(results))
    with pytest.raises(ReportError, match="HD95_TC = -1.0, a negative distance"):
        load_results(tmp_path / "bad.json")
