"""Every nn_core module pickles (and deep-copies) with its weights, for joblib and
multiprocessing; working state (pending caches, buffer pools) is not carried over."""
import copy
import pickle

import numpy as np
import pytest

from nn_core import checkpoint
from nn_core.attention import CachedCrossAttention

_SKIP = {"RecurrentCell"}          # an abstract base


def _instances():
    """One small instance of every registered (public) module class."""
    from nn_core.layers import Linear
    from nn_core.recurrent import LSTMCell
    small = {
        "Linear": lambda c: c(4, 3, rng=0), "Embedding": lambda c: c(7, 4, rng=0),
        "LayerNorm": lambda c: c(4), "Dropout": lambda c: c(0.0), "ReLU": lambda c: c(),
        "Tanh": lambda c: c(), "GELU": lambda c: c(), "Sequential": lambda c: c(Linear(4, 4, rng=0)),
        "CrossEntropyLoss": lambda c: c(), "MSELoss": lambda c: c(),
        "ScaledDotProductAttention": lambda c: c(),
        "MultiHeadAttention": lambda c: c(8, 2, rng=0), "MultiQueryAttention": lambda c: c(8, 2, rng=0),
        "GroupedQueryAttention": lambda c: c(8, 2, 1, rng=0),
        "CrossAttention": lambda c: c(8, 2, rng=0), "CachedCrossAttention": lambda c: c(8, 2, rng=0),
        "MultimodalCrossAttention": lambda c: c(8, 2, 5, rng=0),
        "RNNCell": lambda c: c(4, 3, rng=0), "LSTMCell": lambda c: c(4, 3, rng=0),
        "GRUCell": lambda c: c(4, 3, rng=0), "StackedLSTM": lambda c: c(4, 3, 2, rng=0),
        "BidirectionalWrapper": lambda c: c(LSTMCell(4, 3, rng=0)),
        "BidirectionalRNNCell": lambda c: c(4, 3, rng=0), "BidirectionalGRU": lambda c: c(4, 3, rng=0),
        "StackedBidirectional": lambda c: c("gru", 4, 3, 2, rng=0),
        "TransformerEncoderLayer": lambda c: c(8, 2, 12, rng=0),
        "TransformerDecoderLayer": lambda c: c(8, 2, 12, rng=0),
        "Seq2SeqModel": lambda c: c(13, embed_dim=8, hidden_size=8, num_heads=2, rng=0),
        "Forecaster": lambda c: c(3, 8, rng=0), "TransformerLM": lambda c: c(13, d_model=8, num_heads=2, rng=0),
        "TransformerBlock": lambda c: c(8, 2, rng=0), "ModuleList": lambda c: c([Linear(2, 2)]),
        "BertEncoder": lambda c: c(12, 8, 1, 2, 12, max_position_embeddings=9, rng=0),
        "BertPooler": lambda c: c(8, rng=0),
    }
    seen = set()
    for path, cls in sorted(checkpoint.registered_classes().items()):
        if cls in seen or cls.__name__ in _SKIP:
            continue
        seen.add(cls)
        assert cls.__name__ in small, f"add {cls.__name__} to this test"
        yield cls.__name__, small[cls.__name__](cls)


@pytest.mark.parametrize("name, module", list(_instances()), ids=lambda v: v if isinstance(v, str) else "")
def test_pickle_and_deepcopy_keep_weights_and_drop_working_state(name, module):
    for again in (pickle.loads(pickle.dumps(module)), copy.deepcopy(module)):
        assert type(again) is type(module)
        a, b = module.state_dict(), again.state_dict()
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
        assert again._stack == [] and "_owner_thread" not in again.__dict__
        assert again.training == module.training


def test_pickled_module_computes_the_same_and_trains(rng):
    from nn_core.recurrent import LSTMCell
    cell = LSTMCell(3, 4, dtype=np.float64, rng=0)
    x = rng.standard_normal((5, 2, 3))
    out, _ = cell.forward_sequence(x)               # a pending cache and a pool
    clone = pickle.loads(pickle.dumps(cell))
    assert len(clone._work) == 0 and clone._steps == []
    out2, _ = clone.forward_sequence(x)
    np.testing.assert_array_equal(out2, out)
    clone.backward_sequence(np.ones_like(out2))
    cell.backward_sequence(np.ones_like(out))
    for k in cell.grads:
        np.testing.assert_array_equal(clone.grads[k], cell.grads[k])


def test_cached_cross_attention_keeps_its_context():
    m = CachedCrossAttention(8, 2, rng=0)
    m.set_context(np.ones((1, 3, 8), np.float32))
    clone = pickle.loads(pickle.dumps(m))
    np.testing.assert_array_equal(clone(np.ones((1, 1, 8), np.float32)),
                                  m(np.ones((1, 1, 8), np.float32)))
