class MechunlearnError(Exception):
    """An error caused by the user's input or environment; the CLI prints it without a traceback."""


class ModelLoadError(MechunlearnError):
    pass


class UnsupportedArchitectureError(MechunlearnError):
    pass


class FactDataError(MechunlearnError):
    pass


class TrainingDivergedError(MechunlearnError):
    pass
