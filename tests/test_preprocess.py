"""Preprocessing: imputation, scaling, categories, labels, JSON round trip."""

import json

import numpy as np
import pandas as pd
import pytest

from torchclf.errors import TorchclfError
from torchclf.preprocess import LabelCoder, Preprocessor


def test_numeric_columns_are_imputed_with_the_median_and_standardised():
    frame = pd.DataFrame({"a": [1.0, 2.0, np.nan, 5.0]})
    pre = Preprocessor().fit(frame)
    X = pre.transform(frame)
    filled = np.array([1.0, 2.0, 2.0, 5.0])
    expected = (filled - filled.mean()) / filled.std()
    np.testing.assert_allclose(X[:, 0], expected, rtol=1e-6)
    assert X[:, 1].tolist() == [0.0, 0.0, 1.0, 0.0]  # missing flag
    assert pre.output_names == ["a", "a__missing"]


def test_statistics_come_from_training_rows_only():
    train = pd.DataFrame({"a": [0.0, 2.0]})
    pre = Preprocessor().fit(train)
    assert pre.transform(pd.DataFrame({"a": [100.0]}))[0, 0] == pytest.approx((100 - 1) / 1)


def test_categories_one_hot_with_unseen_and_missing_handled():
    train = pd.DataFrame({"c": ["a", "b", "a", None]})
    pre = Preprocessor().fit(train)
    assert pre.output_names == ["c=a", "c=<missing>", "c=b", "c=<other>"]
    X = pre.transform(pd.DataFrame({"c": ["b", "zzz", None]}))
    assert X.tolist() == [[0, 0, 1, 0], [0, 0, 0, 1], [0, 1, 0, 0]]


def test_high_cardinality_is_capped_with_a_warning():
    train = pd.DataFrame({"c": [f"v{i % 30}" for i in range(300)]})
    with pytest.warns(UserWarning, match="30 distinct values"):
        pre = Preprocessor(max_categories=10).fit(train)
    assert pre.n_outputs == 11


def test_numbers_with_stray_text_are_numeric():
    train = pd.DataFrame({"n": [str(i) for i in range(40)] + ["n/a"]})
    with pytest.warns(UserWarning, match="treating as numeric"):
        pre = Preprocessor().fit(train)
    assert pre.columns[0].kind == "numeric" and pre.columns[0].missing_indicator


def test_state_round_trips_through_json(mixed_frame):
    features = mixed_frame.drop(columns="label")
    pre = Preprocessor().fit(features)
    again = Preprocessor.from_dict(json.loads(json.dumps(pre.to_dict())))
    np.testing.assert_array_equal(pre.transform(features), again.transform(features))


@pytest.mark.filterwarnings("ignore:constant column")
def test_missing_feature_columns_are_named():
    pre = Preprocessor().fit(pd.DataFrame({"a": [1.0], "b": [2.0]}))
    with pytest.raises(TorchclfError, match="missing feature column.*'b'"):
        pre.transform(pd.DataFrame({"a": [1.0], "zzz": [0.0]}))


@pytest.mark.parametrize("labels", [["cat", "dog", "cat"], [3, 1, 3], [True, False, True]])
def test_labels_of_any_type_round_trip(labels):
    coder = LabelCoder().fit(pd.Series(labels))
    idx = coder.encode(pd.Series(labels))
    assert coder.decode(idx) == labels
    again = LabelCoder.from_dict(json.loads(json.dumps(coder.to_dict())))
    assert again.decode(idx) == labels


def test_unseen_labels_are_reported():
    coder = LabelCoder().fit(pd.Series(["a", "b"]))
    with pytest.raises(TorchclfError, match=r"\['c'\] were not seen in training"):
        coder.encode(pd.Series(["a", "c"]))


def test_multilabel_decode_joins_with_the_separator():
    coder = LabelCoder().fit(pd.DataFrame({"music": [1], "sports": [0]}))
    assert coder.decode(np.array([[1, 1], [0, 0], [0, 1]]), "|") == ["music|sports", "", "sports"]


