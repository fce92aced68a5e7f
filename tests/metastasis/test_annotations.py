import numpy as np
import pytest

from metastasis.data.annotations import Annotation, AnnotationError, rasterize, read_asap_xml, write_asap_xml

SQUARE = np.array([[10, 10], [30, 10], [30, 30], [10, 30]], dtype=float)

CAMELYON_XML = """<?xml version="1.0"?>
<ASAP_Annotations>
\t<Annotations>
\t\t<Annotation Name="_0" Type="Polygon" PartOfGroup="_0" Color="#F4FA58">
\t\t\t<Coordinates>
\t\t\t\t<Coordinate Order="2" X="30" Y="30" />
\t\t\t\t<Coordinate Order="0" X="10" Y="10" />
\t\t\t\t<Coordinate Order="1" X="30" Y="10" />
\t\t\t\t<Coordinate Order="3" X="10" Y="30" />
\t\t\t</Coordinates>
\t\t</Annotation>
\t\t<Annotation Name="_2" Type="Polygon" PartOfGroup="_2" Color="#64FE2E">
\t\t\t<Coordinates>
\t\t\t\t<Coordinate Order="0" X="1.6e1" Y="16" />
\t\t\t\t<Coordinate Order="1" X="24" Y="16" />
\t\t\t\t<Coordinate Order="2" X="24" Y="24" />
\t\t\t\t<Coordinate Order="3" X="16" Y="24" />
\t\t\t</Coordinates>
\t\t</Annotation>
\t</Annotations>
\t<AnnotationGroups>
\t\t<Group Name="_0" PartOfGroup="None" Color="#00ff00"><Attributes /></Group>
\t\t<Group Name="_2" PartOfGroup="None" Color="#00ff00"><Attributes /></Group>
\t</AnnotationGroups>
</ASAP_Annotations>
"""


def test_read_camelyon_schema(tmp_path):
    path = tmp_path / "tumor_001.xml"
    path.write_text(CAMELYON_XML)
    anns = read_asap_xml(path)
    assert [a.group for a in anns] == ["_0", "_2"]
    assert np.array_equal(anns[0].points, SQUARE)  # ordered by the Order attribute
    assert anns[1].is_exclusion and anns[1].points[0, 0] == 16.0


def test_rasterize_square_with_hole(tmp_path):
    path = tmp_path / "a.xml"
    path.write_text(CAMELYON_XML)
    mask = rasterize(read_asap_xml(path), (0, 0), (40, 40), 1)
    assert mask.dtype == np.uint8 and mask.shape == (40, 40)
    expected = np.zeros((40, 40), np.uint8)
    # Pixel centres j + 0.5 inside [10, 30): columns 10..29; the hole [16, 24) removes 16..23.
    expected[10:30, 10:30] = 1
    expected[16:24, 16:24] = 0
    assert np.array_equal(mask, expected)
    # Downsample 2 with an offset: output pixel (i, j) covers level-0 [4 + 2j, 6 + 2j).
    # Centres at 4 + 2j + 1 = 5, 7, ...: inside [10, 30) for j = 3..12, inside the hole [16, 24) for j = 6..9.
    low = rasterize(read_asap_xml(path), (4, 4), (20, 20), 2)
    expected = np.zeros((20, 20), np.uint8)
    expected[3:13, 3:13] = 1
    expected[6:10, 6:10] = 0
    assert np.array_equal(low, expected)


def test_rasterize_triangle_and_concave_shape():
    # Right triangle (0,0)-(10,0)-(0,10): centre (j+.5, i+.5) inside iff i + j + 1 < 10.
    tri = Annotation("t", "Tumor", np.array([[0, 0], [10, 0], [0, 10]], float))
    mask = rasterize([tri], (0, 0), (12, 12), 1)
    i, j = np.mgrid[0:12, 0:12]
    assert np.array_equal(mask, ((i + j + 1 < 10) & (i < 10) & (j < 10)).astype(np.uint8))
    # A U shape: the notch stays empty.
    u = Annotation("u", "_1", np.array([[0, 0], [9, 0], [9, 9], [6, 9], [6, 3], [3, 3], [3, 9], [0, 9]], float))
    mask = rasterize([u], (0, 0), (9, 9), 1)
    assert mask[0:3].all() and mask[3:9, 0:3].all() and mask[3:9, 6:9].all() and not mask[3:9, 3:6].any()
    # Outside the region: nothing, and no error.
    assert rasterize([u], (100, 100), (5, 5), 1).sum() == 0


def test_round_trip(tmp_path):
    anns = [Annotation("Annotation 0", "Tumor", SQUARE * 1000.5), Annotation("Annotation 1", "_2", SQUARE)]
    path = write_asap_xml(tmp_path / "x.xml", anns)
    back = read_asap_xml(path)
    assert [(a.name, a.group) for a in back] == [(a.name, a.group) for a in anns]
    assert all(np.allclose(a.points, b.points) for a, b in zip(anns, back))


@pytest.mark.parametrize(
    "text, message",
    [
        ("<ASAP_Annotations><Annotations>", "malformed XML"),
        ("<Other><Annotations/></Other>", "not an ASAP annotation file"),
        ('<ASAP_Annotations><Annotations><Annotation Name="a" PartOfGroup="Tumor"><Coordinates>'
         '<Coordinate Order="0" X="1" Y="1"/><Coordinate Order="1" X="2" Y="2"/></Coordinates></Annotation>'
         "</Annotations></ASAP_Annotations>", "has 2 coordinates"),
        ('<ASAP_Annotations><Annotations><Annotation Name="a" PartOfGroup="Tumor"><Coordinates/></Annotation>'
         "</Annotations></ASAP_Annotations>", "has 0 coordinates"),
        ('<ASAP_Annotations><Annotations><Annotation Name="a" PartOfGroup="Tumor"><Coordinates>'
         '<Coordinate Order="0" X="1,5" Y="1"/></Coordinates></Annotation></Annotations></ASAP_Annotations>',
         "not a number"),
        ('<ASAP_Annotations><Annotations><Annotation Name="a" PartOfGroup="Stroma"><Coordinates>'
         '<Coordinate Order="0" X="1" Y="1"/></Coordinates></Annotation></Annotations></ASAP_Annotations>',
         "group 'Stroma'"),
    ],
)
def test_bad_files(tmp_path, text, message):
    path = tmp_path / "bad.xml"
    path.write_text(text)
    with pytest.raises(AnnotationError, match=message) as err:
        read_asap_xml(path)
    assert str(path) in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(AnnotationError, match="missing"):
        read_asap_xml(tmp_path / "none.xml")
