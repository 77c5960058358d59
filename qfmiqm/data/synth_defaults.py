"""Defaults of ``qfmiqm synth`` (qfmiqm.data.synth), in a module the command line can import
without loading the generator and its image libraries."""

DEFAULT_LEVELS = 5
DEFAULT_SEED = 0
DEFAULT_FORMAT = "png"
DEFAULT_CROPS = 1
#: the output formats of the distorted images (qfmiqm.data.synth.FORMATS describes each)
FORMAT_NAMES = ("png", "jpeg")
