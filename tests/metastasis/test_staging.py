"""CAMELYON17 staging: lesion classes at their size limits, every pN rule with hand-built node lists, the stage CSVs
(round trip and every malformed case), and the quadratic weighted kappa by hand and against an independent formula.
"""

import itertools
import json
import re

import numpy as np
import pytest

from medcore.errors import UserError
from metastasis.evaluation.staging import (PN_STAGES, SLIDE_LABELS, StagingResult, evaluate_staging,
                                           lesion_category, patient_of, pn_stage, quadratic_weighted_kappa,
                                           read_patient_map, read_stage_csv, slide_label, stage_patients,
                                           write_stage_csv)


# --- lesions and slides ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("diameter,expected", [
    (0, "itc"), (0.0, "itc"), (150, "itc"), (200, "itc"), (200.0, "itc"),  # at most 0.2 mm: ITC
    (200.001, "micro"), (1000, "micro"), (2000, "micro"), (2000.0, "micro"),  # above 0.2, at most 2.0 mm
    (2000.001, "macro"), (2001, "macro"), (1e6, "macro"),  # above 2.0 mm
])
def test_lesion_category_at_the_size_limits(diameter, expected):
    assert lesion_category(diameter) == expected


@pytest.mark.parametrize("diameter", [-1, -0.001, float("nan"), float("inf"), float("-inf")])
def test_lesion_category_refuses_negative_nan_and_infinite_diameters(diameter):
    with pytest.raises(ValueError, match="longest diameter"):
        lesion_category(diameter)


@pytest.mark.parametrize("diameters,expected", [
    ([], "negative"), ([150, 2500, 900], "macro"), ([150], "itc"), ([150, 200], "itc"), ([150, 900], "micro"),
    ([2000, 200, 0], "micro"), ([2000.001], "macro"), ((d for d in [10, 300]), "micro"),
])
def test_slide_label_is_the_class_of_the_largest_lesion(diameters, expected):
    assert slide_label(diameters) == expected


def test_slide_label_checks_every_diameter():
    with pytest.raises(ValueError):
        slide_label([2500, float("nan")])
    with pytest.raises(ValueError):
        slide_label([-5, 100])


# --- patients' stages -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("nodes,expected", [
    (["negative"] * 5, "pN0"),
    (["negative"], "pN0"),
    (["itc", "negative", "negative", "negative", "negative"], "pN0(i+)"),
    (["itc"] * 5, "pN0(i+)"),
    (["micro", "negative", "negative", "negative", "negative"], "pN1mi"),
    (["micro", "itc", "itc", "negative", "negative"], "pN1mi"),
    (["micro"] * 4 + ["negative"], "pN1mi"),  # four positive nodes, but no macro: not pN2
    (["micro"] * 5, "pN1mi"),
    (["macro", "negative", "negative", "negative", "negative"], "pN1"),
    (["macro", "micro", "micro", "negative", "negative"], "pN1"),  # 3 positive nodes with a macro
    (["macro", "macro", "macro", "itc", "itc"], "pN1"),  # 3 macro + 2 ITC: ITC nodes are not positive
    (["itc", "itc", "itc", "itc", "macro"], "pN1"),  # ITC nodes plus one macro
    (["macro", "micro", "micro", "micro", "negative"], "pN2"),  # 4 positive nodes with a macro
    (["macro", "macro", "macro", "macro", "itc"], "pN2"),
    (["macro"] * 5, "pN2"),
    (["macro"] + ["micro"] * 8, "pN2"),  # 9 positive nodes
    (["macro"] * 10, "pN2"),  # 10 or more (AJCC's pN3a): CAMELYON17's scale ends at pN2
    (["macro"] + ["micro"] * 11 + ["itc"] * 3, "pN2"),
])
def test_pn_stage_by_the_camelyon17_rules(nodes, expected):
    assert pn_stage(nodes) == expected
    assert pn_stage(reversed(nodes)) == expected  # an iterable, in any order


