"""The exceptions for bad user input: the CLI prints the message and exits with status 2."""

from __future__ import annotations


class VitquantError(Exception):
    """A problem the user can fix; the message names the problem and the fix."""


class HeadMismatchError(VitquantError):
    """A checkpoint whose classifier has another number of classes than the model built for it.

    Attributes:
        source: the checkpoint file.
        key: the classifier weight, e.g. ``head.weight``.
        shape: its shape in the checkpoint, e.g. ``(1000, 192)``.
        checkpoint_classes: the classes the checkpoint predicts (``shape[0]``).
        model_classes: the classes of the model being loaded.
        fix: what to do, for the message.
    """

    def __init__(
        self,
        *,
        source: str,
        key: str,
        shape: tuple[int, ...],
        model_classes: int,
        fix: str,
        needs: str = "",
    ) -> None:
        self.source, self.key, self.shape = source, key, tuple(shape)
        self.checkpoint_classes, self.model_classes, self.fix = shape[0], model_classes, fix
        needs = needs or f"the model is built for {model_classes} classes"
        super().__init__(
            f"checkpoint {source} has a {self.checkpoint_classes}-class head ({key} "
            f"{'x'.join(map(str, shape))}) but {needs}; {fix}"
        )

    def for_data(self, data_classes: int) -> HeadMismatchError:
        """The same error worded for a command whose data has ``data_classes`` classes."""
        if data_classes != self.model_classes:
            return self  # the data check that follows would refuse it anyway
        return HeadMismatchError(
            source=self.source,
            key=self.key,
            shape=self.shape,
            model_classes=self.model_classes,
            fix=self.fix,
            needs=f"the data has {data_classes} classes",
        )
