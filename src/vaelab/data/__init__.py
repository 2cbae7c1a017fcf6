from vaelab.data.datasets import (
    BinarizedMNISTDataModule,
    DigitsDataModule,
    ImageFolderDataModule,
    SyntheticDataModule,
    TorchvisionDataModule,
)
from vaelab.data.dsprites import DSpritesDataModule
from vaelab.data.in_memory import InMemoryDataModule, Split
from vaelab.data.tensors import TensorsDataModule

__all__ = [
    "BinarizedMNISTDataModule",
    "DSpritesDataModule",
    "DigitsDataModule",
    "ImageFolderDataModule",
    "InMemoryDataModule",
    "Split",
    "SyntheticDataModule",
    "TensorsDataModule",
    "TorchvisionDataModule",
]