def test_pn_stage_does_not_depend_on_the_order_of_the_nodes():
    nodes = ["macro", "micro", "itc", "negative", "micro"]  # 3 positive nodes: the ITC node does not count
    assert {pn_stage(order) for order in itertools.permutations(nodes)} == {"pN1"}
    assert {pn_stage(order) for order in itertools.permutations(["itc", *nodes])} == {"pN1"}
    assert {pn_stage(order) for order in itertools.permutations(["micro", *nodes])} == {"pN2"}


@pytest.mark.parametrize("nodes,named", [(["negative", "Macro"], "'Macro'"), (["pN1"], "'pN1'"),
                                         (["macro", "tumor"], "'tumor'"), (["macro", ""], "''")])
def test_pn_stage_names_an_unknown_label(nodes, named):
    with pytest.raises(ValueError, match=f"unknown slide label {named}"):
        pn_stage(nodes)


def test_pn_stage_refuses_no_nodes_and_a_bare_string():
    with pytest.raises(ValueError, match="no lymph nodes"):
        pn_stage([])
    with pytest.raises(ValueError, match="string"):
        pn_stage("macro")


@pytest.mark.parametrize("name,patient", [("patient_004_node_2.tif", "patient_004"),
                                          ("patient_004_node_2", "patient_004"),
                                          ("patient_120_node_0.tiff", "patient_120"),
                                          ("patient_0_node_11.TIF", "patient_0")])
def test_patient_of_a_slide_name(name, patient):
    assert patient_of(name) == patient


@pytest.mark.parametrize("name", ["patient_004.zip", "patient_004", "slide_1.tif", "patient_004_node_.tif",
                                  "xpatient_004_node_2.tif", "patient_004_node_2.tif.zip", ""])
def test_patient_of_refuses_other_names(name):
    with pytest.raises(ValueError, match="not a CAMELYON17 slide name"):
        patient_of(name)


def test_stage_patients_groups_slides_by_name_or_by_map():
    labels = {"patient_001_node_0": "macro", "patient_001_node_1": "itc", "patient_000_node_0": "negative",
              "patient_000_node_1": "itc", "patient_002_node_3": "micro"}
    assert stage_patients(labels) == {"patient_000": "pN0(i+)", "patient_001": "pN1", "patient_002": "pN1mi"}
    # A map overrides the names: here every slide is one patient's, with 1 macro + 1 micro positive node.
    assert stage_patients(labels, {slide: "p" for slide in labels}) == {"p": "pN1"}
    with pytest.raises(ValueError, match="'a' is not in the patient map"):
        stage_patients({"a": "macro"}, {"b": "p"})
    with pytest.raises(ValueError, match="not a CAMELYON17 slide name"):
        stage_patients({"slide_a": "macro"})


# --- the patient map ------------------------------------------------------------------------------------------

def test_read_patient_map(tmp_path):
    path = tmp_path / "map.csv"
    path.write_text("centre,Patient,slide\n0,p1.zip,a.tif\n0,p1,b\n1,p2,c.TIFF\n\n0,p1,a\n")
    assert read_patient_map(path) == {"a": "p1", "b": "p1", "c": "p2"}  # the same pair twice is accepted


@pytest.mark.parametrize("text,line,problem", [
    ("slide,case\na,p1\n", 1, "no 'patient'"),
    ("name,stage\na,p1\n", 1, "no 'slide' and no 'patient'"),
    ("slide,patient\na,p1\nb,p2\na.tif,p2\n", 4, "slide a given patient p2, but patient p1 on line 2"),
    ("slide,patient\na,p1\nb,\n", 3, "needs a slide and its patient"),
    ("slide,patient\na,p1\nb\n", 3, "needs a slide and its patient"),
    ("slide,patient\n,p1\n", 2, "needs a slide and its patient"),
    ("slide,patient\na,.zip\n", 2, "needs a slide and its patient"),
])
def test_read_patient_map_errors_name_the_file_and_line(tmp_path, text, line, problem):
    path = tmp_path / "map.csv"
    path.write_text(text)
    with pytest.raises(UserError) as caught:
        read_patient_map(path)
    assert str(caught.value).startswith(f"{path}:{line}: ") and problem in str(caught.value)


