"""``tdx-image measure``: the boot measurements of an image, predicted offline.

``predict`` reads the image (GPT, ESP, root file system) and returns the ordered events and the
registers they produce: PCR 4, 5, 8, 9, 11, 12, 14 (SHA-384) of the reference VM with a software TPM,
and RTMR1/RTMR2 of a TD booted with TDVF.
"""

from .predict import Prediction, load_registers, predict, predict_inspected, registers_differ

__all__ = ["Prediction", "predict", "predict_inspected", "load_registers", "registers_differ"]
