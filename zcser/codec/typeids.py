"""Numeric pyfory type ids of zcser's serializers; writer and reader must agree on them.

Reserved ranges (each adapter adds lines only inside its own range):
  200-239  numpy, raw buffers, Python built-ins (`_numpy.py`, `_buffers.py`, `_pytypes.py`)
  240-269  Arrow (`_arrow.py`)
  270-279  torch (`_torch.py`)
  280-289  pandas (`_pandas.py`)
  1000+    user classes registered with an explicit numeric id
Built-in types whose pyfory serializer zcser replaces (ndarray, bytes, PickleBuffer) keep
pyfory's own ids and need none here.
"""

from __future__ import annotations

# numpy / buffers: 200-239
BYTEARRAY = 201
MEMORYVIEW = 202
NP_MATRIX = 204
NP_MASKED_ARRAY = 205
COMPLEX = 206
FROZENSET = 207
ORDERED_DICT = 208
TIME = 209  # datetime.time (datetime.datetime keeps pyfory's id, its serializer is zcser's)
NP_SCALAR_FIRST = 210  # 210-232: one id per numpy scalar char, see `_numpy.SCALAR_CHARS`
NP_SCALAR_LAST = 239

# Arrow: 240-269
ARROW_ARRAY = 240  # every pa.Array subclass shares this id; the Arrow type travels in band
ARROW_CHUNKED_ARRAY = 241
ARROW_RECORD_BATCH = 242
ARROW_TABLE = 243
ARROW_TENSOR = 244
ARROW_SCHEMA = 245
ARROW_DATA_TYPE = 246  # every pa.DataType subclass shares this id
ARROW_FIELD = 247

# torch: 270-279
TORCH_TENSOR = 270  # torch.Tensor and torch.nn.Parameter
TORCH_SIZE = 271
TORCH_DTYPE = 272
TORCH_DEVICE = 273

# pandas: 280-289
PANDAS_DATAFRAME = 280
PANDAS_SERIES = 281
PANDAS_INDEX = 282  # every pd.Index subclass shares this id

USER_FIRST = 1000
