"""The AI chain of Jin et al. (Nat Commun 2020) as pure stages over typed dataclasses.

Never imports pydicom, pynetdicom or dicomnode (tests/test_pipeline_imports.py checks it).
"""
