"""Input pipelines: CIFAR, ImageNet, image folders, TFDS, digits, synthetic.

See `pipeline` for the iteration contract (deterministic in (seed, step),
exactly resumable from a step, sharded per host) and the dataset names and
options. `DatasetInfo.mean`/`std` are per channel in [0, 1] pixel units.
`device_input` keeps an in-memory dataset on the accelerators and makes the
same batches there, bit for bit.
"""

from ovsw_jax.data.pipeline import create_eval_iterator
from ovsw_jax.data.pipeline import create_train_iterator
from ovsw_jax.data.pipeline import dataset_options
from ovsw_jax.data.pipeline import epoch_permutation
from ovsw_jax.data.pipeline import get_dataset_info
from ovsw_jax.data.pipeline import get_source
from ovsw_jax.data.pipeline import global_batch_indices
from ovsw_jax.data.pipeline import num_eval_batches
from ovsw_jax.data.pipeline import steps_per_epoch
from ovsw_jax.data.source import DataNotFoundError
from ovsw_jax.data.source import DatasetInfo

__all__ = [
    'DataNotFoundError',
    'DatasetInfo',
    'create_eval_iterator',
    'create_train_iterator',
    'dataset_options',
    'epoch_permutation',
    'get_dataset_info',
    'get_source',
    'global_batch_indices',
    'num_eval_batches',
    'steps_per_epoch',
]
