"""INFORMER (Shu et al.): flag likely-wrong predictions from class-specific saliency maps.

For every image, one saliency map per output logit ("class": a CheXpert finding, a prognosis head, an ordinal
GCS threshold) comes from one batched attribution pass (:mod:`medmlops.interpret.saliency`); the class
distinctiveness ``d_c = sum_{j != c} (1 - cos(S_c, S_j))`` (:mod:`medmlops.informer.scores`) is compared with a
per-class threshold fitted on the validation split by the paper's grid search, and a flag swaps that class's
binary prediction. Baselines (maximum softmax/sigmoid response, predictive entropy, test-time augmentation) get
the same search.

Modules:
    outputs    logits, class saliency, distinctiveness, baselines' scores, embedding and image statistics of a
               batch (shared by calibrate, evaluate and the analyser)
    scores     distinctiveness, uncertainty scores, threshold search, FD-Shifts metrics (AURC, AUGRC)
    analyser   :class:`Analyser`: a registered model version + its calibration → per-image INFORMER results
    calibrate  fit and store the calibration of a registered model version (``medmlops informer calibrate``)
    evaluate   the paper's protocol (F1 before/after flag-and-swap, 30 bootstraps, paired t-test, box plot) and
               FD-Shifts' (``medmlops informer evaluate``)
"""
