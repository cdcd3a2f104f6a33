"""What a result becomes for people and other systems: reports, PDF, DICOM SR/SC, downloads, tables and safe text."""
