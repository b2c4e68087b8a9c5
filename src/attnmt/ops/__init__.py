"""Hand-optimised CPU kernels, each computing what a few lines of plain PyTorch compute.

The model and task code call a kernel where :func:`enabled` (the default) and the plain
formulation otherwise; both are written at the call site, so the code reads like the equations
with the fast path as one visible branch. ``tests/test_ops.py`` checks each pair agrees (values
and gradients); ``ATTNMT_PLAIN_OPS=1`` in the environment runs everything the plain way.

==========================  ====================================================  =============================
kernel                      plain formulation                                     called from
==========================  ====================================================  =============================
``dropout``, ``Dropout``    ``F.dropout``, ``nn.Dropout``                         models (inside the kernel)
``additive_scores``         ``v_a(tanh(W_a q + U_a k))``                          ``models.attention``
``smoothed_cross_entropy``  ``F.cross_entropy(..., label_smoothing, "sum")``      ``task``
``bidirectional_rnn``       packed ``nn.GRU``/``nn.LSTM``, bidirectional          ``models.rnn`` encoder
``FusedRNNStep``            ``nn.GRU``/``nn.LSTM`` over one step (``RNNStep``)    ``models.rnn`` decoders
==========================  ====================================================  =============================

What each saves is in docs/performance.md.
"""

from __future__ import annotations

from attnmt.ops.additive import additive_scores
from attnmt.ops.cross_entropy import smoothed_cross_entropy
from attnmt.ops.dropout import Dropout, dropout
from attnmt.ops.recurrent import FusedRNNStep, RNNStep, bidirectional_rnn
from attnmt.ops.switch import enabled

__all__ = [
    "Dropout", "FusedRNNStep", "RNNStep", "additive_scores", "bidirectional_rnn", "dropout", "enabled",
    "smoothed_cross_entropy",
]
