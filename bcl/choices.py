"""Every closed set of names that a config key or a constructor accepts, defined once.

The config schema (:mod:`bcl.config`) checks its values against these, and the modules that act on
them (the encoders, the heads, the image-folder reader, the training loop) use the same tuples, so a
new option is added in one place. Nothing here imports torch, so loading a config stays light.
"""

# Data (data.*)
DATASETS = ("synthetic", "mvtec", "folder")
SPLITS = ("kfold", "holdout", "generated", "folders")
FOLDER_LAYOUTS = ("auto", "flat", "train_test")  # see bcl.data.folder
AUGMENTS = ("crop", "cifar")  # the classifier view: random resized crop, or the CIFAR recipe

# Models (model.*)
ENCODERS = ("resnet18", "resnet34", "resnet50", "resnet32")
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
AMP_MODES = ("off", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")
