"""The deep-learning toolkit on pydl's layers: CNN, bidirectional-LSTM and Transformer
classifiers, one training API (fit / evaluate / predict), data augmentation,
interpretability (saliency, attention maps) and gradient diagnostics.

Layers come from pydl.models.layers: pydl.nn's where they exist, torch.nn's until then.
Optional dependencies (tqdm, matplotlib, scikit-learn: ``pip install 'pydl[toolkit]'``)
are imported only by the functions that need them.
"""

from pydl.models import layers  # noqa: F401
from pydl.models.augment import ImageAugment, PatchAugment, SequenceAugment  # noqa: F401
from pydl.models.bilstm import BiLSTMClassifier  # noqa: F401
from pydl.models.cnn import CNNClassifier  # noqa: F401
from pydl.models.gradients import layer_grad_norms  # noqa: F401
from pydl.models.interpret import attention_maps, saliency  # noqa: F401
from pydl.models.training import History, evaluate, fit, predict  # noqa: F401
from pydl.models.transformer import EncoderBlock, TransformerClassifier  # noqa: F401
