"""detectron2's DatasetMapper with image-reading errors that name the file and what to do, optionally skipping
such images in training, and a train loader whose skip (retry with another image) works on Python >= 3.11.

PIL's own messages for a truncated or non-image file ("image file is truncated", "cannot identify image
file <_io.BufferedReader ...>") do not always say which dataset entry is broken.
"""
import logging

from detectron2.config import configurable
from detectron2.data import DatasetFromList, DatasetMapper, MapDataset, build_detection_train_loader
from PIL import UnidentifiedImageError

__all__ = ["CheckedDatasetMapper", "build_checked_train_loader"]

logger = logging.getLogger(__name__)


class CheckedDatasetMapper(DatasetMapper):
    """DatasetMapper whose image-reading errors name the file.

    With ``skip_unreadable`` (``cfg.DATALOADER.SKIP_UNREADABLE_IMAGES``, training mapper only) an unreadable
    image is logged once as a warning naming the file and the mapper returns None, detectron2's way of saying
    "use another image" (see `build_checked_train_loader`).
    """

    @configurable
    def __init__(self, is_train: bool, *, skip_unreadable: bool = False, **kwargs):
        super().__init__(is_train, **kwargs)
        self.skip_unreadable = skip_unreadable
        self._warned = set()  # files already reported, so an infinite training sampler does not repeat them

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        ret = super().from_config(cfg, is_train)
        # Never skip at test time: a silently smaller test set would change the reported AP.
        ret["skip_unreadable"] = is_train and cfg.DATALOADER.get("SKIP_UNREADABLE_IMAGES", False)
        return ret

    def __call__(self, dataset_dict):
        try:
            return super().__call__(dataset_dict)
        except (OSError, UnidentifiedImageError, SyntaxError) as e:
            # SyntaxError is what PIL raises for some corrupt PNG chunks.
            file_name = dataset_dict.get("file_name", "<no file_name>")
            what = (
                f"Could not read image {file_name!r} (image_id={dataset_dict.get('image_id')}): "
                f"{type(e).__name__}: {e}."
            )
            if self.skip_unreadable:
                if file_name not in self._warned:
                    self._warned.add(file_name)
                    logger.warning(f"{what} Skipped (DATALOADER.SKIP_UNREADABLE_IMAGES is True).")
                return None
            raise OSError(
                f"{what} Replace or remove the file, drop its entry from the dataset json, or set "
                "DATALOADER.SKIP_UNREADABLE_IMAGES True to skip unreadable images in training."
            ) from e


class _RetryingMapDataset(MapDataset):
    """detectron2's MapDataset (a None from the mapper means: use another random image) with a retry that works.

    detectron2 0.6 and later draw the replacement with ``random.sample(a_set, k=1)``, which Python >= 3.11
    rejects ("TypeError: Population must be a sequence"), so a mapper returning None crashes training there.
    """

    def __getitem__(self, idx):
        cur_idx = int(idx)
        while True:
            data = self._map_func(self._dataset[cur_idx])
            if data is not None:
                self._fallback_candidates.add(cur_idx)
                return data
            self._fallback_candidates.discard(cur_idx)
            if not self._fallback_candidates:
                raise RuntimeError(f"The dataset mapper returned None for all {len(self)} images; nothing to train on.")
            # Failures are rare, so sorting the candidates each time is cheap enough (and deterministic).
            cur_idx = self._rng.choice(sorted(self._fallback_candidates))


def build_checked_train_loader(cfg, mapper=None):
    """detectron2's ``build_detection_train_loader(cfg, mapper)`` with ``CheckedDatasetMapper(cfg, True)`` as the
    default mapper, where an image the mapper skips (returns None for) is replaced by another random one."""
    from detectron2.data.build import _train_loader_from_config

    kwargs = _train_loader_from_config(cfg, mapper or CheckedDatasetMapper(cfg, is_train=True))
    dataset = kwargs["dataset"]
    if isinstance(dataset, list):
        dataset = DatasetFromList(dataset, copy=False)
    kwargs["dataset"] = _RetryingMapDataset(dataset, kwargs.pop("mapper"))
    return build_detection_train_loader(mapper=None, **kwargs)
