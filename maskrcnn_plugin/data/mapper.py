"""detectron2's DatasetMapper with image-reading errors that name the file and what to do.

PIL's own messages for a truncated or non-image file ("image file is truncated", "cannot identify image
file <_io.BufferedReader ...>") do not always say which dataset entry is broken.
"""
from detectron2.data import DatasetMapper
from PIL import UnidentifiedImageError


class CheckedDatasetMapper(DatasetMapper):
    def __call__(self, dataset_dict):
        try:
            return super().__call__(dataset_dict)
        except (OSError, UnidentifiedImageError, SyntaxError) as e:
            # SyntaxError is what PIL raises for some corrupt PNG chunks.
            file_name = dataset_dict.get("file_name", "<no file_name>")
            raise OSError(
                f"Could not read image {file_name!r} (image_id={dataset_dict.get('image_id')}): "
                f"{type(e).__name__}: {e}. Replace or remove the file, or drop its entry from the dataset json."
            ) from e