@pytest.mark.filterwarnings("ignore:column 'x1'")
def test_a_large_frame_is_scaled_in_chunks_to_the_numbers_of_one_block(monkeypatch, mixed_frame):
    from torchclf import preprocess

    frame = mixed_frame.drop(columns="label").assign(big=np.linspace(-1e300, 1e300, len(mixed_frame)))
    frame.loc[0, "x1"] = np.inf
    pre = Preprocessor().fit(frame.iloc[:200])
    blocks = []
    original = Preprocessor._scale_block
    monkeypatch.setattr(Preprocessor, "_scale_block",
                        lambda self, v, out, plan=None: blocks.append(len(v)) or original(self, v, out, plan))
    one_block = pre.transform(frame)
    assert blocks == [240], "a small frame is scaled as one block"
    monkeypatch.setattr(preprocess, "SMALL_FRAME_ROWS", 0)
    monkeypatch.setattr(preprocess, "CHUNK_ROWS", 50)
    blocks.clear()
    chunked = pre.transform(frame)
    assert blocks == [50, 50, 50, 50, 40]
    np.testing.assert_array_equal(one_block, chunked)
    # The numbers themselves, column x2 (missing values: the median, and a flag) by hand.
    spec = next(c for c in pre.columns if c.name == "x2")
    j = pre.output_names.index("x2")
    raw = frame["x2"].to_numpy()
    z = (np.where(np.isnan(raw), spec.median, raw) - spec.mean) / spec.scale
    z = z / np.sqrt(1 + (z / spec.clip) ** 2) if spec.clip > 0 else z
    np.testing.assert_allclose(chunked[:, j], z.astype(np.float32), rtol=1e-6)
    np.testing.assert_array_equal(chunked[:, j + 1], np.isnan(raw))


def test_one_value_columns_are_found_in_one_pass_and_named():
    frame = pd.DataFrame({
        "same": [2.5] * 6,                                   # one value: constant
        "gaps": [1.0, np.nan, 1.0, 1.0, np.nan, 1.0],        # a value and gaps: not (the gaps are a signal)
        "empty": [np.nan] * 6,                               # only gaps: constant
        "word": ["a"] * 6,                                   # one category: constant
        "words": ["a", None, "a", "a", "a", "a"],            # a category and a gap: not
        "mixed": [1, "1", 1, 1, "1", 1],                     # text that reads as one number: constant
        "x": [0.1, 0.5, 0.2, 0.9, 0.3, 0.4],
    })
    with pytest.warns(UserWarning, match=r"constant column\(s\) 'same', 'empty', 'word', 'mixed':"):
        pre = Preprocessor().fit(frame)
    assert [c.kind for c in pre.columns] == ["numeric", "numeric", "numeric", "categorical", "categorical",
                                            "numeric", "numeric"]


def test_categories_count_text_alike_values_together_and_weights_count():
    frame = pd.DataFrame({"c": [1, "1", "b", "b", None, "b", 1, "z"]})
    pre = Preprocessor().fit(frame)
    assert pre.columns[0].categories == ["1", "b", "<missing>", "z"]  # 3, 3 (then by name), 1, 1
    weighted = Preprocessor().fit(frame, sample_weight=[1, 1, 1, 1, 5, 1, 0, 2])
    assert weighted.columns[0].categories == ["<missing>", "b", "1", "z"]  # 5, 3, then 2 and 2 by name


def test_label_coding_is_by_distinct_value_and_names_every_unseen_label():
    coder = LabelCoder().fit(pd.Series([0, 1, 2]))
    assert coder.encode(pd.Series(["1", 2, 0.0, True, 1], dtype=object)).tolist() == [1, 2, 0, 1, 1]
    with pytest.raises(TorchclfError, match=r"label\(s\) \['7', 'x'\] were not seen"):
        coder.encode(pd.Series([7, "x", 0, 7], dtype=object))
    assert coder.encode(pd.Series([], dtype=object)).tolist() == []
