"""The `tfds.core.DatasetInfo` of our image-classification TFDS builders, written once.

Every builder of ours (digits, tiny_imagenet, the synthetic test datasets) stores examples
`{'image': uint8 [H, W, C], 'label': int}` with supervised keys ('image', 'label'); its `_info`
returns `image_classification_info(self, ...)`.
"""

from typing import Mapping, Optional, Sequence

import tensorflow_datasets as tfds


def image_classification_info(builder, *, description: str, image_shape: Sequence[int],
                              num_classes: int, encoding_format: str = 'png',
                              homepage: Optional[str] = None,
                              extra_features: Optional[Mapping[str, object]] = None
                              ) -> tfds.core.DatasetInfo:
  """DatasetInfo with features image [H, W, C] (stored as `encoding_format`), label, extras.

  Args:
    builder: the `tfds.core.GeneratorBasedBuilder` (its `_info` passes `self`).
    description: the dataset's description (usually the module docstring).
    image_shape: (H, W, C) of the stored images.
    num_classes: the number of labels.
    encoding_format: 'png' or 'jpeg', how images are stored.
    homepage: where the data comes from.
    extra_features: further features by name (e.g. {'file_name': tfds.features.Text()}).
  """
  features = {'image': tfds.features.Image(shape=tuple(image_shape),
                                           encoding_format=encoding_format),
              'label': tfds.features.ClassLabel(num_classes=num_classes),
              **(extra_features or {})}
  return tfds.core.DatasetInfo(builder=builder, description=description,
                               features=tfds.features.FeaturesDict(features),
                               supervised_keys=('image', 'label'), homepage=homepage)
