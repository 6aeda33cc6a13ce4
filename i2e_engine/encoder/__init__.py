"""A trained MOFI encoder as the engine reads it, and the parts the trainer shares with it.

- ``config``: what an image or text tower is (dataclasses; no torch). The trainer's
  ``TrainConfig`` embeds them and an export's card stores them.
- ``export_format``: the exported-encoder directory (card, weight files, their names and
  how they are checked, read and written; no torch at import). The trainer writes through
  it, the engine's ``mofi`` scorer reads through it.
- ``towers``: the tower modules (torch), built by the trainer to train and by
  ``exported`` to load an export.
- ``exported``: an export loaded for inference (``load_encoder``).

The engine owns these so that imports point one way: the trainer imports them, the
engine never imports the trainer.
"""
