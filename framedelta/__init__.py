"""framedelta: incremental CNN inference for fixed-camera video."""
from .errors import (ConversionError, FramedeltaError, ModelFormatError,
                     UnsupportedOperatorError)
