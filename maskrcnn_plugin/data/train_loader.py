"""The training data stream: deterministic per iteration, so a killed run resumes onto the same images
(engineering, not a paper section).

detectron2's train loader draws augmentations from each worker's global RNGs and groups images by aspect
ratio in the order workers happen to deliver them, so where a run stands in its data stream lives only in
process state that a checkpoint does not hold: a resumed run restarts the stream and trains on other images.
Here every image of the stream is named by (seed, rank, batch number, slot): the sampler's index sequence and
the aspect-ratio grouping run on indices in the main process, and each image is mapped after seeding numpy,
``random`` and torch from that name. Batch ``b`` is therefore the same whatever happened before it, and a
resumed run fast-forwards the index stream (cheap: no image is read) to the batch after its checkpoint.
`state_dict` / `load_state_dict` carry the stream's seed and position in every checkpoint.

A mapper that returns None (an unreadable image skipped by `CheckedDatasetMapper`) is replaced by other
images drawn from the same name, so skipping is deterministic too.
"""
import contextlib
import random

import numpy as np
import torch
from detectron2.data import DatasetFromList, get_detection_dataset_dicts
from detectron2.data.samplers import RandomSubsetTrainingSampler, RepeatFactorTrainingSampler, TrainingSampler
from detectron2.utils import comm

from .mapper import CheckedDatasetMapper

__all__ = ["ResumableTrainLoader", "build_checked_train_loader"]


def _item_seed(seed, rank, batch, slot):
    return int(np.random.SeedSequence([seed, rank, batch, slot]).generate_state(1)[0])


@contextlib.contextmanager
def _rngs_seeded(seed):
    """Seed numpy, ``random`` and torch for one image, then put their states back: with no workers the
    mapper runs in the trainer's process, whose RNG streams (RPN / RoI sampling) must not depend on it."""
    saved = np.random.get_state(), random.getstate(), torch.get_rng_state()
    np.random.seed(seed)
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        np.random.set_state(saved[0])
        random.setstate(saved[1])
        torch.set_rng_state(saved[2])


class _SeededMapDataset(torch.utils.data.Dataset):
    """Maps ``dicts[index]`` after seeding every RNG from the item's seed; indices are (index, seed) pairs."""

    def __init__(self, dicts, mapper):
        self.dicts = dicts
        self.mapper = mapper
        # indices the mapper returned None for: only unreadable images, which stay unreadable whatever the seed,
        # so skipping them without a retry changes no result
        self._skipped = set()

    def __len__(self):
        return len(self.dicts)

    def _candidates(self, index, seed):
        """The image itself, then (only if it is skipped) the others in an order drawn from the item's seed."""
        yield index
        yield from np.random.default_rng(seed).permutation(len(self.dicts)).tolist()

    def __getitem__(self, index_and_seed):
        index, seed = index_and_seed
        for i in self._candidates(index, seed):
            if i in self._skipped:
                continue
            with _rngs_seeded(seed):
                data = self.mapper(self.dicts[i])
            if data is not None:
                return data
            self._skipped.add(i)
        raise RuntimeError(f"The dataset mapper returned None for all {len(self.dicts)} images; nothing to train on.")


def _list_batch(batch):
    return batch


class _BatchStream:
    """Infinite (index, seed) batches of one rank, starting at batch number ``start``."""

    def __init__(self, make_sampler, aspect_group, batch_size, seed, start):
        self.make_sampler, self.aspect_group = make_sampler, aspect_group
        self.batch_size, self.seed, self.start = batch_size, seed, start

    def __iter__(self):
        rank = comm.get_rank()
        buckets = {}
        number = 0
        for index in self.make_sampler(self.seed):
            bucket = buckets.setdefault(self.aspect_group[index] if self.aspect_group is not None else 0, [])
            bucket.append(index)
            if len(bucket) < self.batch_size:
                continue
            if number >= self.start:
                yield [(i, _item_seed(self.seed, rank, number, slot)) for slot, i in enumerate(bucket)]
            number += 1
            bucket.clear()