def test_read_patient_map_missing_or_empty_file(tmp_path):
    with pytest.raises(UserError, match=f"^{re.escape(str(tmp_path / 'none.csv'))}: patient map missing$"):
        read_patient_map(tmp_path / "none.csv")
    (tmp_path / "empty.csv").write_text("\n\n")
    with pytest.raises(UserError, match=f"^{re.escape(str(tmp_path / 'empty.csv'))}: empty patient map"):
        read_patient_map(tmp_path / "empty.csv")


# --- stage CSVs -----------------------------------------------------------------------------------------------

#: The first rows of a CAMELYON17 stage_labels.csv, in the challenge's layout.
CHALLENGE_ROWS = """patient,stage
patient_000.zip,pN0
patient_000_node_0.tif,negative
patient_000_node_1.tif,negative
patient_001.zip,pN1
patient_001_node_0.tif,macro
patient_001_node_1.tif,itc
patient_002.zip,pN0(i+)
patient_002_node_4.tif,itc
"""


def test_read_stage_csv_in_the_challenge_format(tmp_path):
    path = tmp_path / "stage_labels.csv"
    path.write_text(CHALLENGE_ROWS)
    stages, labels = read_stage_csv(path)
    assert stages == {"patient_000": "pN0", "patient_001": "pN1", "patient_002": "pN0(i+)"}
    assert labels == {"patient_000_node_0": "negative", "patient_000_node_1": "negative",
                      "patient_001_node_0": "macro", "patient_001_node_1": "itc", "patient_002_node_4": "itc"}


def test_read_stage_csv_reads_stages_and_labels_in_any_case_and_skips_blank_lines(tmp_path):
    path = tmp_path / "s.csv"
    # As the challenge's script lowercases every stage; a byte-order mark, spaces, CRLF and blank lines pass.
    path.write_bytes("\ufeffPatient , Stage\r\npatient_7.ZIP,PN0(I+)\r\n\r\n p_7_a.TIF , MACRO \r\n"
                     "patient_8.zip,pn1mi,\r\nx.tiff,Itc\r\n".encode())
    assert read_stage_csv(path) == ({"patient_7": "pN0(i+)", "patient_8": "pN1mi"}, {"p_7_a": "macro", "x": "itc"})


def test_write_stage_csv_lays_out_patients_then_their_slides(tmp_path):
    stages = {"patient_001": "pN1", "patient_000.zip": "pN0"}
    labels = {"patient_001_node_1": "itc", "patient_000_node_0.tif": "negative", "patient_001_node_0": "macro",
              "patient_002_node_0": "micro", "odd_slide": "negative"}
    path = write_stage_csv(tmp_path / "out" / "submission.csv", stages, labels)
    assert path.read_text() == ("patient,stage\n"
                                "patient_000.zip,pN0\npatient_000_node_0.tif,negative\n"
                                "patient_001.zip,pN1\npatient_001_node_0.tif,macro\npatient_001_node_1.tif,itc\n"
                                "patient_002_node_0.tif,micro\n"  # a patient without a stage: its place
                                "odd_slide.tif,negative\n")  # no patient to tell: last
    # With a map, odd_slide goes with patient_000 (sorted among its slides).
    write_stage_csv(path, stages, labels, patient_map={"odd_slide": "patient_000"})
    assert path.read_text().splitlines()[1:5] == ["patient_000.zip,pN0", "odd_slide.tif,negative",
                                                  "patient_000_node_0.tif,negative", "patient_001.zip,pN1"]
    assert not [p.name for p in path.parent.iterdir() if p.name != "submission.csv"]  # no temporary file left


