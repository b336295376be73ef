import json
import struct
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from builders.zoo.api import ZooFamily
from builders.zoo.registry import get_family
from builders.zoo.translation import corpus, evaluation, recipe, tokenizer
from builders.zoo.translation.family import FAMILY
from builders.zoo.translation.model import Translator, TranslatorConfig, parameter_count
from builders.zoo.translation.prune import shrink, train_batches, unit_importance
from gateway.tasks.onnx_runner import onnx_graph_runner
from gateway.tasks.translation import TranslationTask

CHECKPOINT = Path(__file__).resolve().parents[2] / "builders" / "zoo" / "translation" / "checkpoint"
METRICS = json.loads((CHECKPOINT / "metrics.json").read_text())
SUBSET = METRICS["test_subset"]
BLEU_TOLERANCE = 0.5

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model() -> Translator:
    module = FAMILY.load()
    assert isinstance(module, Translator)
    return module


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory: pytest.TempPathFactory, model: Translator) -> Path:
    path = tmp_path_factory.mktemp("translation") / "model.onnx"
    FAMILY.export_onnx(model, path)
    return path


def random_batch(seed: int, batch: int, src_len: int, tgt_len: int) -> dict[str, np.ndarray]:
    """Ids of real pieces, right-padded to different lengths per row, <s> first in targets."""
    rng = np.random.default_rng(seed)
    src = rng.integers(4, 6000, (batch, src_len))
    tgt = rng.integers(4, 6000, (batch, tgt_len))
    tgt[:, 0] = 2
    for row in range(batch):
        src[row, rng.integers(1, src_len + 1) :] = 0
        tgt[row, rng.integers(1, tgt_len + 1) :] = 0
        src[row, max(0, (src[row] != 0).sum() - 1)] = 3
    return {"src_ids": src.astype(np.int64), "tgt_ids": tgt.astype(np.int64)}


# --- family, corpus and tokenizer ------------------------------------------------------------


def test_registry_returns_a_zoo_family() -> None:
    family: ZooFamily = get_family("translation")
    assert family is FAMILY
    assert family.metric.name == "bleu" and family.metric.higher_is_better
    assert (family.assets_dir / "spm.model").is_file()
    assert isinstance(family.make_task(family.assets_dir), TranslationTask)
    assert family.sample_items(3) == [p.en for p in corpus.read_split("heldout")[:3]]


def test_committed_splits_match_sources_and_are_disjoint() -> None:
    sources = json.loads((corpus.DATA_DIR / "sources.json").read_text())
    splits = {name: corpus.read_split(name) for name in corpus.SPLITS}
    assert {k: len(v) for k, v in splits.items()} == sources["splits"]
    assert len(splits["heldout"]) >= corpus.HELDOUT_PAIRS
    assert len(splits["calibration"]) >= corpus.CALIBRATION_PAIRS
    assert sum(c["pairs"] for c in sources["catalogs"].values()) == sources["pairs"]
    keys = {name: {corpus._group_key(p.en) for p in pairs} for name, pairs in splits.items()}
    assert not keys["train"] & keys["heldout"]
    assert not keys["train"] & keys["calibration"]
    assert not keys["heldout"] & keys["calibration"]
    for pair in splits["heldout"] + splits["calibration"]:
        assert corpus.clean(pair.en, pair.de) == (pair.en, pair.de)


def test_cleaning_rules() -> None:
    assert corpus.clean("  Open\n_File ", "_Datei\töffnen") == ("Open File", "Datei öffnen")
    assert corpus.clean("_Stop", "_Stopp") == ("Stop", "Stopp")  # mnemonics go
    assert corpus.clean("Set GIT_DIR", "GIT_DIR setzen") == ("Set GIT_DIR", "GIT_DIR setzen")
    assert corpus.clean("Cannot open %s", "Kann %s nicht öffnen") is not None
    assert corpus.clean("%s: %d files", "%2$d Dateien: %1$s") is not None  # reordered
    assert corpus.clean("Cannot open %s", "Kann nicht öffnen") is None  # lost specifier
    assert corpus.clean("Germany", "Germany") is None
    assert corpus.clean("", "leer") is None
    assert corpus.clean("x" * (corpus.MAX_SOURCE_CHARS + 1), "y") is None
    assert corpus.clean("--", "--help") is None


