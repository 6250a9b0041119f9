"""Imports every kernel family module so that each registers its kernels (one line per family)."""
from . import _floats, _legacy, _iq4, _mxfp4, _dequant_gguf  # noqa: F401,E401  (f32 f16 bf16 q8_0 q4_0 q4_1 q5_0 q5_1 q6_0 iq4_nl iq4_xs mxfp4; dequant of iq1-iq3 grids, tq1_0 tq2_0 nvfp4)
from . import _iqk_k  # noqa: F401,E402  ik iq4_k, iq5_k, iq6_k
from . import _kquants  # noqa: F401  k-quants q2_K..q6_K
from . import _iqk_ks  # noqa: F401,E402  ik iq4_ks, iq5_ks, iq3_ks
from . import _iqk_low  # noqa: F401,E402  ik iq3_k, iq2_k
from . import _iqk_kss  # noqa: F401,E402  ik iq4_kss
from . import _iqk_kl  # noqa: F401,E402  ik iq2_kl