def test_stage_csv_round_trip(tmp_path):
    rng = np.random.default_rng(3)
    stages = {f"patient_{i:03d}": str(rng.choice(PN_STAGES)) for i in range(0, 40, 3)}
    labels = {f"patient_{i:03d}_node_{j}": str(rng.choice(SLIDE_LABELS)) for i in range(0, 42, 2) for j in range(5)}
    labels["another_name"] = "itc"
    path = write_stage_csv(tmp_path / "s.csv", stages, labels)
    assert read_stage_csv(path) == (stages, labels)
    assert len(path.read_text().splitlines()) == 1 + len(stages) + len(labels)
    # and the challenge's own rows survive a read and a write unchanged
    (tmp_path / "c.csv").write_text(CHALLENGE_ROWS)
    write_stage_csv(tmp_path / "again.csv", *read_stage_csv(tmp_path / "c.csv"))
    assert (tmp_path / "again.csv").read_text() == CHALLENGE_ROWS


def test_write_stage_csv_refuses_unknown_values():
    with pytest.raises(ValueError, match="'pN3' is not one of"):
        write_stage_csv("/nonexistent/never.csv", {"patient_000": "pN3"}, {})
    with pytest.raises(ValueError, match="'Macro' is not one of"):
        write_stage_csv("/nonexistent/never.csv", {}, {"patient_000_node_0": "Macro"})
    with pytest.raises(ValueError, match="given twice"):
        write_stage_csv("/nonexistent/never.csv", {"p": "pN0", "p.zip": "pN1"}, {})


@pytest.mark.parametrize("text,line,problem", [
    ("patient_000.zip,pN0\n", 1, "expected the header 'patient,stage'"),
    ("patient,label\npatient_000.zip,pN0\n", 1, "expected the header 'patient,stage'"),
    ("patient,stage,extra\n", 1, "expected the header 'patient,stage'"),
    ("patient,stage\npatient_000.zip,pN3\n", 2, "unknown stage 'pN3' for patient patient_000"),
    ("patient,stage\npatient_000.zip,macro\n", 2, "unknown stage 'macro'"),
    ("patient,stage\npatient_000.zip,pN0\npatient_000_node_0.tif,tumor\n", 3, "unknown slide label 'tumor'"),
    ("patient,stage\npatient_000_node_0.tif,pN0\n", 2, "unknown slide label 'pN0'"),
    ("patient,stage\npatient_000,pN0\n", 2, "'patient_000' is neither a patient (NAME.zip) nor a slide"),
    ("patient,stage\nnotes.txt,pN0\n", 2, "neither a patient"),
    ("patient,stage\n.zip,pN0\n", 2, "no name before its extension"),
    ("patient,stage\npatient_000.zip,pN0\n\npatient_000.zip,pN0\n", 4, "patient patient_000 listed twice (first "
                                                                       "on line 2)"),
    ("patient,stage\na.tif,itc\nb.tif,itc\nA.TIF,itc\na.tiff,micro\n", 5, "slide a listed twice (first on line 2)"),
    ("patient,stage\npatient_000.zip,pN0,x\n", 2, "two columns"),
    ("patient,stage\npatient_000.zip\n", 2, "two columns"),
    ("patient,stage\npatient_000.zip,\n", 2, "two columns"),
    ("patient,stage\n,pN0\n", 2, "two columns"),
    ('patient,stage\n"patient_000.zip,pN0\n', 2, "not a valid CSV line"),  # a quote never closed
    ('patient,stage\n"patient_000.zip"x,pN0\n', 2, "not a valid CSV line"),  # text after a closing quote
    ('patient,stage\npatient_000.zip,pN0\n"patient_001\n.zip",pN0\n', 4, "a quoted value spans lines"),
])
def test_malformed_stage_csv_is_one_line_naming_file_and_line(tmp_path, text, line, problem):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(UserError) as caught:
        read_stage_csv(path)
    message = str(caught.value)
    assert message.startswith(f"{path}:{line}: "), message
    assert problem in message and "\n" not in message


