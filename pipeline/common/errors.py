"""The exceptions a user can cause, and how stages report them."""


class PipelineError(Exception):
    """A problem the user can fix: the message names what is wrong and how to fix it."""


class TrainingDiverged(PipelineError):
    """The loss became NaN or infinite: a result of the learning rate, not a crash.

    Its own type so that the tuner prunes exactly this, and every other PipelineError of
    training (a GPU op without a deterministic kernel, thread settings) reaches the user.
    """
