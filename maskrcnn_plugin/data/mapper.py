"""detectron2's DatasetMapper with image-reading errors that name the file and what to do, optionally skipping
such images in training (the train loader, `train_loader.py`, then maps another image in their place).

PIL's own messages for a truncated or non-image file ("image file is truncated", "cannot identify image
file <_io.BufferedReader ...>") do not always say which dataset entry is broken.
"""
import logging

from detectron2.config import configurable
from detectron2.data import DatasetMapper
from PIL import UnidentifiedImageError

__all__ = ["CheckedDatasetMapper"]

logger = logging.getLogger(__name__)


class CheckedDatasetMapper(DatasetMapper):
    """DatasetMapper whose image-reading errors name the file.

    With ``skip_unreadable`` (``cfg.DATALOADER.SKIP_UNREADABLE_IMAGES``, training mapper only) an unreadable
    image is logged once as a warning naming the file and the mapper returns None, detectron2's way of saying
    "use another image" (see `maskrcnn_plugin.data.train_loader`).
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
