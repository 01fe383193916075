"""DICOM node: receives chest CT, runs the AI chain, sends the results back to the PACS."""

__version__ = "0.1.0"
PRODUCT_NAME = "COVID-CT-Node"
