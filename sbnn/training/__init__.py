"""Training without Lightning: objectives, optimisers, schedules, methods, metrics and a loop.

Nothing here imports Lightning or a command-line library; :mod:`sbnn.tasks` wraps these pieces
in LightningModules.

===================== =====================================================================
module                contents
===================== =====================================================================
``losses``            the ELBO (:class:`ELBOLoss`, :func:`kl_divergence`) and the auxiliary
                      bias-reducing loss (:class:`BiasProxyLoss`)
``snr``               the signal-to-noise auxiliary loss (:class:`SNRLoss`)
``optim``             the :class:`BayesBiNN` and :class:`Bop` optimisers
``schedules``         :class:`TwoPhaseCosine`, :func:`cosine`
``methods``           training methods (:class:`SBNNMethod`, :class:`BayesBiNNMethod`, ...)
``metrics``           accuracy, NLL, entropy, ECE; :class:`ClassificationSums` for exact
                      reduction across batches and ranks
``evaluation``        seeded ``mode``/MC/LRT class probabilities
``divergence``        non-finite checks and collapse/silence warnings
``loop``              :func:`fit`, :func:`predict`
===================== =====================================================================
"""

from .divergence import TrainingDivergedError, check_inputs, check_loss, check_parameters, collapse_warnings, silence_warning
from .evaluation import PREDICTION_KINDS, cast_input, predict_probabilities
from .loop import fit, predict
from .losses import BiasProxyLoss, ELBOLoss, ELBOTerms, bias_proxy_terms, kl_divergence
from .methods import (
    METHODS,
    BayesBiNNMethod,
    BopMethod,
    FullPrecisionMethod,
    QuantizerMethod,
    SBNNMethod,
    STEMethod,
    TrainingMethod,
    make_method,
    predict_samples,
    weights_from,
)
from .metrics import (
    CalibrationAccumulator,
    ClassificationSums,
    accuracy,
    expected_calibration_error,
    negative_log_likelihood,
    predictive_entropy,
)
from .optim import BayesBiNN, Bop, bernoulli_layers, noise_scale_parameters
from .schedules import TwoPhaseCosine, cosine
from .snr import SNR_REDUCTIONS, SNRLoss, snr_ratio

__all__ = [
    "TrainingDivergedError", "check_inputs", "check_loss", "check_parameters", "collapse_warnings", "silence_warning",
    "PREDICTION_KINDS", "cast_input", "predict_probabilities",
    "fit", "predict",
    "BiasProxyLoss", "ELBOLoss", "ELBOTerms", "bias_proxy_terms", "kl_divergence",
    "METHODS", "BayesBiNNMethod", "BopMethod", "FullPrecisionMethod", "QuantizerMethod", "SBNNMethod", "STEMethod",
    "TrainingMethod", "make_method", "predict_samples", "weights_from",
    "CalibrationAccumulator", "ClassificationSums", "accuracy", "expected_calibration_error",
    "negative_log_likelihood", "predictive_entropy",
    "BayesBiNN", "Bop", "bernoulli_layers", "noise_scale_parameters",
    "TwoPhaseCosine", "cosine",
    "SNR_REDUCTIONS", "SNRLoss", "snr_ratio",
]
