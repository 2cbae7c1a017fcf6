from vaelab.data.datasets import (
    BinarizedMNISTDataModule,
    DigitsDataModule,
    ImageFolderDataModule,
    SyntheticDataModule,
    TorchvisionDataModule,
)
from vaelab.data.in_memory import InMemoryDataModule, Split

__all__ = [
    "BinarizedMNISTDataModule",
    "DigitsDataModule",
    "ImageFolderDataModule",
    "InMemoryDataModule",
    "Split",
    "SyntheticDataModule",
    "TorchvisionDataModule",
]
