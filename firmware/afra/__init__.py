"""AFRA: the firmware of a DICOM store-and-forward adaptor between a PACS and a Medix hub."""

__version__ = "0.1.0"
