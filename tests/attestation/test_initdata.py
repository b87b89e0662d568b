"""attestation/initdata.py: the Confidential Containers init data document, its pod annotation,
and the digest Kata launches the VM with (HOST_DATA on SEV-SNP, MRCONFIGID on TDX).

Known answers were made outside this code: the digests with ``openssl dgst -sha384`` /
``-sha256`` over the document file, the annotation with ``gzip -9 -n | base64``.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from medclave.attestation import initdata
from medclave.cli.main import app
from medclave.errors import InputError

KAT_TEXT = ('algorithm = "sha384"\nversion = "0.1.0"\n\n[data]\n'
            "\"policy.rego\" = '''\npackage agent_policy\n'''\n")
KAT_SHA384 = ("61e2d7747874769967a9e2b64be861bd7b523514520f50d0"
              "9b7ec7e86d2a20d717e7af849c4f2ccc7789b35a1c6ded4e")
KAT_SHA256 = "1f4d1a45185d637a241dd722f10498a38c0fe947991bf422bb680ea00b3e6c11"
KAT_GZIP_B64 = ("H4sIAAAAAAACA0vMSc8vyizJyFWwVVAqzkg0tjBR4ipLLSrOzM8DCRnoGeoZKHFxRackliTGcikV"
                "5OdkJlfqFaWm5ysB5dXV1bkKEpOzE9NTFYA4ryQeooALJAEAvJ/sqlwAAAA=")


def test_the_document_is_written_as_coco_writes_it_and_digests_to_the_known_answers() -> None:
    doc = initdata.build({"policy.rego": "package agent_policy\n"})
    assert doc.text == KAT_TEXT
    # SEV-SNP HOST_DATA is 32 bytes: a SHA-384 cut to its first 32; TDX MRCONFIGID all 48.
    assert doc.digest("sev-snp").hex() == KAT_SHA384[:64]
    assert doc.digest("tdx").hex() == KAT_SHA384
    assert doc.digest("cca").hex() == KAT_SHA384 + "00" * 16
    assert doc.reference_values() == {"host_data": KAT_SHA384[:64], "mr_config_id": KAT_SHA384,
                                      "realm.personalization_value": KAT_SHA384 + "00" * 16}


def test_a_shorter_hash_is_zero_padded_to_the_field() -> None:
    text = KAT_TEXT.replace("sha384", "sha256")
    assert hashlib.sha256(text.encode()).hexdigest() != KAT_SHA256  # another document
    doc = initdata.parse(text)
    assert doc.digest("tdx") == hashlib.sha256(text.encode()).digest() + bytes(16)
    assert doc.digest("sev-snp") == hashlib.sha256(text.encode()).digest()
    assert initdata.launch_digest(KAT_TEXT, "sha256", "tdx").hex() == KAT_SHA256 + "00" * 16


def test_an_annotation_from_gzip_and_base64_decodes_to_the_same_document() -> None:
    doc = initdata.decode_annotation(KAT_GZIP_B64)
    assert doc.text == KAT_TEXT and dict(doc.data) == {"policy.rego": "package agent_policy\n"}
    ours = initdata.annotation(doc)
    assert ours == initdata.annotation(initdata.parse(KAT_TEXT))  # no time, no name: stable
    assert gzip.decompress(base64.b64decode(ours)).decode() == KAT_TEXT


def test_one_changed_byte_changes_every_digest() -> None:
    doc = initdata.parse(KAT_TEXT)
    other = initdata.parse(KAT_TEXT.replace("agent_policy", "agent_policz"))
    for platform in initdata.FIELD_BYTES:
        assert doc.digest(platform) != other.digest(platform)


@pytest.mark.parametrize(("text", "words"), [
    (KAT_TEXT.replace('version = "0.1.0"', 'version = "0.2.0"'), "version"),
    (KAT_TEXT.replace('version = "0.1.0"\n', ""), "version"),
    (KAT_TEXT.replace("sha384", "md5"), "algorithm"),
    ("extra = 1\n" + KAT_TEXT, "unknown"),
    (KAT_TEXT + "extra = 1\n", "strings"),
    (KAT_TEXT.replace("\"policy.rego\" = '''\npackage agent_policy\n'''", '"n" = 3'), "strings"),
    ("algorithm = ", "not TOML"),
])
def test_malformed_documents_are_refused(text: str, words: str) -> None:
    with pytest.raises(InputError) as err:
        initdata.parse(text)
    assert err.value.code == "input.malformed" and words in err.value.detail


def test_decoding_is_bounded() -> None:
    bomb = base64.b64encode(gzip.compress(b"#" * (initdata.MAX_DOCUMENT_BYTES + 10))).decode()
    assert len(bomb) < 10_000
    with pytest.raises(InputError) as err:
        initdata.decode_annotation(bomb)
    assert err.value.code == "input.too_large"
    with pytest.raises(InputError) as err:
        initdata.decode_annotation("A" * (initdata.MAX_ANNOTATION_CHARS + 4))
    assert err.value.code == "input.too_large"
    for bad in ("not base64!", base64.b64encode(b"plain text").decode(), "", "é"):
        with pytest.raises(InputError) as err:
            initdata.decode_annotation(bad)
        assert err.value.code == "input.malformed"


_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=200)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(_text.filter(bool), _text, max_size=6),
       st.sampled_from(sorted(initdata.ALGORITHMS)))
def test_any_files_round_trip_through_document_and_annotation(
        data: dict[str, str], algorithm: str) -> None:
    doc = initdata.build(data, algorithm)
    assert dict(doc.data) == data
    back = initdata.decode_annotation(initdata.annotation(doc))
    assert back == doc
    assert back.digest("tdx")[:32] == hashlib.new(algorithm, doc.text.encode()).digest()[:32]


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=300),
                 st.binary(max_size=300).map(lambda b: base64.b64encode(b).decode()),
                 st.binary(max_size=300).map(
                     lambda b: base64.b64encode(gzip.compress(b)).decode())))
def test_decoding_anything_either_parses_or_refuses_with_a_code(value: str) -> None:
    try:
        initdata.decode_annotation(value)
    except InputError as exc:
        assert exc.code in ("input.malformed", "input.too_large")


def test_the_cli_prints_the_annotation_and_reference_values(tmp_path: Path) -> None:
    (tmp_path / "policy.rego").write_text("package agent_policy\n")
    runner = CliRunner()
    result = runner.invoke(app, ["attest", "initdata", str(tmp_path / "policy.rego"),
                                 "--document", str(tmp_path / "doc.toml")])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["reference_values"]["sev-snp"] == {"host_data": KAT_SHA384[:64]}
    assert out["reference_values"]["tdx"] == {"mr_config_id": KAT_SHA384}
    value = out["annotation"][initdata.ANNOTATION]
    assert (tmp_path / "doc.toml").read_text() == KAT_TEXT
    (tmp_path / "annotation").write_text(value)
    decoded = runner.invoke(app, ["attest", "initdata", "--decode", str(tmp_path / "annotation")])
    assert decoded.exit_code == 0 and json.loads(decoded.stdout) == out
    missing = runner.invoke(app, ["attest", "initdata"])
    assert missing.exit_code == 2 and json.loads(missing.stdout)["error"]["code"] == "input.missing"
