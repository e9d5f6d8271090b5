"""lrp.neuro.atlas and label_tables: label parsing, built-in atlases, resampling, merging.

Tests on the real MRIcron atlases are skipped when /usr/share/mricron/templates is absent; the
references there are computed with plain numpy/nibabel on the raw files, not with our code."""
from __future__ import annotations

import json
import warnings

import nibabel as nib
import numpy as np
import pytest
from conftest import TEMPLATES, needs_templates

from lrp.errors import DataError
from lrp.neuro import Atlas, MissingFileError, load_atlas, load_template, template_path
from lrp.neuro import atlas as atlas_module
from lrp.neuro.atlas import HARVARD_OXFORD_CORTICAL
from lrp.neuro.label_tables import read_area_mapping, read_label_table


@pytest.fixture(scope="module")
def aal() -> Atlas:
    return load_atlas("aal", directory=TEMPLATES)


@pytest.fixture(scope="module")
def aal_raw() -> np.ndarray:
    """The AAL label volume as stored, read by nibabel alone."""
    return np.asanyarray(nib.load(TEMPLATES / "aal.nii.gz").dataobj)


def small_atlas(spacing: float = 2.0) -> Atlas:
    """A 6x5x4 atlas with 2 mm voxels: ids 1, 2, 3, 10, 11, 20 in known blocks; id 5 named but empty."""
    data = np.zeros((6, 5, 4), dtype=np.int16)
    data[0:2, 0:2, 0:2] = 1       # 8 voxels
    data[2:4, 0:2, 0:2] = 2       # 8
    data[4:6, 0:1, 0:1] = 3       # 2
    data[0:3, 3:5, 0:4] = 10      # 24
    data[3:6, 3:5, 0:4] = 11      # 24
    data[0, 2, 3] = 20            # 1
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = (-10.0, 20.0, 4.0)
    labels = {1: "Alpha_L", 2: "Alpha_R", 3: "Beta", 5: "Empty", 10: "Left Gamma", 11: "Right Gamma", 20: "Delta"}
    return Atlas.from_array(data, affine, labels)


