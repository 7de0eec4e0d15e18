"""The training loop: de-duplication, batching, publishing; the same loop for every caller."""

from __future__ import annotations

import numpy as np
import torch

from config import Settings
from connectors.training_examples import TrainingExample
from models.delta import decode_message
from models.loop import RecentIds, TrainingLoop
from models.trainer import OnlineTrainer
from models.versions import VersionCutter

torch.set_num_threads(1)
SETTINGS = Settings(hash_buckets=1009, embedding_dim=4, batch_size=32,
                    delta_interval_examples=100, delta_interval_s=1e9)


def examples(n: int, offset: int = 0) -> list[TrainingExample]:
    return [TrainingExample(example_id=f"e{offset + k}", user_id=f"u{k % 7}",
                            item_id=f"i{k % 11}", event_time=1_000 * (offset + k),
                            click=int(k % 3 == 0), purchase=0, features={"i_ctr": 0.1})
            for k in range(n)]


def test_recent_ids_forget_the_oldest_beyond_capacity() -> None:
    ids = RecentIds(capacity=3)
    assert [ids.add(k) for k in "abcab"] == [True, True, True, False, False]
    assert ids.add("d") and len(ids) == 3
    assert ids.add("a")  # "a" was the oldest: forgotten when "d" came


def test_duplicates_are_dropped_and_counted() -> None:
    loop = TrainingLoop(OnlineTrainer(SETTINGS), SETTINGS)
    xs = examples(100)
    loop.add(xs)
    loop.add(xs[40:70])  # a restored features job sends a stretch again
    loop.close()
    assert loop.duplicates == 30 and loop.trainer.examples_seen == 100


def test_state_is_bounded_by_the_window() -> None:
    settings = SETTINGS.model_copy(update={"dedup_window_examples": 50})
    loop = TrainingLoop(OnlineTrainer(settings), settings)
    xs = examples(200)
    loop.add(xs)
    loop.add(xs[:10])  # too old to be remembered: learned again
    loop.add(xs[-10:])  # recent: dropped
    assert loop.duplicates == 10 and len(loop._ids) == 50


def test_the_job_path_learns_what_evaluate_learns() -> None:
    """Records one at a time (the job) and whole batches (evaluate) give the same model."""
    xs = examples(320)
    job = TrainingLoop(OnlineTrainer(SETTINGS), SETTINGS)
    for x in xs:
        job.add((x,))
    evaluate = TrainingLoop(OnlineTrainer(SETTINGS), SETTINGS)
    scores = np.concatenate([evaluate.progressive(xs[i:i + 32])[0] for i in range(0, 320, 32)])
    assert scores.shape == (320, 2)
    assert job.trainer.metrics() == evaluate.trainer.metrics()
    for a, b in zip(job.trainer.model.state_dict().values(),
                    evaluate.trainer.model.state_dict().values()):
        assert torch.equal(a, b)


def test_versions_fall_due_by_examples_and_close_cuts_the_last() -> None:
    trainer = OnlineTrainer(SETTINGS)
    loop = TrainingLoop(trainer, SETTINGS, VersionCutter(trainer, SETTINGS))
    messages = loop.add(examples(250))  # 7 full batches (224 learned), 26 buffered
    assert [decode_message(m, None).version for m in messages] == [1]  # due at 128
    assert len(loop.buffer) == 26
    ticked = loop.tick()  # learns the partial batch: 122 since the last cut, due
    assert [decode_message(m, None).version for m in ticked] == [2]
    assert trainer.examples_seen == 250 and loop.tick() == []
    assert loop.add(examples(10, offset=250)) == []
    last = loop.close()
    assert [decode_message(m, None).version for m in last] == [3]
    assert decode_message(last[0], None).examples == 260
    assert loop.close() == []  # nothing learned since