def test_missing_empty_or_binary_stage_csv(tmp_path):
    with pytest.raises(UserError, match=f"^{re.escape(str(tmp_path / 'none.csv'))}: stage CSV missing$"):
        read_stage_csv(tmp_path / "none.csv")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(UserError, match=f"^{re.escape(str(tmp_path / 'empty.csv'))}: empty stage CSV"):
        read_stage_csv(tmp_path / "empty.csv")
    (tmp_path / "binary.csv").write_bytes(b"patient,stage\n\xff\xfe\n")
    with pytest.raises(UserError, match=f"^{re.escape(str(tmp_path / 'binary.csv'))}: not a text file"):
        read_stage_csv(tmp_path / "binary.csv")


def test_a_header_alone_is_no_patients_and_no_slides(tmp_path):
    (tmp_path / "h.csv").write_text("patient,stage\n")
    assert read_stage_csv(tmp_path / "h.csv") == ({}, {})


# --- the kappa ------------------------------------------------------------------------------------------------

def test_kappa_by_hand():
    # Classes pN0, pN0(i+), pN1mi, pN1, pN2 are 0..4; W[i, j] = (i - j)^2 / 16.
    reference = ["pN0", "pN0", "pN1", "pN2"]  # 0, 0, 3, 4
    predicted = ["pN0", "pN1", "pN1", "pN1"]  # 0, 3, 3, 3
    # O (rows reference, columns predicted): O[0,0] = 1, O[0,3] = 1, O[3,3] = 1, O[4,3] = 1.
    # sum(W * O) = (0 + 9 + 0 + 1) / 16 = 10 / 16.
    # Marginals: reference rows 0: 2, 3: 1, 4: 1; predicted columns 0: 1, 3: 3; n = 4; E = outer / 4:
    # E[0,0] = 0.5, E[0,3] = 1.5, E[3,0] = 0.25, E[3,3] = 0.75, E[4,0] = 0.25, E[4,3] = 0.75.
    # sum(W * E) = (0.5*0 + 1.5*9 + 0.25*9 + 0.75*0 + 0.25*16 + 0.75*1) / 16 = 20.5 / 16.
    # kappa = 1 - 10 / 20.5 = 21 / 41 = 0.51219...
    assert quadratic_weighted_kappa(reference, predicted) == pytest.approx(21 / 41, abs=1e-12)
    assert quadratic_weighted_kappa(predicted, reference) == pytest.approx(21 / 41, abs=1e-12)  # symmetric


def test_kappa_by_hand_on_three_classes():
    # Classes a, b, c = 0, 1, 2; W = (i - j)^2 / 4. Reference a, b, c; predicted b, b, c.
    # O[0,1] = O[1,1] = O[2,2] = 1: sum(W * O) = 1/4.
    # Rows 1, 1, 1; columns 0, 2, 1; E = outer / 3: E[i,1] = 2/3, E[i,2] = 1/3 for every row i.
    # sum(W * E) = (2/3 * (1 + 0 + 1) + 1/3 * (4 + 1 + 0)) / 4 = (4/3 + 5/3) / 4 = 3/4; kappa = 1 - 1/3 = 2/3.
    assert quadratic_weighted_kappa(["a", "b", "c"], ["b", "b", "c"], classes=("a", "b", "c")) == \
        pytest.approx(2 / 3, abs=1e-12)
    # The order of the classes is the scale: with b first, the same labels give another kappa.
    # Codes b, a, c = 0, 1, 2: reference 1, 0, 2, predicted 0, 0, 2: sum(W * O) = 1/4 (the same 1-step error);
    # rows 1, 1, 1; columns 2, 0, 1: E[i,0] = 2/3, E[i,2] = 1/3: sum(W * E) = (2/3 * (0+1+4) + 1/3 * (4+1+0)) / 4
    # = 15/12 = 5/4: kappa = 1 - (1/4) / (5/4) = 4/5.
    assert quadratic_weighted_kappa(["a", "b", "c"], ["b", "b", "c"], classes=("b", "a", "c")) == \
        pytest.approx(4 / 5, abs=1e-12)


