"""CIFAR-10 itself: its source containers read safely, decoded, sampled; its chance level."""
