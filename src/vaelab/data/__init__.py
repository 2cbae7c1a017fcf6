from vaelab.data.datasets import (
    BinarizedMNISTDataModule,
    DigitsDataModule,
    ImageFolderDataModule,
    SyntheticDataModule,
    TorchvisionDataModule,
)
from vaelab.data.dsprites import DSpritesDataModule
from vaelab.data.in_memory import InMemoryDataModule, Split

__all__ = [
    "BinarizedMNISTDataModule",
    "DSpritesDataModule",
    "DigitsDataModule",
    "ImageFolderDataModule",
    "InMemoryDataModule",
    "Split",
    "SyntheticDataModule",
    "TorchvisionDataModule",
]