def test_kappa_of_perfect_chance_and_reversed_predictions():
    stages = list(PN_STAGES) * 3
    assert quadratic_weighted_kappa(stages, stages) == 1.0
    # All reference in one class, all predictions in another: O = E, kappa 0 (the formula, not the 0/0 case).
    assert quadratic_weighted_kappa(["pN0"] * 4, ["pN2"] * 4) == 0.0
    # Reversed scale: codes x and 4 - x, x = 0..4; mean (x - y)^2 = (16 + 4 + 0 + 4 + 16) / 5 = 8; over all 25
    # pairs (x_a, y_b), both uniform on 0..4, the mean squared difference is var + var = 4: kappa = 1 - 8/4 = -1.
    assert quadratic_weighted_kappa(list(PN_STAGES), list(reversed(PN_STAGES))) == pytest.approx(-1.0)


def test_kappa_when_chance_agreement_leaves_nothing_to_weigh():
    # Reference and predictions all pN1: O and E both only on the diagonal, sum(W * E) = 0 and sum(W * O) = 0.
    # The 0/0 is taken as 1.0: the predictions equal the reference.
    assert quadratic_weighted_kappa(["pN1"] * 7, ["pN1"] * 7) == 1.0
    assert quadratic_weighted_kappa(["pN0(i+)"], ["pN0(i+)"]) == 1.0
    # One disagreement anywhere leaves the 0/0 case.
    # Codes all 3 against six 3s and a 2: sum(W * O) = 1/16 and E[3,3] = 6, E[3,2] = 1: sum(W * E) = 1/16.
    assert quadratic_weighted_kappa(["pN1"] * 7, ["pN1"] * 6 + ["pN1mi"]) == pytest.approx(0.0, abs=1e-12)


def _concordance(reference, predicted, classes):
    """Quadratic kappa by its other definition, with no confusion matrix: 1 - mean squared difference of the
    paired codes / mean squared difference over all n^2 (reference, prediction) pairs."""
    code = {name: i for i, name in enumerate(classes)}
    x = np.array([code[v] for v in reference], float)
    y = np.array([code[v] for v in predicted], float)
    return 1 - np.mean((x - y) ** 2) / np.mean((x[:, None] - y[None, :]) ** 2)


@pytest.mark.parametrize("classes", [PN_STAGES, SLIDE_LABELS, ("a", "b"), tuple("abcdefg")])
def test_kappa_agrees_with_the_pairwise_definition_on_random_labels(classes):
    rng = np.random.default_rng(len(classes))
    checked = 0
    for _ in range(300):
        n = int(rng.integers(1, 40))
        reference = [str(v) for v in rng.choice(classes, n)]
        # predictions near the reference, sometimes wholly random, so kappas from below 0 to 1 occur
        shift = rng.integers(-1, 2, n) if rng.random() < 0.7 else rng.integers(-len(classes), len(classes), n)
        predicted = [classes[int(np.clip(classes.index(r) + s, 0, len(classes) - 1))]
                     for r, s in zip(reference, shift)]
        if len(set(reference) | set(predicted)) == 1:
            assert quadratic_weighted_kappa(reference, predicted, classes) == 1.0
            continue
        assert quadratic_weighted_kappa(reference, predicted, classes) == \
            pytest.approx(_concordance(reference, predicted, classes), abs=1e-12)
        checked += 1
    assert checked > 250


def test_kappa_refuses_bad_input():
    with pytest.raises(ValueError, match="3 reference labels but 2 predictions"):
        quadratic_weighted_kappa(["pN0"] * 3, ["pN0"] * 2)
    with pytest.raises(ValueError, match="empty"):
        quadratic_weighted_kappa([], [])
    with pytest.raises(ValueError, match="unknown class 'pN3'"):
        quadratic_weighted_kappa(["pN0", "pN1"], ["pN0", "pN3"])
    with pytest.raises(ValueError, match="unknown class 'pn1'"):
        quadratic_weighted_kappa(["pn1"], ["pN1"])
    with pytest.raises(ValueError, match="two distinct classes"):
        quadratic_weighted_kappa(["a"], ["a"], classes=("a",))
    with pytest.raises(ValueError, match="two distinct classes"):
        quadratic_weighted_kappa(["a"], ["a"], classes=("a", "a"))


