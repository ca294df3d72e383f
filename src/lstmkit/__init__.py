"""lstmkit: the LSTM as the lecture teaches it, as a drop-in for torch.nn.LSTM.

    >>> import lstmkit
    >>> sorted(lstmkit.__all__)
    ['LSTM', 'LSTMCell', 'Variant']
"""

from .cell import LSTMCell
from .lstm import LSTM
from .variant import Variant

__all__ = ["LSTM", "LSTMCell", "Variant"]
__version__ = "0.1.0"
