"""Training one variant with Keras.

inputs, model, optimizers, augment, callbacks, fit; runtime (device, seeds, threads), devices
(one GPU per process), bn_statistics (whether BatchNormalization's statistics settled).
"""
