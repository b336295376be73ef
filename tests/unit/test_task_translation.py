from collections.abc import Mapping

import numpy as np
import pytest

from builders.zoo.translation.tokenizer import ASSETS_DIR
from gateway.tasks.base import TaskInputError, Tensor
from gateway.tasks.translation import TranslationTask


@pytest.fixture(scope="module")
def task() -> TranslationTask:
    return TranslationTask(ASSETS_DIR)


class CopyGraph:
    """Emits the source ids one by one (its </s> included): a perfect 'translation' of itself.

    It records every call, and puts the highest logits on pad and <s>, which the task must
    never choose.
    """

    def __init__(self, vocab_size: int, pad_id: int, bos_id: int) -> None:
        self.vocab_size, self.pad_id, self.bos_id = vocab_size, pad_id, bos_id
        self.calls: list[tuple[Tensor, Tensor]] = []

    def __call__(self, inputs: Mapping[str, Tensor]) -> Mapping[str, Tensor]:
        src, tgt = inputs["src_ids"], inputs["tgt_ids"]
        assert src.dtype == np.int64 and tgt.dtype == np.int64
        self.calls.append((src.copy(), tgt.copy()))
        logits = np.zeros((src.shape[0], self.vocab_size), np.float32)
        logits[:, [self.pad_id, self.bos_id]] = 100.0
        position = (tgt != self.pad_id).sum(axis=1) - 1  # tokens after <s>
        for row, pos in enumerate(position):
            logits[row, src[row, min(pos, src.shape[1] - 1)]] = 50.0
        return {"logits": logits}


def copy_graph(task: TranslationTask) -> CopyGraph:
    return CopyGraph(task.processor.get_piece_size(), task.pad_id, task.bos_id)


def test_greedy_loop_round_trips_texts_of_different_lengths(task: TranslationTask) -> None:
    texts = ["File not found", "Cannot open file '%s': %s", "Unbekannter Fehler"]
    graph = copy_graph(task)
    assert task.run(texts, graph) == texts
    lengths = [len(task.processor.encode(t)) + 1 for t in texts]  # with </s>
    assert len(graph.calls) == max(lengths)  # one call per output step
    # Each call carries only the rows still translating: all three until the shortest ends.
    rows_per_call = [src.shape[0] for src, _ in graph.calls]
    assert rows_per_call == [sum(n > step for n in lengths) for step in range(max(lengths))]
    src, tgt = graph.calls[-1]
    assert src.shape == (1, max(lengths)) and tgt.shape == (1, max(lengths))
    first_src, _ = graph.calls[0]
    shortest = int(np.argmin(lengths))
    assert (first_src[shortest, lengths[shortest] :] == task.pad_id).all()  # padded source


def test_whitespace_is_normalised_like_the_corpus(task: TranslationTask) -> None:
    assert task.run(["  File\tnot \n found "], copy_graph(task)) == ["File not found"]


def test_empty_batch_calls_nothing(task: TranslationTask) -> None:
    graph = copy_graph(task)
    assert task.run([], graph) == []
    assert graph.calls == []


def test_output_is_capped_when_no_end_token_comes(task: TranslationTask) -> None:
    calls = []

    def babbler(inputs: Mapping[str, Tensor]) -> Mapping[str, Tensor]:
        calls.append(inputs["tgt_ids"].shape[1])
        logits = np.zeros((inputs["src_ids"].shape[0], 50), np.float32)
        logits[:, 10] = 1.0
        return {"logits": logits}

    texts = ["Error", "Could not read the configuration file"]
    out = task.run(texts, babbler)
    caps = [task.output_cap(len(task.processor.encode(t))) for t in texts]
    assert len(calls) == max(caps)
    piece = task.processor.decode([10])
    assert [len(task.processor.encode(o)) for o in out] == [
        len(task.processor.encode(piece * c)) for c in caps
    ]


def test_output_cap_grows_with_the_source_and_is_bounded(task: TranslationTask) -> None:
    assert task.output_cap(1) < task.output_cap(10) <= task.max_target_tokens
    assert task.output_cap(task.max_source_tokens) == task.max_target_tokens


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("", "text 1 is empty"),
        (" \t\n", "text 1 is empty"),
        (42, "text 1 must be a string, got int"),
        (None, "text 1 must be a string, got NoneType"),
        (b"bytes", "text 1 must be a string, got bytes"),
        ("word " * 400, "tokens; at most 127"),
    ],
)
def test_invalid_texts_are_task_input_errors(
    task: TranslationTask, item: object, message: str
) -> None:
    graph = copy_graph(task)
    with pytest.raises(TaskInputError, match=message):
        task.run(["fine", item], graph)
    assert graph.calls == []


def test_longest_allowed_text_passes(task: TranslationTask) -> None:
    text = " ".join(["file"] * task.max_source_tokens)
    assert len(task.processor.encode(text)) == task.max_source_tokens
    assert task.encode([text])[0] == task.processor.encode(text)


def test_malformed_graph_output_is_rejected(task: TranslationTask) -> None:
    def wrong(inputs: Mapping[str, Tensor]) -> Mapping[str, Tensor]:
        return {"logits": np.zeros((1, 7, 50), np.float32)}

    with pytest.raises(ValueError, match="logits of shape"):
        task.run(["a", "b"], wrong)
