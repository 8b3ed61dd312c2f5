"""The quantiser flags' defaults are QuantConfig's: one meaning for every command that quantises."""
from deploy.quantize import QuantConfig
from toolchain.quant_options import DEFAULTS


def test_flag_defaults_are_the_quantisers():
    assert DEFAULTS == {k: getattr(QuantConfig(), k) for k in DEFAULTS}