class ResumableTrainLoader:
    """An infinite iterable of training batches (lists of mapped dicts) whose position survives a checkpoint.

    Iterating starts a stream at ``start_batch`` (0, or where `load_state_dict` says); the stream counts the
    batches it has handed out, which is what `state_dict` saves. A trainer checkpointing after iteration ``i``
    has consumed ``i + 1`` batches, so its resume continues with batch ``i + 1``.
    """

    def __init__(self, dataset_dicts, mapper, make_sampler, batch_size, *, seed, aspect_ratio_grouping=True,
                 num_workers=0):
        self.dataset = _SeededMapDataset(DatasetFromList(dataset_dicts, copy=False), mapper)
        self.aspect_group = (
            [int(d["width"] > d["height"]) for d in dataset_dicts] if aspect_ratio_grouping else None
        )
        self.make_sampler, self.batch_size, self.num_workers = make_sampler, batch_size, num_workers
        self.seed = int(seed)
        self.start_batch = 0
        self.batches_consumed = 0

    def state_dict(self):
        return {"seed": self.seed, "batches_consumed": self.batches_consumed}

    def load_state_dict(self, state):
        self.seed = int(state["seed"])
        self.start_batch = self.batches_consumed = int(state["batches_consumed"])

    def __iter__(self):
        # A generator: nothing (no worker, no fast-forward) starts before the first batch is asked for, which
        # is after the trainer has loaded its checkpoint.
        stream = _BatchStream(self.make_sampler, self.aspect_group, self.batch_size, self.seed, self.start_batch)
        loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_sampler=stream,
            num_workers=self.num_workers,
            collate_fn=_list_batch,
            # its own generator: creating the iterator must not draw from the global torch RNG the model uses
            generator=torch.Generator().manual_seed(self.seed),
        )
        self.batches_consumed = self.start_batch
        for batch in loader:
            self.batches_consumed += 1
            yield batch


def _make_sampler_factory(cfg, dataset_dicts):
    """seed -> one of detectron2's training samplers (by DATALOADER.SAMPLER_TRAIN), seeded explicitly."""
    name = cfg.DATALOADER.SAMPLER_TRAIN
    if name == "TrainingSampler":
        return lambda seed: TrainingSampler(len(dataset_dicts), seed=seed)
    if name == "RepeatFactorTrainingSampler":
        factors = RepeatFactorTrainingSampler.repeat_factors_from_category_frequency(
            dataset_dicts, cfg.DATALOADER.REPEAT_THRESHOLD
        )
        return lambda seed: RepeatFactorTrainingSampler(factors, seed=seed)
    if name == "RandomSubsetTrainingSampler":
        ratio = cfg.DATALOADER.RANDOM_SUBSET_RATIO
        return lambda seed: RandomSubsetTrainingSampler(
            len(dataset_dicts), ratio, seed_shuffle=seed, seed_subset=seed
        )
    raise ValueError(
        f"DATALOADER.SAMPLER_TRAIN {name!r} is not supported by the resumable train loader; valid: "
        "'TrainingSampler', 'RepeatFactorTrainingSampler', 'RandomSubsetTrainingSampler'"
    )


def build_checked_train_loader(cfg, mapper=None):
    """The training loader of `train_net.py`: cfg's datasets, sampler, batch size and workers, with
    ``CheckedDatasetMapper(cfg, True)`` by default, as a `ResumableTrainLoader`.

    Its seed is ``cfg.SEED`` when that is >= 0, else one random seed shared by all processes (saved in each
    checkpoint, so a resumed run keeps it).
    """
    dicts = get_detection_dataset_dicts(
        cfg.DATASETS.TRAIN,
        filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
        min_keypoints=cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE if cfg.MODEL.KEYPOINT_ON else 0,
        proposal_files=cfg.DATASETS.PROPOSAL_FILES_TRAIN if cfg.MODEL.LOAD_PROPOSALS else None,
    )
    world = comm.get_world_size()
    total = cfg.SOLVER.IMS_PER_BATCH
    if total <= 0 or total % world:
        raise ValueError(f"SOLVER.IMS_PER_BATCH ({total}) must be a positive multiple of the number of processes ({world})")
    seed = cfg.SEED if cfg.SEED >= 0 else comm.shared_random_seed()
    return ResumableTrainLoader(
        dicts,
        mapper or CheckedDatasetMapper(cfg, is_train=True),
        _make_sampler_factory(cfg, dicts),
        total // world,
        seed=seed,
        aspect_ratio_grouping=cfg.DATALOADER.ASPECT_RATIO_GROUPING,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
    )
