"""The ways in besides the pages: REST API, PACS over DICOMweb, site commands, the speed bench
(the CLI is model/__main__.py)."""