def write_mo(path: Path, entries: dict[bytes, bytes]) -> None:
    """A little-endian .mo file with the entries sorted by msgid, as msgfmt writes it."""
    keys = sorted(entries)
    ids_at, strs_at = 28, 28 + 8 * len(keys)
    blob_at = strs_at + 8 * len(keys)
    table_ids, table_strs, blob = b"", b"", b""
    for table, strings in (("ids", keys), ("strs", [entries[k] for k in keys])):
        for s in strings:
            entry = struct.pack("<2I", len(s), blob_at + len(blob))
            blob += s + b"\0"
            if table == "ids":
                table_ids += entry
            else:
                table_strs += entry
    header = struct.pack("<7I", 0x950412DE, 0, len(keys), ids_at, strs_at, 0, 0)
    path.write_bytes(header + table_ids + table_strs + blob)


CATALOG = {
    b"": b"Content-Type: text/plain; charset=UTF-8\nPlural-Forms: nplurals=2;\n",
    b"File not found": b"Datei nicht gefunden",
    b"menu\x04_Open": "Ö_ffnen".encode(),
    b"%d file\x00%d files": b"%d Datei\x00%d Dateien",
    b"Untranslated": b"",
    b"Bavaria": b"Bavaria",
}


def test_read_mo_handles_contexts_plurals_and_charsets(tmp_path: Path) -> None:
    write_mo(tmp_path / "demo.mo", CATALOG)
    assert sorted(corpus.read_mo(tmp_path / "demo.mo")) == [
        ("%d file", "%d Datei"),
        ("%d files", "%d Dateien"),
        ("Bavaria", "Bavaria"),
        ("File not found", "Datei nicht gefunden"),
        ("_Open", "Ö_ffnen"),
    ]
    assert corpus.clean("_Open", "Ö_ffnen") == ("Open", "Öffnen")
    latin = {b"": b"charset=ISO-8859-1\n", b"Open": "Öffnen".encode("latin-1")}
    write_mo(tmp_path / "latin.mo", latin)
    assert corpus.read_mo(tmp_path / "latin.mo") == [("Open", "Öffnen")]
    (tmp_path / "bad.mo").write_bytes(b"\0" * 32)
    with pytest.raises(ValueError, match="not a gettext"):
        corpus.read_mo(tmp_path / "bad.mo")


def test_extract_writes_splits_and_sources(tmp_path: Path) -> None:
    locale = tmp_path / "de" / "LC_MESSAGES"
    locale.mkdir(parents=True)
    write_mo(locale / "demo.mo", CATALOG)
    more = {f"Message number {i}".encode(): f"Meldung Nummer {i}".encode() for i in range(30)}
    write_mo(locale / "more.mo", {b"": b"charset=UTF-8\n", **more, b"File not found": b"Nicht da"})
    (locale / "alias.mo").symlink_to(locale / "more.mo")
    sources = corpus.extract(locale, tmp_path / "out")
    assert set(sources["catalogs"]) == {"demo.mo", "more.mo"}  # the alias is skipped
    # "File not found" is translated once per catalog; the alphabetically first one wins
    assert sources["catalogs"]["demo.mo"]["pairs"] == 4 and sources["pairs"] == 34
    assert sum(sources["splits"].values()) == 34
    everything = [p for name in corpus.SPLITS for p in corpus.read_split(name, tmp_path / "out")]
    assert corpus.Pair("demo", "File not found", "Datei nicht gefunden") in everything
    with pytest.raises(FileNotFoundError):
        corpus.extract(tmp_path, tmp_path / "none")


def test_tokenizer_specials_and_specifier_pieces() -> None:
    processor, settings = tokenizer.load_spm(), tokenizer.load_settings()
    assert settings["vocab_size"] == processor.get_piece_size() == FAMILY.load().cfg.vocab_size
    assert processor.pad_id() == settings["pad_id"] and processor.eos_id() == settings["eos_id"]
    assert processor.bos_id() == settings["bos_id"] and processor.unk_id() == settings["unk_id"]
    assert "%s" in processor.encode("Cannot open %s", out_type=str)
    assert processor.decode(processor.encode("Größe: %lu » ž")) == "Größe: %lu » ž"


