"""Every closed set of names that a config key or a constructor accepts, defined once.

The config schema (:mod:`bcl.config`) checks its values against these, and the modules that act on
them (the encoders, the heads, the image-folder reader, the training loop) use the same tuples, so a
new option is added in one place. Nothing here imports torch, so loading a config stays light.
"""

# Data (data.*)
DATASETS = ("synthetic", "mvtec", "folder")
SPLITS = ("kfold", "holdout", "generated", "folders")
FOLDER_LAYOUTS = ("auto", "flat", "train_test")  # see bcl.data.folder
# The classifier view: random resized crop; the CIFAR pad-4 crop + flip; that plus AutoAugment; or that
# plus AutoAugment and Cutout.
AUGMENTS = ("crop", "pad_crop", "autoaugment", "cifar")
# Per-channel (mean, std) the images are normalised with, by name (values in [0, 1] units). "cifar10" is
# the pair the CIFAR-LT code of LDAM-DRW and its BCL-lineage successors normalise with.
NORMALIZATIONS = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    # [-1, 1]: what TensorFlow's EfficientNet-Lite ImageNet weights were trained with ((x - 127) / 128).
    "inception": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}

# Models (model.*)
# The ImageNet EfficientNet-Lite0 of an optional pip extra (bcl.models.efficientnet).
EFFICIENTNET_LITE0 = "efficientnet_lite0"
ENCODERS = ("resnet18", "resnet34", "resnet50", "resnet32", EFFICIENTNET_LITE0)
CLASSIFIERS = ("cosine", "linear")
PROTOTYPE_MODES = ("classifier", "learned", "none")

# Losses (loss.*)
CONTRASTIVE_LOSSES = ("bcl", "supcon")
CONTRASTIVE_MODES = ("joint", "contrastive")
CLASSIFIER_LOSSES = ("ce", "weighted_ce", "focal", "logit_adjusted")

# Training (optim.*, sampler.*, eval.*, train.*, run.*)
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("cosine", "constant", "step")
SAMPLERS = ("instance", "class_aware")
SELECTIONS = ("last", "val")
# "auto": bf16 where the device has fast bf16 kernels, float32 elsewhere (bcl.engine.resolve_precision).
AMP_MODES = ("off", "auto", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")