# --- evaluation -----------------------------------------------------------------------------------------------

def _write(path, rows):
    path.write_text("patient,stage\n" + "".join(f"{name},{value}\n" for name, value in rows))
    return path


REFERENCE = [("patient_000.zip", "pN0"), ("patient_000_node_0.tif", "negative"),
             ("patient_000_node_1.tif", "negative"),
             ("patient_001.zip", "pN1"), ("patient_001_node_0.tif", "macro"), ("patient_001_node_1.tif", "itc"),
             ("patient_002.zip", "pN2"), ("patient_002_node_0.tif", "micro"),
             ("patient_003.zip", "pN0(i+)"), ("patient_003_node_0.tif", "itc")]


def test_evaluate_staging_by_hand(tmp_path):
    reference = _write(tmp_path / "reference.csv", REFERENCE)
    predicted = _write(tmp_path / "predicted.csv", [
        ("patient_003.zip", "pN0(i+)"), ("patient_000.zip", "pN0"), ("patient_001.zip", "pN1mi"),
        ("patient_002.zip", "pN2"), ("patient_009.zip", "pN1"),  # not in the reference: reported, not scored
        ("patient_000_node_0.tif", "negative"), ("patient_000_node_1.tif", "itc"),
        ("patient_001_node_0.tif", "micro"), ("patient_001_node_1.tif", "itc"), ("patient_002_node_0.tif", "micro"),
        ("patient_003_node_0.tif", "itc"), ("patient_003_node_4.tif", "negative")])
    result = evaluate_staging(reference, predicted)
    assert isinstance(result, StagingResult)
    # Patients (codes): reference 0, 3, 4, 1; predicted 0, 2, 4, 1. One 1-step error.
    # sum(W * O) = 1/16. Rows 0: 1, 1: 1, 3: 1, 4: 1; columns 0: 1, 1: 1, 2: 1, 4: 1; E = outer / 4 = 1/4 each.
    # sum(W * E) = 1/4 * sum over rows {0,1,3,4} x columns {0,1,2,4} of (i - j)^2 / 16
    # = 1/64 * [(0+1+4+16) + (1+0+1+9) + (9+4+1+1) + (16+9+4+0)] = 76 / 64; kappa = 1 - (1/16) / (76/64) = 1 - 4/76
    assert result.kappa == pytest.approx(1 - 4 / 76, abs=1e-12)
    assert result.patient_accuracy == 3 / 4 and result.n_patients == 4
    expected_patients = np.zeros((5, 5), int)
    for r, p in [(0, 0), (3, 2), (4, 4), (1, 1)]:
        expected_patients[r, p] += 1
    assert result.patient_confusion.tolist() == expected_patients.tolist()
    # Slides: 6 in the reference; node_1 of patient_000 (negative -> itc) and node_0 of patient_001 (macro -> micro)
    # wrong.
    assert result.n_slides == 6 and result.slide_accuracy == pytest.approx(4 / 6)
    assert result.slide_confusion.tolist() == [[1, 1, 0, 0], [0, 2, 0, 0], [0, 0, 1, 0], [0, 0, 1, 0]]
    assert result.extra_patients == ["patient_009"] and result.extra_slides == ["patient_003_node_4"]
    # JSON through the to_dict() form
    as_json = json.loads(json.dumps(result.to_dict()))
    assert as_json["kappa"] == pytest.approx(1 - 4 / 76) and as_json["slide_accuracy"] == pytest.approx(4 / 6)
    assert as_json["patient_confusion"]["classes"] == list(PN_STAGES)
    assert as_json["slide_confusion"]["classes"] == list(SLIDE_LABELS)
    assert as_json["slide_confusion"]["counts"] == result.slide_confusion.tolist()
    assert as_json["n_patients"] == 4 and as_json["extra_patients"] == ["patient_009"]
    assert "kappa 0.9474 over 4 patients" in result.summary()