# --- the committed model ----------------------------------------------------------------------


def test_recorded_metrics_meet_the_target() -> None:
    assert METRICS["bleu"] >= 20.0
    assert METRICS["heldout"]["pairs"] == len(corpus.read_split("heldout"))
    assert abs(METRICS["heldout"]["onnx"]["bleu"] - METRICS["bleu"]) <= BLEU_TOLERANCE
    assert 2.0e6 <= METRICS["params"] <= 3.0e6


def test_config_round_trips_and_rejects_bad_sizes(tmp_path: Path, model: Translator) -> None:
    model.cfg.save(tmp_path / "config.json")
    assert TranslatorConfig.load(tmp_path / "config.json") == model.cfg
    assert parameter_count(model) == METRICS["params"]
    with pytest.raises(ValueError, match="heads"):
        TranslatorConfig(vocab_size=100, heads=0)
    with pytest.raises(ValueError, match="pad_id"):
        TranslatorConfig(vocab_size=100, pad_id=100)


@pytest.mark.slow
def test_checkpoint_reproduces_recorded_bleu(model: Translator) -> None:
    metrics = FAMILY.evaluate(FAMILY.torch_runner(model), SUBSET["pairs"])
    assert abs(metrics["bleu"] - SUBSET["torch"]["bleu"]) <= BLEU_TOLERANCE
    assert abs(metrics["chrf"] - SUBSET["torch"]["chrf"]) <= BLEU_TOLERANCE


def test_padding_does_not_change_a_rows_logits(model: Translator) -> None:
    run = FAMILY.torch_runner(model)
    batch = random_batch(0, 4, 9, 6)
    together = run(batch)["logits"]
    for row in range(4):
        src = batch["src_ids"][row][batch["src_ids"][row] != 0][None]
        tgt = batch["tgt_ids"][row][batch["tgt_ids"][row] != 0][None]
        alone = run({"src_ids": src, "tgt_ids": tgt})["logits"]
        np.testing.assert_allclose(alone[0], together[row], atol=1e-4)


def test_onnx_graph_contract_and_parity(model: Translator, onnx_path: Path) -> None:
    graph = onnx.load(str(onnx_path))
    assert graph.opset_import[0].version == evaluation.OPSET
    assert [i.name for i in graph.graph.input] == ["src_ids", "tgt_ids"]
    assert [o.name for o in graph.graph.output] == ["logits"]
    assert all(i.type.tensor_type.elem_type == onnx.TensorProto.INT64 for i in graph.graph.input)
    assert graph.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert not any(
        t.data_location == onnx.TensorProto.EXTERNAL for t in graph.graph.initializer
    )  # one self-contained file
    ort_run, torch_run = onnx_graph_runner(onnx_path), FAMILY.torch_runner(model)
    for seed, shape in enumerate([(1, 1, 1), (3, 7, 4), (5, 20, 11)]):
        batch = random_batch(seed, *shape)
        expected = torch_run(batch)["logits"]
        got = ort_run(batch)["logits"]
        assert got.shape == expected.shape == (shape[0], model.cfg.vocab_size)
        np.testing.assert_allclose(got, expected, atol=2e-4, rtol=1e-4)


@pytest.mark.slow
def test_onnx_runtime_reproduces_recorded_bleu(onnx_path: Path) -> None:
    metrics = FAMILY.evaluate(onnx_graph_runner(onnx_path), SUBSET["pairs"])
    assert abs(metrics["bleu"] - SUBSET["onnx"]["bleu"]) <= BLEU_TOLERANCE


def test_translates_a_few_messages(model: Translator) -> None:
    task = FAMILY.make_task(FAMILY.assets_dir)
    texts = ["File not found", "Cannot open file %s", 'Could not create directory "%s": %s']
    assert task.run(texts, FAMILY.torch_runner(model)) == [
        "Datei nicht gefunden",
        "Datei %s kann nicht geöffnet werden",
        "Verzeichnis »%s« konnte nicht angelegt werden: %s",
    ]