# -- label tables ----------------------------------------------------------------------------------
def test_aal_style_text(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_bytes(b"# comment\r\n1 Precentral_L 2001\r\n2 Precentral_R 2002\r\n\r\n3 Frontal Pole\r\n"
                     b"4 Brodmann area 4\r\n")
    assert read_label_table(path) == {1: "Precentral_L", 2: "Precentral_R", 3: "Frontal Pole",
                                      4: "Brodmann area 4"}


def test_tab_separated_text_drops_background(tmp_path):
    path = tmp_path / "jhu.txt"
    path.write_text("0\tUnclassified\n1\tMiddle_cerebellar_peduncle\n2\tPontine crossing tract\n")
    assert read_label_table(path) == {1: "Middle_cerebellar_peduncle", 2: "Pontine crossing tract"}


@needs_templates
def test_real_aal_table():
    lines = (TEMPLATES / "aal.nii.txt").read_text().split("\n")
    reference = {int(line.split()[0]): line.split()[1] for line in lines if line.strip()}
    table = read_label_table(TEMPLATES / "aal.nii.txt")
    assert table == reference
    assert len(table) == 116 and table[37] == "Hippocampus_L" and table[116] == "Vermis_10"


@pytest.mark.parametrize("suffix, content", [
    (".tsv", "index\tname\tcolour\n1\tFrontal Pole\tred\n2\tInsular Cortex\tblue\n"),
    (".csv", 'label,region\n1,"Inferior Frontal Gyrus, pars triangularis"\n2,Insular Cortex\n'),
    (".csv", "ID,Label_Name\n0,Background\n1,Frontal Pole\n2,Insular Cortex\n"),
    (".csv", "1,Frontal Pole\n2,Insular Cortex\n"),
    (".txt", "id\tname\n1\tFrontal Pole\n2\tInsular Cortex\n"),
])
def test_delimited_tables(tmp_path, suffix, content):
    path = tmp_path / f"labels{suffix}"
    path.write_text(content)
    first = "Inferior Frontal Gyrus, pars triangularis" if "triangularis" in content else "Frontal Pole"
    assert read_label_table(path) == {1: first, 2: "Insular Cortex"}


def fsl_xml(atlas_type: str | None) -> str:
    header = f"<header><name>Test</name><type>{atlas_type}</type></header>" if atlas_type else "<header/>"
    return (f'<?xml version="1.0" encoding="ISO-8859-1"?>\n<atlas>{header}<data>'
            '<label index="0" x="48" y="94" z="35">Frontal Pole</label>'
            '<label index="1" x="25" y="70" z="32">Insular Cortex</label>'
            '<label index="2" x="48" y="80" z="64">Superior Frontal Gyrus</label></data></atlas>')


@pytest.mark.parametrize("atlas_type, offset", [("Probabilistic", 1), (None, 1), ("Label", 0)])
def test_fsl_xml_index_offset(tmp_path, atlas_type, offset):
    path = tmp_path / "atlas.xml"
    path.write_text(fsl_xml(atlas_type))
    names = ["Frontal Pole", "Insular Cortex", "Superior Frontal Gyrus"]
    expected = {index + offset: name for index, name in enumerate(names) if index + offset}
    assert read_label_table(path) == expected
    assert read_label_table(path, index_offset=5) == {5: "Frontal Pole", 6: "Insular Cortex",
                                                      7: "Superior Frontal Gyrus"}


@pytest.mark.parametrize("name, content, message", [
    ("dup.txt", "1 A\n1 B\n", "label id 1 appears twice"),
    ("bad.csv", "id,name\n1,A\nx,B\n", "label id 'x' is not an integer"),
    ("cols.csv", "code,colour\n1,red\n", "no id and name columns"),
    ("broken.xml", "<atlas><label index='0'>A</label>", "not valid XML"),
    ("empty.txt", "# nothing\n", "empty"),
])
def test_malformed_tables(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(DataError, match=message) as caught:
        read_label_table(tmp_path / name)
    assert name in str(caught.value)


def test_missing_table(tmp_path):
    with pytest.raises(MissingFileError, match="no such file"):
        read_label_table(tmp_path / "absent.txt")


# -- the Atlas object on a small hand-made atlas ---------------------------------------------------
def test_counts_masks_volumes_centroids():
    atlas = small_atlas()
    assert atlas.ids == (1, 2, 3, 5, 10, 11, 20)
    assert atlas.voxel_counts() == {1: 8, 2: 8, 3: 2, 5: 0, 10: 24, 11: 24, 20: 1}
    assert atlas.voxel_volume_mm3 == 8.0
    assert atlas.region_volume_mm3("Beta") == 16.0
    assert atlas.mask("beta").sum() == 2 and atlas.mask(3)[4, 0, 0]
    # block [0:2]^3 has voxel-centre mean (0.5, 0.5, 0.5): mm = 2 * 0.5 + offset
    np.testing.assert_allclose(atlas.centroid_mm("Alpha_L"), [-9.0, 21.0, 5.0])
    with pytest.raises(DataError, match="has no voxels"):
        atlas.centroid_mm("Empty")
    with pytest.raises(DataError, match=r"no region 'Alpha_X'.*did you mean"):
        atlas.mask("Alpha_X")
    assert atlas.data.dtype == np.int32 and not atlas.data.flags.writeable


def test_invalid_atlases():
    data = np.array([[[0, 1], [2, 3]]])
    with pytest.raises(DataError, match=r"label ids 3 occur in the image"):
        Atlas.from_array(data, np.eye(4), {1: "A", 2: "B"})
    with pytest.raises(DataError, match="names must be unique; repeated: A"):
        Atlas.from_array(data, np.eye(4), {1: "A", 2: "A", 3: "C"})
    with pytest.raises(DataError, match="must be integers"):
        Atlas(nib.Nifti1Image(data + 0.5, np.eye(4)), {1: "A", 2: "B", 3: "C"})
    with pytest.raises(DataError, match="0..2"):
        Atlas.from_array(-data, np.eye(4), {})


def test_merge_in_mapping_order_and_unmapped_labels():
    atlas = small_atlas()
    merged = atlas.merge({"Gamma": ["Left Gamma", 11], "Alpha": ["alpha_l", "Alpha_R"]})
    assert merged.labels == {1: "Gamma", 2: "Alpha"}
    np.testing.assert_array_equal(merged.data, np.select(
        [np.isin(atlas.data, (10, 11)), np.isin(atlas.data, (1, 2))], [1, 2], 0))
    kept = atlas.merge({"Gamma": [10, 11]}, keep_unmapped=True)
    assert kept.labels == {1: "Gamma", 2: "Alpha_L", 3: "Alpha_R", 4: "Beta", 5: "Empty", 6: "Delta"}
    assert kept.voxel_counts() == {1: 48, 2: 8, 3: 8, 4: 2, 5: 0, 6: 1}
    assert atlas.labels[10] == "Left Gamma"  # unchanged


@pytest.mark.parametrize("mapping, message", [
    ({"A": ["Alpha_L", "Nope", 99]}, r"no such labels in the atlas: 'Nope', 99"),
    ({"A": ["Alpha_L"], "B": [1]}, "is in two areas"),
    ({"A": []}, "has no labels"),
    ({}, "at least one area"),
])
def test_merge_errors(mapping, message):
    with pytest.raises(DataError, match=message):
        small_atlas().merge(mapping)


def test_merge_hemispheres_on_small_atlas():
    merged = small_atlas().merge_hemispheres()
    assert merged.names == ("Alpha", "Beta", "Empty", "Gamma", "Delta")
    assert merged.voxel_counts() == {1: 16, 2: 2, 3: 0, 4: 48, 5: 1}


def test_group_ranges():
    atlas = small_atlas()
    grouped = atlas.group_ranges({"Low": [(1, 5)], "High": [(10, 15), 20]})
    assert grouped.labels == {1: "Low", 2: "High"}
    assert grouped.voxel_counts() == {1: 18, 2: 49}
    with pytest.raises(DataError, match=r"no label id in 30..40"):
        atlas.group_ranges({"None": [(30, 40)]})


@pytest.mark.parametrize("name, content", [
    ("areas.csv", "label,area\nAlpha_L,Alpha\n2,Alpha\nLeft Gamma,Gamma\n"),
    ("areas.tsv", "area\tlabel\nAlpha\tAlpha_L\nAlpha\tAlpha_R\nGamma\t10\n"),
    ("areas.json", json.dumps({"Alpha": ["Alpha_L", 2], "Gamma": "Left Gamma"})),
])
def test_mapping_files(tmp_path, name, content):
    (tmp_path / name).write_text(content)
    assert list(read_area_mapping(tmp_path / name)) == ["Alpha", "Gamma"]
    merged = small_atlas().from_mapping_file(tmp_path / name)
    assert merged.labels == {1: "Alpha", 2: "Gamma"}
    assert merged.voxel_counts() == {1: 16, 2: 24}


def test_label_table_must_cover_the_image(tmp_path):
    data = np.zeros((4, 4, 4), np.uint8)
    data[0], data[1], data[2] = 1, 2, 7
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "atlas.nii.gz")
    (tmp_path / "atlas.nii.txt").write_text("1 One\n2 Two\n9 Nine\n")
    with pytest.raises(DataError, match=r"atlas\.nii\.txt: label ids 7 occur in .*atlas\.nii\.gz but have no name"):
        load_atlas(tmp_path / "atlas.nii.gz")
    with pytest.warns(UserWarning, match="Nine have no voxels"):
        atlas = load_atlas(tmp_path / "atlas.nii.gz", allow_unlabelled=True)
    assert atlas.labels == {1: "One", 2: "Two", 7: "label 7", 9: "Nine"}
    assert atlas.voxel_counts() == {1: 16, 2: 16, 7: 16, 9: 0}
    (tmp_path / "atlas.nii.txt").unlink()
    with pytest.raises(DataError, match="no label table found"):
        load_atlas(tmp_path / "atlas.nii.gz")


def test_missing_templates_say_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(atlas_module, "DEFAULT_TEMPLATE_DIR", tmp_path / "nowhere")
    monkeypatch.delenv("LRP_TEMPLATE_DIR", raising=False)
    for load in (lambda: load_atlas("aal", directory=tmp_path), lambda: template_path("ch2", directory=tmp_path)):
        with pytest.raises(MissingFileError, match=r"apt-get install mricron-data.*LRP_TEMPLATE_DIR") as caught:
            load()
        assert str(tmp_path) in str(caught.value)
    with pytest.raises(MissingFileError, match="neither an image file nor a built-in atlas"):
        load_atlas("aa1")


# -- built-in atlases and templates (real data) ----------------------------------------------------
@needs_templates
def test_builtin_aal(aal, aal_raw):
    assert len(aal.labels) == 116 and aal.labels[37] == "Hippocampus_L"
    np.testing.assert_array_equal(aal.data, aal_raw)
    np.testing.assert_array_equal(aal.affine, nib.load(TEMPLATES / "aal.nii.gz").affine)


@needs_templates
def test_builtin_harvard_oxford_names_match_anatomy():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        atlas = load_atlas("harvard-oxford", directory=TEMPLATES)
    assert atlas.names == HARVARD_OXFORD_CORTICAL and atlas.ids == tuple(range(1, 49))
    raw = nib.load(TEMPLATES / "HarvardOxford-cort-maxprob-thr0-1mm.nii.gz")
    values = np.asanyarray(raw.dataobj)
    assert sorted(np.unique(values)) == list(range(49))

    def centroid(value):  # independent of our code: voxel indices through nibabel's affine
        return nib.affines.apply_affine(raw.affine, np.argwhere(values == value).mean(axis=0))

    # value = FSL index + 1: the frontal pole is the most anterior region, the occipital pole the most posterior
    assert centroid(1)[1] > 50 and centroid(48)[1] < -80
    np.testing.assert_allclose(atlas.centroid_mm("Occipital Pole"), centroid(48))


@needs_templates
def test_builtin_brodmann():
    atlas = load_atlas("brodmann", directory=TEMPLATES)
    present = [int(v) for v in np.unique(np.asanyarray(nib.load(TEMPLATES / "brodmann.nii.gz").dataobj)) if v]
    assert atlas.labels == {value: f"BA{value}" for value in present}


@needs_templates
def test_template_lookup(monkeypatch, tmp_path):
    assert template_path("ch2bet", directory=TEMPLATES) == TEMPLATES / "ch2bet.nii.gz"
    image = load_template("ch2bet", directory=TEMPLATES)
    assert image.shape == (181, 217, 181)
    (tmp_path / "ch2.nii.gz").symlink_to(TEMPLATES / "ch2.nii.gz")
    monkeypatch.setenv("LRP_TEMPLATE_DIR", str(tmp_path))
    assert template_path("ch2") == tmp_path / "ch2.nii.gz"
    with pytest.raises(ValueError, match="unknown template 'colin'"):
        template_path("colin")


@needs_templates
def test_sibling_label_table_is_found():
    atlas = load_atlas(TEMPLATES / "AICHAmc.nii.gz")
    first = (TEMPLATES / "AICHAmc.nii.txt").read_text().split("\n")[0].split()
    assert atlas.labels[int(first[0])] == first[1]


@needs_templates
def test_merge_hemispheres_on_aal(aal, aal_raw):
    merged = aal.merge_hemispheres()
    bases = {name[:-2] if name.endswith(("_L", "_R")) else name for name in aal.names}
    assert sorted(merged.names) == sorted(bases) and len(merged.names) == 62
    assert merged.voxel_counts()[merged.region_id("Hippocampus")] == (aal_raw == 37).sum() + (aal_raw == 38).sum()
    assert merged.voxel_counts()[merged.region_id("Vermis_3")] == (aal_raw == 110).sum()


def scaled_grid(reference: nib.Nifti1Image, spacing: float, permute: bool = False) -> tuple[tuple, np.ndarray]:
    """A grid over the same field of view with ``spacing`` mm voxels (optionally with axes x and y swapped)."""
    shape = tuple(int(np.ceil(n / spacing)) for n in reference.shape[:3])
    affine = reference.affine @ np.diag([spacing, spacing, spacing, 1.0])
    if permute:
        swap = np.array([[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=float)
        affine, shape = affine @ swap, (shape[1], shape[0], shape[2])
    return shape, affine


@needs_templates
@pytest.mark.parametrize("spacing, permute", [(2.0, False), (3.0, False), (2.0, True)])
@pytest.mark.parametrize("region", [37, 77])  # Hippocampus_L, Thalamus_L
def test_resampling_keeps_centroids_and_volumes(aal, aal_raw, spacing, permute, region):
    colin = nib.load(TEMPLATES / "ch2bet.nii.gz")
    shape, affine = scaled_grid(colin, spacing, permute)
    resampled = aal.resample_to((shape, affine))
    assert resampled.shape == shape and resampled.labels == aal.labels
    original = aal_raw == region
    centroid = nib.affines.apply_affine(colin.affine, np.argwhere(original).mean(axis=0))
    assert np.linalg.norm(resampled.centroid_mm(region) - centroid) < spacing
    volume = original.sum() * 1.0
    assert abs(resampled.region_volume_mm3(region) - volume) < 0.10 * volume


@needs_templates
def test_resampling_a_flipped_atlas(aal):
    """Harvard-Oxford's x axis runs right-to-left: resampling onto AAL's 3 mm grid must keep its regions."""
    atlas = load_atlas("harvard-oxford", directory=TEMPLATES)
    resampled = atlas.resample_to(scaled_grid(aal.image, 3.0))
    for name in ("Frontal Pole", "Precuneous Cortex"):
        np.testing.assert_allclose(resampled.centroid_mm(name), atlas.centroid_mm(name), atol=3.0)
        assert abs(resampled.region_volume_mm3(name) / atlas.region_volume_mm3(name) - 1) < 0.1


@needs_templates
def test_resampling_to_a_distant_or_malformed_grid(aal):
    far = np.diag([2.0, 2.0, 2.0, 1.0])
    far[:3, 3] = 1000.0
    with pytest.raises(DataError, match="do not overlap"):
        aal.resample_to(((10, 10, 10), far))
    with pytest.raises(DataError, match="singular"):
        aal.resample_to(((10, 10, 10), np.diag([2.0, 0.0, 2.0, 1.0])))
    with pytest.raises(DataError, match="three positive integers"):
        aal.resample_to(((10, 10), np.eye(4)))


def test_resampling_warns_when_regions_vanish():
    atlas = small_atlas()
    with pytest.warns(UserWarning, match="Delta"):
        coarse = atlas.resample_to(((3, 3, 2), atlas.affine @ np.diag([2.0, 2.0, 2.0, 1.0])))
    assert coarse.voxel_counts()[20] == 0 and 20 in coarse.labels