def test_evaluate_staging_of_the_reference_itself(tmp_path):
    reference = _write(tmp_path / "reference.csv", REFERENCE)
    result = evaluate_staging(reference, reference)
    assert result.kappa == 1.0 and result.slide_accuracy == 1.0 and result.patient_accuracy == 1.0
    assert np.trace(result.patient_confusion) == 4 and result.slide_confusion.sum() == 6
    assert not result.extra_patients and not result.extra_slides


def test_evaluate_staging_without_slides_in_the_reference(tmp_path):
    reference = _write(tmp_path / "reference.csv", [("patient_000.zip", "pN0"), ("patient_001.zip", "pN1")])
    predicted = _write(tmp_path / "predicted.csv", [("patient_000.zip", "pN1"), ("patient_001.zip", "pN1"),
                                                    ("patient_001_node_0.tif", "macro")])
    result = evaluate_staging(reference, predicted)
    assert result.slide_accuracy is None and result.n_slides == 0 and result.slide_confusion.sum() == 0
    # codes: reference 0, 3; predicted 3, 3; O[0,3] = 1: sum(W*O) = 9/16; E[0,3] = E[3,3] = 1: sum(W*E) = 9/16
    assert result.kappa == pytest.approx(0.0)
    assert "not scored" in result.summary() and json.loads(json.dumps(result.to_dict()))["slide_accuracy"] is None


def test_evaluate_staging_refuses_missing_patients_or_slides(tmp_path):
    reference = _write(tmp_path / "reference.csv", REFERENCE)
    predicted = _write(tmp_path / "predicted.csv", [row for row in REFERENCE if row[0] != "patient_002.zip"])
    with pytest.raises(UserError) as caught:
        evaluate_staging(reference, predicted)
    assert str(caught.value) == f"{predicted}: 1 of the 4 patients of {reference} missing: patient_002"
    _write(predicted, [row for row in REFERENCE if "node_1" not in row[0]])
    with pytest.raises(UserError, match=f"^{re.escape(str(predicted))}: 2 of the 6 slides of "
                                        f"{re.escape(str(reference))} missing: "
                                        "patient_000_node_1, patient_001_node_1$"):
        evaluate_staging(reference, predicted)


def test_evaluate_staging_names_the_first_few_of_many_missing(tmp_path):
    reference = _write(tmp_path / "reference.csv", [(f"patient_{i:03d}.zip", "pN0") for i in range(12)])
    predicted = _write(tmp_path / "predicted.csv", [("patient_005.zip", "pN0")])
    with pytest.raises(UserError) as caught:
        evaluate_staging(reference, predicted)
    assert str(caught.value) == (f"{predicted}: 11 of the 12 patients of {reference} missing: patient_000, "
                                 "patient_001, patient_002, patient_003, patient_004 and 6 more")


def test_evaluate_staging_refuses_a_reference_without_patients_and_malformed_files(tmp_path):
    empty = _write(tmp_path / "empty.csv", [("patient_000_node_0.tif", "negative")])
    good = _write(tmp_path / "good.csv", REFERENCE)
    with pytest.raises(UserError, match=f"^{re.escape(str(empty))}: no patients"):
        evaluate_staging(empty, good)
    bad = _write(tmp_path / "bad.csv", REFERENCE + [("patient_004.zip", "pN4")])
    with pytest.raises(UserError, match=f"^{re.escape(str(bad))}:12: unknown stage 'pN4'"):
        evaluate_staging(good, bad)
    with pytest.raises(UserError, match=f"^{re.escape(str(tmp_path / 'none.csv'))}: stage CSV missing"):
        evaluate_staging(good, tmp_path / "none.csv")