# --- calibration, pruning and recovery --------------------------------------------------------


def test_calibration_inputs_have_varied_prefixes() -> None:
    batches = list(FAMILY.calibration_inputs(6))
    assert len(batches) == 6
    prefix_lengths = set()
    for batch in batches:
        src, tgt = batch["src_ids"], batch["tgt_ids"]
        assert src.dtype == tgt.dtype == np.int64 and src.shape[0] == tgt.shape[0] <= 8
        assert (tgt[:, 0] == 2).all()
        assert ((src == 3).sum(axis=1) == 1).all()  # each source ends with </s>
        prefix_lengths |= set((tgt != 0).sum(axis=1).tolist())
    assert len(prefix_lengths) >= 5


def test_pruned_model_equals_the_original_with_units_zeroed(model: Translator) -> None:
    sample = train_batches(512, seed=0)[:1]
    scores = unit_importance(model, sample)
    pruned = shrink(model, scores, heads=2, ffn=200)
    masked = Translator(model.cfg)
    masked.load_state_dict(model.state_dict())
    with torch.no_grad():
        for name, module in masked.named_modules():
            if name in scores and hasattr(module, "out"):
                drop = scores[name].argsort()[: model.cfg.heads - 2]
                for head in drop.tolist():
                    module.out.weight[:, head * 32 : (head + 1) * 32] = 0
            elif name in scores:
                module.down.weight[:, scores[name].argsort()[: model.cfg.ffn - 200]] = 0
    batch = random_batch(3, 3, 8, 5)
    expected = FAMILY.torch_runner(masked)(batch)["logits"]
    got = FAMILY.torch_runner(pruned)(batch)["logits"]
    np.testing.assert_allclose(got, expected, atol=1e-4)


@pytest.mark.parametrize("ratio", [0.25, 0.5])
def test_pruning_makes_a_smaller_faster_graph(
    model: Translator, onnx_path: Path, tmp_path: Path, ratio: float
) -> None:
    pruned = FAMILY.prune(model, ratio)
    assert type(pruned) is Translator
    assert pruned.cfg.heads == round(model.cfg.heads * (1 - ratio))
    assert pruned.cfg.ffn == round(model.cfg.ffn * (1 - ratio))
    assert parameter_count(pruned) < parameter_count(model)
    path = tmp_path / "pruned.onnx"
    FAMILY.export_onnx(pruned, path)
    assert path.stat().st_size < onnx_path.stat().st_size
    batch = random_batch(1, 2, 12, 6)
    assert onnx_graph_runner(path)(batch)["logits"].shape == (2, model.cfg.vocab_size)
    with pytest.raises(ValueError, match="ratio"):
        FAMILY.prune(model, 1.0)


def test_distillation_from_an_identical_teacher_adds_nothing(model: Translator) -> None:
    batch = train_batches(512, seed=1)[0]
    with torch.no_grad():
        ce = recipe.sequence_loss(model, batch, label_smoothing=0.0)
        mixed = recipe.sequence_loss(model, batch, 0.0, teacher=model, distill_weight=0.5)
    assert float(ce) > 0.1
    assert float(mixed) == pytest.approx(0.5 * float(ce), abs=1e-5)


def test_recovery_is_reproducible_and_keeps_the_input(model: Translator) -> None:
    pruned = FAMILY.prune(model, 0.5)
    before = {k: v.clone() for k, v in pruned.state_dict().items()}
    recovered = FAMILY.recover(pruned, model, budget_s=2.0)
    assert isinstance(recovered, Translator) and recovered.cfg == pruned.cfg
    assert all(torch.equal(before[k], v) for k, v in pruned.state_dict().items())
    assert any(not torch.equal(before[k], v) for k, v in recovered.state_dict().items())
    assert not recovered.training
    # The budget is a step count, not a clock: the same budget gives the same weights.
    again = FAMILY.recover(pruned, model, budget_s=2.0)
    for a, b in zip(recovered.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)
